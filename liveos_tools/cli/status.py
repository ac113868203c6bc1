"""`liveos-overlay status`."""

from __future__ import annotations

import argparse
import json
import sys
import time

from liveos_tools.errors import ExitCode
from liveos_tools.media import open_medium
from liveos_tools.tasks.status import StatusReport, build_status, render_text, to_json


def _emit(report: StatusReport, as_json: bool, watching: bool) -> None:
    if as_json:
        print(json.dumps(to_json(report), indent=None if watching else 2), flush=True)
        return
    if watching and sys.stdout.isatty():
        print("\033[H\033[2J", end="")
    print(render_text(report), flush=True)
    if report.overlay.problem:
        print(f"error: the overlay is damaged: {report.overlay.problem}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
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
