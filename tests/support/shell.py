"""Helpers every test tier repeats: run a program, run the CLI, MiB.

`sh()` runs a program the test drives itself (making images, checking with real
tools), never through liveos_tools.run: the library is what is under test.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from liveos_tools.units import MiB as MiB

__all__ = ["MiB", "cli", "cli_process", "sh"]


def sh(*argv: str | Path, input: bytes | str | None = None) -> str:
    """Run argv; fail the test if it fails; return its stdout as text."""
    data = input.encode() if isinstance(input, str) else input
    out = subprocess.run([str(a) for a in argv], check=True, capture_output=True, input=data)
    return out.stdout.decode()


def cli(*args: str | Path) -> int:
    """liveos-overlay in this process (so a test can monkeypatch); its exit code."""
    from liveos_tools.cli.main import main

    return main([str(a) for a in args])


def cli_process(
    *args: str | Path, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """liveos-overlay as its own process, as a user runs it: no stdin, `env` added to
    this environment."""
    from tests.support import killable

    return subprocess.run(
        [*killable.argv_prefix(env), *map(str, args)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env=killable.child_env(env),
        timeout=timeout,
        check=False,
    )
