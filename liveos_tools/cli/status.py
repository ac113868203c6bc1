"""`liveos-overlay status`."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from liveos_tools.tasks.status import StatusReport


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "status",
        help="how full the overlay is, and whether it is healthy",
        description="Show overlay, home.img and stick usage. TARGET is a stick's mount point, "
        "a block device, a disk image, an overlay file, or nothing for the running live system.",
    )
    p.add_argument("target", nargs="?", metavar="TARGET")
    p.add_argument("--json", action="store_true", help="print only JSON on stdout")
    p.add_argument("--watch", type=float, metavar="SECONDS", help="repeat every SECONDS")
    p.add_argument("--full", action="store_true", help="check every exception (slower)")
    p.add_argument("--livedir", metavar="DIR", help="LiveOS directory name (rd.live.dir)")
    p.set_defaults(handler="liveos_tools.cli.status:run")


def _emit(report: StatusReport, as_json: bool, watching: bool) -> None:
    import sys

    from liveos_tools.tasks.status import render_text, to_json

    if as_json:
        import json

        print(json.dumps(to_json(report), indent=None if watching else 2), flush=True)
        return
    if watching and sys.stdout.isatty():
        print("\033[H\033[2J", end="")
    # A damaged overlay is said once: as the error line on stderr, not again as a warning.
    print(render_text(report, damage_as_error=True), flush=True)
    if report.overlay.problem:
        print(f"error: the overlay is damaged: {report.overlay.problem}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    import time

    from liveos_tools.errors import ExitCode
    from liveos_tools.media import open_medium
    from liveos_tools.tasks.status import build_status

    with open_medium(args.target, livedir=args.livedir) as medium:
        code = ExitCode.OK
        while True:
            report = build_status(medium, full=args.full)
            _emit(report, args.json, args.watch is not None)
            code = report.exit_code
            if args.watch is None:
                return int(code)
            try:
                time.sleep(max(0.2, args.watch))
            except KeyboardInterrupt:
                return int(code)
