"""mkfs.ext2/3/4 and mkswap."""

from __future__ import annotations

from pathlib import Path

from liveos_tools.run import run

EXT_TYPES = ("ext4", "ext3", "ext2")


def make_ext(
    target: str | Path,
    *,
    fstype: str = "ext4",
    label: str | None = None,
    uuid: str | None = None,
    populate: str | Path | None = None,
    blocksize: int | None = None,
    size: int | None = None,
) -> None:
    """Make an ext filesystem on a device or an image file (from the tree `populate`).

    `-E nodiscard`: on a regular file mke2fs "discards" by punching holes, which
    would undo the preallocation the stick needs (a full stick must not fail the
    filesystem's writes later).
    """
    if fstype not in EXT_TYPES:
        raise ValueError(f"not an ext filesystem type: {fstype}")
    argv = [f"mkfs.{fstype}", "-q", "-F", "-E", "nodiscard"]
    if label:
        argv += ["-L", label]
    if uuid:
        argv += ["-U", uuid]
    if populate is not None:
        argv += ["-d", str(populate)]
    if blocksize:
        argv += ["-b", str(blocksize)]
    # size (bytes): a new image file of that size is made; None: the whole target
    tail = [str(size // (blocksize or 1024))] if size else []
    run([*argv, str(target), *tail])


def make_swap(target: str | Path, *, label: str | None = None) -> None:
    argv = ["mkswap"]
    if label:
        argv += ["-L", label]
    run([*argv, str(target)])


def ext_argv(
    device: str | Path,
    *,
    fstype: str,
    label: str,
    uuid: str,
    blocksize: int,
    offset: int = 0,
    length: int,
) -> list[str]:
    """mke2fs for a stick: `length` bytes at `offset` of `device` (a partition node: 0).
    nodiscard: a discard punches holes in an image file, undoing the preallocation."""
    if fstype not in EXT_TYPES:
        raise ValueError(f"not an ext filesystem type: {fstype}")
    ext_opts = f"offset={offset},nodiscard" if offset else "nodiscard"
    return [
        f"mkfs.{fstype}",
        "-q",
        "-F",
        "-L",
        label,
        "-U",
        uuid,
        "-b",
        str(blocksize),
        "-E",
        ext_opts,
        str(device),
        str(length // blocksize),
    ]


def run_argv(argv: list[str]) -> None:
    """Run an argv built here (the plan shows the same list)."""
    if not argv or not argv[0].startswith("mkfs.ext"):
        raise ValueError(f"not an mkfs.ext* command: {argv[:1]}")
    run(argv)
