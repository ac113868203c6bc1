"""unsquashfs listing (which LiveOS image layout a squashfs.img holds), and its superblock."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from liveos_tools.errors import CorruptError, TargetError
from liveos_tools.run import run

NESTED_NAMES = ("LiveOS/rootfs.img", "LiveOS/ext3fs.img")


def parse_listing(text: str) -> set[str]:
    """Paths from `unsquashfs -l -d ''` output, without the leading slash."""
    return {line.strip().lstrip("/") for line in text.splitlines() if line.startswith("/")}


def find_paths(image: str | Path, paths: tuple[str, ...], *, offset: int = 0) -> set[str]:
    """Which of `paths` exist inside the squashfs image (at `offset` bytes of it: inside
    an ISO) (reads directory tables only)."""
    at = ["-o", str(offset)] if offset else []
    out = run(["unsquashfs", "-no-progress", *at, "-l", "-d", "", str(image), *paths]).stdout
    return parse_listing(out) & set(paths)


def parse_lls_size(text: str, path: str) -> int | None:
    """A file's size from `unsquashfs -lls` output (`-rw-r--r-- root/root 123 ... /PATH`)."""
    for line in text.splitlines():
        if line.rstrip().endswith("/" + path.strip("/")):
            parts = line.split()
            if len(parts) >= 3 and parts[2].isdigit():
                return int(parts[2])
    return None


def file_size(image: str | Path, path: str, *, offset: int = 0) -> int | None:
    """The size of `path` inside a squashfs at `offset` of `image` (None: not there)."""
    res = run(
        ["unsquashfs", "-no-progress", "-o", str(offset), "-lls", "-d", "", str(image), path],
        check=False,
    )
    return parse_lls_size(res.stdout, path)


def extract(image: str | Path, path: str, dest: str | Path, *, offset: int = 0) -> Path:
    """Unpack `path` from a squashfs at `offset` of `image` under `dest`; its host path."""
    run(["unsquashfs", "-no-progress", "-o", str(offset), "-d", str(dest), str(image), path])
    return Path(dest) / path.strip("/")


def unpack(image: str | Path, dest: str | Path) -> None:
    """Unpack the whole squashfs into the new directory `dest` (owners, modes, xattrs,
    hard links and device nodes kept: run as root)."""
    run(["unsquashfs", "-no-progress", "-quiet", "-d", str(dest), str(image)])


def tree_bytes(image: str | Path) -> int:
    """The sum of the file sizes inside a squashfs (`unsquashfs -lls`: directory tables)."""
    out = run(["unsquashfs", "-no-progress", "-lls", "-d", "", str(image)]).stdout
    total = 0
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and line.startswith("-") and parts[2].isdigit():
            total += int(parts[2])
    return total


# -- the superblock (squashfs-tools squashfs_fs.h: struct squashfs_super_block) --------------

SQUASHFS_MAGIC = b"hsqs"
SUPERBLOCK_SIZE = 96
#: the compression id at offset 20 -> the name mksquashfs -comp takes.
COMPRESSORS: dict[int, str] = {1: "gzip", 2: "lzma", 3: "lzo", 4: "xz", 5: "lz4", 6: "zstd"}


@dataclass(frozen=True)
class Superblock:
    inodes: int
    block_size: int
    compressor: str
    major: int
    minor: int
    bytes_used: int


def parse_superblock(data: bytes) -> Superblock:
    """The fields of a squashfs superblock (little-endian); CorruptError if it is not one."""
    if len(data) < SUPERBLOCK_SIZE or data[:4] != SQUASHFS_MAGIC:
        raise CorruptError("not a squashfs image (no hsqs magic at its start)")
    inodes, _mtime, block_size, _frags, comp_id, _log, _flags, _ids, major, minor = (
        struct.unpack_from("<IIIIHHHHHH", data, 4)
    )
    (bytes_used,) = struct.unpack_from("<Q", data, 40)
    if major != 4:
        raise CorruptError(f"squashfs version {major}.{minor} (only 4.x is read)")
    compressor = COMPRESSORS.get(comp_id)
    if compressor is None:
        raise CorruptError(f"unknown squashfs compression id {comp_id}")
    return Superblock(inodes, block_size, compressor, major, minor, bytes_used)


def read_superblock(image: str | Path) -> Superblock:
    try:
        with open(image, "rb") as f:
            data = f.read(SUPERBLOCK_SIZE)
    except OSError as exc:
        raise TargetError(f"{image}: {exc.strerror}") from None
    try:
        return parse_superblock(data)
    except CorruptError as err:
        raise CorruptError(f"{image}: {err.message}") from None
