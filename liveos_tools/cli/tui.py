"""`liveos-overlay tui`: start the Textual app (imported only when chosen)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "tui",
        help="full-screen view of every stick's space, with actions (same as liveos-tui)",
        description="Show every LiveOS stick plugged in, the running live system, and the "
        "TARGETs given (images, devices, mount points, overlay files).",
    )
    p.add_argument("targets", nargs="*", metavar="TARGET")
    p.add_argument("--refresh", type=float, default=5.0, metavar="SECONDS")
    p.add_argument("--no-scan", action="store_true", help="show only the TARGETs given")
    p.set_defaults(handler="liveos_tools.cli.tui:run")


def run(args: argparse.Namespace) -> int:
    import importlib

    from liveos_tools.errors import LiveOSError

    # importlib, not an import statement: the library must not depend on the TUI package.
    try:
        app = importlib.import_module("liveos_tools_tui.app")
    except ImportError as exc:
        raise LiveOSError(
            f"the TUI is not installed ({exc})",
            "install it with: pip install 'liveos-tools[tui]'",
        ) from None
    argv = [*args.targets, "--refresh", str(args.refresh)]
    if args.no_scan:
        argv.append("--no-scan")
    code: int = app.main(argv)
    return code
