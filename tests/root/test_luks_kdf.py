"""No environment variable weakens LUKS: the library formats with cryptsetup's own key
derivation whatever the environment says; tests get a fast one only through
tests/support/fast-kdf/cryptsetup on PATH, which runs the real cryptsetup."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from liveos_tools.tools import cryptsetup
from tests.support.fastkdf import use_fast_kdf
from tests.support.shell import MiB

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(shutil.which("cryptsetup") is None, reason="needs cryptsetup"),
]

OLD_SWITCH = "LIVEOS_TEST_FAST_KDF"


def test_the_old_test_switch_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Recording what the library asks of cryptsetup is enough here: the real argon2id
    # format it would run takes seconds and up to 1 GiB of memory.
    record = tmp_path / "argv.json"
    fake = tmp_path / "bin" / "cryptsetup"
    fake.parent.mkdir()
    fake.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"open({str(record)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:/usr/sbin:/usr/bin:/sbin:/bin")
    monkeypatch.setenv(OLD_SWITCH, "1")
    cryptsetup.format_luks(tmp_path / "home.img", b"secret")
    argv = json.loads(record.read_text())
    assert argv[0] == "luksFormat" and argv[-1] == str(tmp_path / "home.img")
    assert not [a for a in argv if a.startswith("--pbkdf")], argv


def test_nothing_in_the_shipped_code_can_choose_the_kdf() -> None:
    root = Path(__file__).resolve().parents[2]
    offenders = [
        str(p.relative_to(root))
        for folder in ("liveos_tools", "tui")
        for p in sorted((root / folder).rglob("*.py"))
        if "--pbkdf" in p.read_text() or "FAST_KDF" in p.read_text()
    ]
    assert offenders == []


def test_the_tests_wrapper_runs_the_real_cryptsetup_with_a_fast_kdf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_fast_kdf(monkeypatch)
    img = tmp_path / "home.img"
    with img.open("wb") as f:
        f.truncate(32 * MiB)
    cryptsetup.format_luks(img, b"secret")
    dump = subprocess.run(
        ["cryptsetup", "luksDump", str(img)], check=True, capture_output=True, text=True
    ).stdout
    assert "PBKDF:      pbkdf2" in dump and "Iterations: 1000" in dump
    assert cryptsetup.dump(img).version == 2
    cryptsetup.test_passphrase(img, b"secret")
    with pytest.raises(cryptsetup.PassphraseError):
        cryptsetup.test_passphrase(img, b"wrong")
