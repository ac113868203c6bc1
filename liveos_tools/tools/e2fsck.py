"""e2fsck: check an ext2/3/4 filesystem; its exit code is a bitmask, decoded here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from liveos_tools.run import run

#: e2fsck(8) EXIT CODE: the sum of these bits.
EXIT_BITS: dict[int, str] = {
    1: "errors were corrected",
    2: "errors were corrected; the system should be rebooted",
    4: "errors were left uncorrected",
    8: "operational error",
    16: "usage or syntax error",
    32: "cancelled by the user",
    128: "shared library error",
}

#: bits that mean the check itself did not run to the end.
_FAILED_BITS = 8 | 16 | 32 | 128


@dataclass(frozen=True)
class FsckResult:
    code: int
    output: str

    @property
    def clean(self) -> bool:
        """No errors found (or all found were corrected) and the check ran to the end."""
        return self.code & (4 | _FAILED_BITS) == 0

    @property
    def ran(self) -> bool:
        return self.code & _FAILED_BITS == 0

    @property
    def ok(self) -> bool:
        """After a repair: nothing is left uncorrected (exit 0, 1 or 2)."""
        return self.clean

    @property
    def meaning(self) -> str:
        return describe(self.code)

    def describe(self) -> str:
        """The exit code and what it means, e.g. "1 (errors were corrected)"."""
        return f"{self.code} ({self.meaning})"

    def problems(self, limit: int = 5) -> list[str]:
        """The first lines of the output that are not progress ("Pass N: ...") or the summary."""
        out = []
        for line in self.output.splitlines():
            text = line.strip()
            if not text or text.startswith(("Pass ", "e2fsck ")) or "files (" in text:
                continue
            out.append(text)
        return out[:limit]


def describe(code: int) -> str:
    if code == 0:
        return "no errors"
    return "; ".join(text for bit, text in EXIT_BITS.items() if code & bit)


def check(
    target: str | Path,
    *,
    repair: bool = False,
    fix: bool = False,
    force: bool = True,
    discard: bool = False,
    optimize_dirs: bool = False,
) -> FsckResult:
    """Check `target`: read-only (`-n`) by default; preen (`-p`, safe fixes only) with
    repair=True; fix everything it can (`-y`) with fix=True.

    discard (`-E discard`, not with -n): free blocks are discarded at the end, which on
    an image file punches holes; e2fsck skips it in a run that changed the filesystem.

    A non-zero exit is a result here, not an error: callers decide what it means.
    """
    mode = "-y" if fix else "-p" if repair else "-n"
    argv = ["e2fsck", mode]
    if force:
        argv.append("-f")
    if discard:
        argv += ["-E", "discard"]
    if optimize_dirs:
        # -D rewrites every directory: names of deleted files leave the blocks' slack
        argv.append("-D")
    result = run([*argv, str(target)], check=False)
    return FsckResult(result.returncode, (result.stdout + result.stderr).strip())
