"""mksquashfs / unsquashfs for refresh: the compressor an image uses, the size of a file
inside one, and a nested squashfs.img (LiveOS/rootfs.img inside) made from an image."""

from __future__ import annotations

import os
import struct
import tempfile
from pathlib import Path

from liveos_tools.errors import CorruptError
from liveos_tools.run import run

#: squashfs 4 superblock: s_magic at 0, compression id (u16) at 20.
SQUASHFS_MAGIC = 0x73717368
COMPRESSORS = {1: "gzip", 2: "lzma", 3: "lzo", 4: "xz", 5: "lz4", 6: "zstd"}


def compressor_of(image: Path) -> str:
    """The compressor named in a squashfs superblock (pure read of 22 bytes)."""
    with open(image, "rb") as f:
        head = f.read(22)
    if len(head) < 22 or struct.unpack_from("<I", head, 0)[0] != SQUASHFS_MAGIC:
        raise CorruptError(
            f"{image} is not a squashfs image (bad superblock)",
            "the live image is damaged: put a good squashfs.img back",
        )
    comp = struct.unpack_from("<H", head, 20)[0]
    if comp not in COMPRESSORS:
        raise CorruptError(f"{image} names an unknown compressor (id {comp})")
    return COMPRESSORS[comp]


def parse_lls_size(text: str, inner: str) -> int | None:
    """The size column of `unsquashfs -lls` for the line ending in `inner`."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 6 and parts[-1].lstrip("/").endswith(inner):
            try:
                return int(parts[2])
            except ValueError:
                return None
    return None


def inner_size(image: Path, inner: str) -> int | None:
    out = run(["unsquashfs", "-lls", "-d", "", str(image), inner], check=False)
    return parse_lls_size(out.stdout, inner) if out.returncode == 0 else None


def make_nested(rootfs: Path, dest: Path, *, compressor: str) -> None:
    """dest = a squashfs holding LiveOS/rootfs.img (hard-linked, so nothing is copied)."""
    with tempfile.TemporaryDirectory(prefix="liveos-sq-", dir=rootfs.parent) as tmp:
        (Path(tmp) / "LiveOS").mkdir()
        os.link(rootfs, Path(tmp) / "LiveOS" / "rootfs.img")
        run(["mksquashfs", tmp, str(dest), "-comp", compressor, "-noappend", "-no-progress",
             "-quiet"])  # fmt: skip
    with open(dest, "rb") as f:
        os.fsync(f.fileno())
