"""The crash-point hook is armed only inside the process under test, never from the
environment: a shipped command never kills itself because of a variable."""

from __future__ import annotations

import subprocess
import sys

import pytest

from liveos_tools.tasks import backup
from tests.support import killable


def test_the_library_ignores_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(killable.ENV, "unit-point")
    monkeypatch.setattr(backup, "KILL_AT", None)
    backup.kill_point("unit-point")  # would SIGKILL pytest itself if the variable counted
    assert backup.KILL_AT is None


def test_the_test_entry_arms_it() -> None:
    code = (
        "import os, sys\n"
        "from tests.support import killable\n"
        "killable.arm(os.environ.get(killable.ENV))\n"
        "from liveos_tools.tasks import backup\n"
        "backup.kill_point('other')\n"
        "print('alive', flush=True)\n"
        "backup.kill_point('unit-point')\n"
        "print('not reached')\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        env=killable.child_env({killable.ENV: "unit-point"}),
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == -9
    assert res.stdout == "alive\n"


def test_a_plain_run_is_not_armed() -> None:
    assert killable.argv_prefix(None)[-1] == "liveos_tools.cli.main"
    assert killable.argv_prefix({killable.ENV: "x"})[-1] == "tests.support.killable"
