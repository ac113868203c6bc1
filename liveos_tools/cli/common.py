"""What every writing command shares: --dry-run, --yes, and asking before destroying."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from liveos_tools.errors import AbortedError

if TYPE_CHECKING:
    from liveos_tools.plan import Plan, Progress


def add_write_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask before changing things")


def show_plan(plan: Plan) -> None:
    # The plan goes to stderr: stdout stays for data (--json).
    print(plan.render(), file=sys.stderr)


def confirm(plan: Plan, *, yes: bool, question: str = "Go ahead?") -> None:
    """Ask on the terminal before running `plan`; raise AbortedError on no."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise AbortedError(
            f"{plan.title} needs confirmation, and there is no terminal to ask on",
            "add --yes to go ahead, or --dry-run to see the plan",
        )
    print(file=sys.stderr)
    for item in plan.destroys:
        print(f"This destroys: {item}", file=sys.stderr)
    answer = input(f"{question} [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise AbortedError("nothing was changed", None)


def progress_printer(quiet: bool = False) -> Progress:
    def report(i: int, n: int, summary: str) -> None:
        if not quiet and i < n:
            print(f"[{i + 1}/{n}] {summary}", file=sys.stderr, flush=True)

    return report
