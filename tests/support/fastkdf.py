"""Fast LUKS key derivation for tests, without a switch in the library.

tests/support/fast-kdf/cryptsetup runs the real cryptsetup and adds
`--pbkdf pbkdf2 --pbkdf-force-iterations 1000` to luksFormat. Put on PATH, it is
found by liveos_tools.run like any cryptsetup.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

WRAPPER_DIR = Path(__file__).resolve().parent / "fast-kdf"


def use_fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{WRAPPER_DIR}:{os.environ.get('PATH', '/usr/sbin:/usr/bin')}")
