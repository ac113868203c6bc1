"""One error family for the whole project, and the exit codes it maps to.

Every failure a user can meet is a :class:`LiveOSError` with a one-line message
(what is wrong) and a hint (what to do). The CLI prints both and exits with the
error's code; nothing else in the library decides exit codes.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes of every liveos-tools command. Documented in README.md."""

    OK = 0
    #: status only: the overlay is filling up (80% or more used).
    WARNING = 1
    #: the command line itself is wrong (argparse uses 2 too).
    USAGE = 2
    #: status only: the overlay is overflowed, invalid, full or corrupt.
    BROKEN = 3
    #: the target could not be read: missing path, no LiveOS there, unreadable.
    BAD_TARGET = 4
    #: the thing to change is in use (attached, mapped, mounted).
    IN_USE = 5
    #: not enough space, or a size beyond what the filesystem allows.
    NO_SPACE = 6
    #: a required program is not installed.
    TOOL_MISSING = 7
    #: an external program failed.
    TOOL_FAILED = 8
    #: the user declined, or the command was interrupted.
    ABORTED = 9
    #: the data on the stick is damaged in a way this command will not touch.
    CORRUPT = 10
    #: a bug: an unexpected exception (run with --debug for the traceback).
    INTERNAL = 70


class LiveOSError(Exception):
    """Base of every error the library raises on purpose."""

    code: ExitCode = ExitCode.BAD_TARGET

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(LiveOSError):
    code = ExitCode.USAGE


class TargetError(LiveOSError):
    """The path given does not lead to something we can read."""

    code = ExitCode.BAD_TARGET


class CorruptError(LiveOSError):
    """On-disk data is damaged (bad magic, impossible values, truncated)."""

    code = ExitCode.CORRUPT


class InUseError(LiveOSError):
    code = ExitCode.IN_USE


class NoSpaceError(LiveOSError):
    code = ExitCode.NO_SPACE


class AbortedError(LiveOSError):
    code = ExitCode.ABORTED


class ToolMissingError(LiveOSError):
    code = ExitCode.TOOL_MISSING

    def __init__(self, tool: str, package: str | None) -> None:
        hint = (
            f"install it: apt-get install {package}"
            if package
            else "install it with your distribution's package manager"
        )
        super().__init__(f"{tool} is not installed", hint)
        self.tool = tool
        self.package = package


class ToolError(LiveOSError):
    """An external command exited non-zero. Carries argv, exit code and stderr."""

    code = ExitCode.TOOL_FAILED

    def __init__(
        self,
        argv: Sequence[str],
        returncode: int,
        stderr: str,
        message: str | None = None,
        hint: str | None = None,
    ) -> None:
        detail = _last_line(stderr)
        msg = message or f"{argv[0]} failed with exit code {returncode}"
        if detail:
            msg = f"{msg}: {detail}"
        super().__init__(msg, hint)
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
