"""resize2fs: grow or shrink an unmounted ext2/3/4 filesystem, or estimate its minimum size."""

from __future__ import annotations

import re
from pathlib import Path

from liveos_tools.errors import CorruptError
from liveos_tools.run import run

_MIN_RE = re.compile(r"Estimated minimum size of the filesystem:\s*(\d+)")


def parse_min_blocks(text: str) -> int:
    """The block count from `resize2fs -P` output."""
    m = _MIN_RE.search(text)
    if not m:
        raise CorruptError(f"unrecognised resize2fs -P output: {text.strip()[:80]!r}")
    return int(m.group(1))


def min_blocks(target: str | Path) -> int:
    """resize2fs's estimate of the smallest size (in filesystem blocks) the data fits in."""
    return parse_min_blocks(run(["resize2fs", "-P", str(target)]).stdout)


def size_argument(nbytes: int) -> str:
    """resize2fs's size argument for `nbytes` (whole KiB, which every block size divides)."""
    if nbytes % 1024:
        raise ValueError(f"{nbytes} is not a whole number of KiB")
    return f"{nbytes // 1024}K"


def resize(target: str | Path, nbytes: int | None = None) -> None:
    """Resize to `nbytes`, or to fill the device or file when None."""
    argv = ["resize2fs", str(target)]
    if nbytes is not None:
        argv.append(size_argument(nbytes))
    run(argv)
