"""`liveos-overlay`: argument parsing and output only; the work is in liveos_tools.tasks.

Errors print as `error: ...` and `hint: ...` on stderr and map to the exit codes of
liveos_tools.errors.ExitCode (a traceback only with --debug).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from liveos_tools import __version__
from liveos_tools.errors import ExitCode, LiveOSError

Handler = Callable[[argparse.Namespace], int]


def _status_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="liveos-overlay",
        description="Status, repair and maintenance of LiveOS sticks with persistent overlays.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show commands run and tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _status_parser(sub)
    return parser


def _load(spec: str) -> Handler:
    # Subcommand modules are imported only when chosen, to keep start-up fast.
    import importlib

    module, _, func = spec.partition(":")
    handler: Handler = getattr(importlib.import_module(module), func)
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return ExitCode.USAGE
    if args.debug:
        from liveos_tools import run

        run.set_debug(True)
    try:
        return _load(args.handler)(args)
    except LiveOSError as err:
        if args.debug:
            import traceback

            traceback.print_exc()
        print(f"error: {err.message}", file=sys.stderr)
        if err.hint:
            print(f"hint: {err.hint}", file=sys.stderr)
        return int(err.code)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return ExitCode.ABORTED
    except BrokenPipeError:
        return ExitCode.OK
    except Exception as exc:  # the one place a bug becomes a clean exit
        if args.debug:
            raise
        print(f"error: internal error: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        print("hint: run again with --debug and report the traceback", file=sys.stderr)
        return ExitCode.INTERNAL


if __name__ == "__main__":
    sys.exit(main())
