"""`liveos-overlay` with a crash point armed, for the crash-safety tests.

    LIVEOS_TEST_KILL_AT=<point> python -m tests.support.killable ARGS...

runs `liveos-overlay ARGS...` with `liveos_tools.tasks.backup.KILL_AT` set, so the
command kills itself at that point of its write order (`<point>:INT` for Ctrl-C). The
variable is read here, in the tests, and never by the shipped library.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ENV = "LIVEOS_TEST_KILL_AT"
#: The repository root, for PYTHONPATH: `-m tests.support.killable` from any directory.
REPO = Path(__file__).resolve().parents[2]


def arm(point: str | None) -> None:
    from liveos_tools.tasks import backup

    backup.KILL_AT = point or None


def argv_prefix(env: dict[str, str] | None) -> list[str]:
    """How to start liveos-overlay as a process: armed when `env` names a point."""
    module = __name__ if env and env.get(ENV) else "liveos_tools.cli.main"
    return [sys.executable, "-m", module]


def child_env(env: dict[str, str] | None) -> dict[str, str]:
    """This process's environment plus `env`, with the repository importable."""
    merged = {**os.environ, **(env or {})}
    path = merged.get("PYTHONPATH")
    merged["PYTHONPATH"] = f"{REPO}{os.pathsep}{path}" if path else str(REPO)
    return merged


def main() -> int:
    from liveos_tools.cli.main import main as liveos_overlay

    arm(os.environ.get(ENV))
    return liveos_overlay(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
