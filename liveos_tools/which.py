"""Find programs on PATH without importing subprocess or shutil (start-up time matters)."""

from __future__ import annotations

import os

# A user's PATH in a rescue shell or under sudo may lack the sbin dirs.
_EXTRA = ("/usr/sbin", "/sbin")


def which(tool: str) -> str | None:
    dirs = os.environ.get("PATH", "").split(os.pathsep)
    for d in [*dirs, *(e for e in _EXTRA if e not in dirs)]:
        candidate = os.path.join(d or ".", tool)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None
