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


#: Each module has `register(subparsers)`, which adds its parser(s) and sets
#: `handler="module:function"`. Keep their top-level imports to argparse only:
#: every one of them is imported on every start.
COMMAND_MODULES = [
    "liveos_tools.cli.status",
    "liveos_tools.cli.maintain",
    "liveos_tools.cli.home",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="liveos-overlay",
        description="Status, repair and maintenance of LiveOS sticks with persistent overlays.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show commands run and tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
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
