"""Find programs on PATH without importing subprocess or shutil (start-up time matters).

PATH alone decides, so that a test (or a user) can hide a tool; sudo and root shells
have the sbin directories on PATH already.
"""

from __future__ import annotations

import os


def which(tool: str) -> str | None:
    for d in os.environ.get("PATH", "").split(os.pathsep):
        candidate = os.path.join(d or ".", tool)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None
