"""sudo, and polkit's pkexec: run a liveos-overlay command line as root.

One module for both: they are two doors to the same thing, chosen by whether a
graphical session can show polkit's password dialog.
"""

from __future__ import annotations

from collections.abc import Sequence

from liveos_tools.run import Result, run, which

DOORS = ("pkexec", "sudo")


def choose(*, graphical: bool) -> str | None:
    """pkexec where it can ask in a window, else sudo (asks on the terminal), else None."""
    if graphical and which("pkexec"):
        return "pkexec"
    if which("sudo"):
        return "sudo"
    return None


def argv_as_root(door: str, argv: Sequence[str]) -> list[str]:
    if door not in DOORS:
        raise ValueError(f"not a way to become root: {door}")
    return [door, *argv]


def run_as_root(door: str, argv: Sequence[str], *, input: bytes = b"") -> Result:
    """Run argv as root through `door`; `input` goes to its stdin (never on argv)."""
    return run(argv_as_root(door, argv), input=input)
