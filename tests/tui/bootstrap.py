"""Make `liveos_tools_tui` importable from the tui/ folder when it is not installed.

Once pyproject.toml maps tui/ to liveos_tools_tui, the installed package is used and
this does nothing. Otherwise a temporary directory holding a symlink named
liveos_tools_tui -> tui/ goes on sys.path, and `pythonpath()` gives the same to
subprocesses (the real-terminal test).
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TUI_DIR = REPO / "tui"
_extra: str | None = None


def ensure_importable() -> str | None:
    """Returns the directory added to sys.path, or None if the package is installed."""
    global _extra
    if _extra is not None:
        return _extra
    if importlib.util.find_spec("liveos_tools_tui") is not None:
        return None
    tmp = tempfile.mkdtemp(prefix="liveos-tui-path-")
    atexit.register(shutil.rmtree, tmp, True)
    os.symlink(TUI_DIR, os.path.join(tmp, "liveos_tools_tui"))
    sys.path.insert(0, tmp)
    _extra = tmp
    return tmp


def pythonpath() -> str:
    """A PYTHONPATH under which a subprocess imports liveos_tools_tui and liveos_tools."""
    parts = [str(REPO)]
    extra = ensure_importable()
    if extra:
        parts.insert(0, extra)
    if os.environ.get("PYTHONPATH"):
        parts.append(os.environ["PYTHONPATH"])
    return os.pathsep.join(parts)
