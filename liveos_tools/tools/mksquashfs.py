"""mksquashfs: build a squashfs image from a directory tree."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from liveos_tools.errors import NoSpaceError, ToolError
from liveos_tools.run import run

#: what `mksquashfs -comp` accepts (lzma is read by the kernel, not written by mksquashfs).
WRITABLE_COMPRESSORS = ("gzip", "lzo", "lz4", "xz", "zstd")
#: mksquashfs's own default is a quarter of RAM: it then reads a 2 GiB image into memory
#: long before compressing it, so "bytes read" (the progress shown) ran ahead of the
#: work, and on the 2-core bench it took 37-38 s instead of 23-27 s with this cap.
MEMORY = "256M"


def command(
    source: str | Path,
    dest: str | Path,
    *,
    compressor: str,
    block_size: int | None = None,
    keep_owners: bool = False,
) -> list[str]:
    """The argv make() runs (plans show it)."""
    argv = ["mksquashfs", str(source), str(dest), "-noappend", "-no-progress"]
    if not keep_owners:
        argv += ["-all-root", "-no-xattrs"]
    argv += ["-comp", compressor, "-mem", MEMORY]
    if block_size:
        argv += ["-b", str(block_size)]
    return argv


def make(
    source: str | Path,
    dest: str | Path,
    *,
    compressor: str,
    block_size: int | None = None,
    while_running: Callable[[int], None] | None = None,
    keep_owners: bool = False,
) -> None:
    """dest = a new squashfs of the tree `source` (never appended to an existing one).

    Owners become root and extended attributes are left out: the tree is a staging
    directory on the machine doing the build, not the image's own files — unless
    `keep_owners`: the tree is a root filesystem itself (a flat image).
    """
    argv = command(
        source, dest, compressor=compressor, block_size=block_size, keep_owners=keep_owners
    )
    try:
        run(argv, while_running=while_running)
    except ToolError as err:
        if "No space left on device" in err.stderr:
            raise NoSpaceError(
                f"no space left on the filesystem of {dest} while writing the new image",
                "free space there and try again",
            ) from None
        raise
