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
    run([*argv, str(target)])


def make_swap(target: str | Path, *, label: str | None = None) -> None:
    argv = ["mkswap"]
    if label:
        argv += ["-L", label]
    run([*argv, str(target)])
