"""`liveos-overlay`: argument parsing and output only; the work is in liveos_tools.tasks.

Errors print as `error: ...` and `hint: ...` on stderr and map to the exit codes of
liveos_tools.errors.ExitCode (a traceback only with --debug).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from liveos_tools import __version__
from liveos_tools.errors import ExitCode, LiveOSError

Handler = Callable[[argparse.Namespace], int]


#: Each module has `register(subparsers)`, which adds its parser(s) and sets
#: `handler="module:function"`. Keep their top-level imports to argparse only.
COMMAND_MODULES = [
    "liveos_tools.cli.status",
    "liveos_tools.cli.maintain",
    "liveos_tools.cli.monitor",
    "liveos_tools.cli.tui",
    "liveos_tools.cli.home",
    "liveos_tools.cli.space",
    "liveos_tools.cli.refresh",
    "liveos_tools.cli.remix",
]

#: Which module registers each command: when the command is known, only its module is
#: imported and registered (a rescue shell's `liveos-overlay status` starts faster).
#: tests/unit/test_cli_registry.py checks this against what the modules register.
COMMAND_NAMES = {
    "status": "liveos_tools.cli.status",
    "repair": "liveos_tools.cli.maintain",
    "grow": "liveos_tools.cli.maintain",
    "reset": "liveos_tools.cli.maintain",
    "monitor": "liveos_tools.cli.monitor",
    "tui": "liveos_tools.cli.tui",
    "home": "liveos_tools.cli.home",
    "swap": "liveos_tools.cli.home",
    "remix": "liveos_tools.cli.remix",
    "du": "liveos_tools.cli.space",
    "compact": "liveos_tools.cli.space",
    "economize": "liveos_tools.cli.space",
    "refresh": "liveos_tools.cli.refresh",
    "rollback": "liveos_tools.cli.refresh",
    "update": "liveos_tools.cli.refresh",
}


class _Formatter(argparse.HelpFormatter):
    # argparse imports shutil (and with it bz2, lzma, fnmatch) in every formatter it
    # makes, one per add_argument, just to learn the terminal width. Tell it instead.
    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        if width is None:
            try:
                width = int(os.environ.get("COLUMNS") or os.get_terminal_size(2).columns) - 2
            except (OSError, ValueError):
                width = 78
        super().__init__(prog, indent_increment, max_help_position, width)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)


def _chosen_command(argv: Sequence[str]) -> str | None:
    for word in argv:
        if word == "--":
            return None
        if not word.startswith("-"):
            return word if word in COMMAND_NAMES else None
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given argv naming a known command, only that command's module loads."""
    import importlib

    parser = _Parser(
        prog="liveos-overlay",
        description="Status, repair and maintenance of LiveOS sticks with persistent overlays.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show commands run and tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = _chosen_command(argv) if argv is not None else None
    modules = [COMMAND_NAMES[chosen]] if chosen else COMMAND_MODULES
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def _load(spec: str) -> Handler:
    # Subcommand modules are imported only when chosen, to keep start-up fast.
    import importlib

    module, _, func = spec.partition(":")
    handler: Handler = getattr(importlib.import_module(module), func)
    return handler


#: Options whose value may be a negative size (`--by -512M` shrinks).
_SIZE_OPTIONS = ("--by",)


def _join_negative_sizes(words: list[str]) -> list[str]:
    # argparse takes "-512M" for an option and refuses `--by -512M`; `--by=-512M` works.
    out: list[str] = []
    for word in words:
        if out and out[-1] in _SIZE_OPTIONS and word.startswith("-") and word[1:2].isdigit():
            out[-1] = f"{out[-1]}={word}"
        else:
            out.append(word)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    words = _join_negative_sizes(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser(words)
    args = parser.parse_args(words)
    if args.command is None:
        parser.print_help(sys.stderr)
        return ExitCode.USAGE
    if args.debug:
        from liveos_tools import run

        run.set_debug(True)
    return run_reported(lambda: _load(args.handler)(args), debug=args.debug)


def run_reported(work: Callable[[], int], *, debug: bool) -> int:
    """Run a command; turn every failure into `error:`/`hint:` lines and an exit code.

    The one place where exceptions become exit codes, for every console script.
    """
    try:
        return work()
    except LiveOSError as err:
        if debug:
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
    except Exception as exc:  # a bug becomes a clean exit, with the traceback on --debug
        if debug:
            raise
        print(f"error: internal error: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        print("hint: run again with --debug and report the traceback", file=sys.stderr)
        return ExitCode.INTERNAL


if __name__ == "__main__":
    sys.exit(main())
