"""Partition tables through pyparted (libparted): read them, and write new ones.

pyparted is imported inside the functions: `liveos-iso-to-disk --help` must not
pay for it. Works on block devices and on regular image files alike.

One table is written without libparted: an msdos table in an image file this run has
just made (all zeros). There libparted's import alone took 20-60 ms on the development
machine, and its commit runs dmidecode and two `udevadm settle` (which wait for other
users' loop devices too), all before the image copy can start. write_msdos_image()
writes the same 512 bytes libparted writes there (tests/unit/test_iso_msdos_table.py
compares them byte for byte) and reads them back.
"""

from __future__ import annotations

import os
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from liveos_tools.errors import CorruptError, LiveOSError, NoSpaceError, TargetError

SECTOR = 512
ALIGN = 1024 * 1024  # every partition starts on a MiB boundary (or the optimal I/O size)


class TableMismatchError(CorruptError):
    """The partition table on the disk is not the one planned (exit 10)."""


@dataclass(frozen=True)
class PartSpec:
    """A partition to create. size None: the rest of the disk."""

    name: str
    fstype: str  # vfat, ext4, ...: decides the type byte / GUID
    size: int | None
    boot: bool = False  # msdos: the active flag
    esp: bool = False
    legacy_boot: bool = False  # GPT: the flag gptmbr.bin looks for


@dataclass(frozen=True)
class PartInfo:
    number: int
    start: int  # bytes
    length: int  # bytes
    fstype: str | None
    name: str | None
    flags: tuple[str, ...]

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass(frozen=True)
class TableInfo:
    label: str | None  # msdos, gpt, or None when there is no table
    size: int
    partitions: tuple[PartInfo, ...]


def alignment(optimal_io: int) -> int:
    """1 MiB, or the device's optimal I/O size when that is a bigger multiple of it
    (RAID-like sticks, some SD cards report 4 MiB)."""
    if optimal_io > ALIGN and optimal_io % ALIGN == 0:
        return optimal_io
    return ALIGN


def layout(
    disk_size: int, specs: list[PartSpec], *, gpt: bool, align: int = ALIGN
) -> list[tuple[int, int]]:
    """(start, length) in bytes for each spec: aligned to `align`, the last one takes the
    rest. Pure: the plan shows these numbers before anything is written, and the table
    read back after writing must show them too.
    """
    tail = 34 * SECTOR if gpt else 0  # the backup GPT at the end of the disk
    usable_end = (disk_size - tail) // align * align
    pos = align
    out = []
    for i, s in enumerate(specs):
        if s.size is None:
            if i != len(specs) - 1:
                raise ValueError("only the last partition may take the rest")
            length = usable_end - pos
        else:
            length = (s.size + align - 1) // align * align
        out.append((pos, length))
        pos += length
    if pos > usable_end or any(length <= 0 for _, length in out):
        from liveos_tools.units import format_size

        need, room = pos - align, usable_end - align
        raise NoSpaceError(
            f"the partitions need {format_size(need)} ({need} bytes), the disk has room for "
            f"{format_size(room)} ({room} bytes) after its first {format_size(align)}",
            "use a bigger target, or a smaller --format SIZE",
        )
    return out


def sectors(start: int, length: int) -> str:
    """`sectors 2048-4194303` (inclusive, 512-byte sectors), as fdisk -l shows them."""
    return f"sectors {start // SECTOR}-{(start + length) // SECTOR - 1}"


def mismatches(planned: list[tuple[int, int]], table: TableInfo, *, label: str) -> list[str]:
    """How the table read back from the disk differs from the plan (empty: identical)."""
    out = []
    if table.label != label:
        out.append(f"the table is {table.label or 'missing'}, not {label}")
    got = {p.number: (p.start, p.length) for p in table.partitions}
    for number, (start, length) in enumerate(planned, 1):
        have = got.pop(number, None)
        if have is None:
            out.append(f"partition {number} is missing")
        elif have != (start, length):
            out.append(
                f"partition {number} is at {sectors(*have)}, planned {sectors(start, length)}"
            )
    out += [f"partition {n} is not in the plan" for n in sorted(got)]
    return out


def _device(path: str | Path) -> Any:
    import parted

    try:
        return parted.getDevice(str(path))
    except parted.IOException as exc:  # pragma: no cover - translated for the user
        raise TargetError(f"{path}: cannot open it: {exc}") from None


def read_table(path: str | Path) -> TableInfo:
    import parted

    dev = _device(path)
    size = dev.length * dev.sectorSize
    try:
        disk = parted.newDisk(dev)
    except (parted.DiskException, parted.IOException):
        return TableInfo(None, size, ())
    parts = []
    for p in disk.partitions:
        known = (("boot", parted.PARTITION_BOOT), ("legacy_boot", parted.PARTITION_LEGACY_BOOT))
        flags = tuple(name for name, flag in known if p.isFlagAvailable(flag) and p.getFlag(flag))
        name = None
        try:
            name = p.name or None
        except (parted.PartitionException, AttributeError):
            name = None
        parts.append(
            PartInfo(
                number=p.number,
                start=p.geometry.start * dev.sectorSize,
                length=p.geometry.length * dev.sectorSize,
                fstype=p.fileSystem.type if p.fileSystem else None,
                name=name,
                flags=flags,
            )
        )
    return TableInfo(disk.type, size, tuple(parts))


#: libparted's PED_PARTITION_ESP (pyparted names no constant for it)
_PED_PARTITION_ESP = 18
_FS_TYPES = {
    "vfat": "fat32",
    "fat32": "fat32",
    "ext4": "ext4",
    "ext3": "ext3",
    "ext2": "ext2",
    "btrfs": "btrfs",
    "xfs": "xfs",
}


def write_table(
    path: str | Path, specs: list[PartSpec], placed: list[tuple[int, int]], *, gpt: bool
) -> TableInfo:
    """Replace the partition table of `path` with `specs` at exactly the `placed` byte
    ranges, then read it back: a table that differs from the plan raises
    TableMismatchError. Returns the table read back.

    Each partition gets an exact-geometry constraint: `Constraint(device=dev)` lets
    libparted snap the start to the device's CHS cylinders (255x2 on a loop device: p1
    at sector 2040 where the plan said 2048).
    """
    import parted

    label = "gpt" if gpt else "msdos"
    dev = _device(path)
    try:
        disk = parted.freshDisk(dev, label)
        for spec, (start, length) in zip(specs, placed, strict=True):
            if start % dev.sectorSize or length % dev.sectorSize:
                raise ValueError(f"{start}+{length} is not in whole sectors")
            geom = parted.Geometry(
                device=dev, start=start // dev.sectorSize, length=length // dev.sectorSize
            )
            fs = parted.FileSystem(type=_FS_TYPES.get(spec.fstype, "fat32"), geometry=geom)
            part = parted.Partition(disk=disk, type=parted.PARTITION_NORMAL, fs=fs, geometry=geom)
            disk.addPartition(partition=part, constraint=parted.Constraint(exactGeom=geom))
            if gpt and spec.name:
                part.set_name(spec.name)
            if spec.boot and not gpt:
                part.setFlag(parted.PARTITION_BOOT)
            if spec.esp:
                # GPT's "boot" is the ESP type GUID; msdos's "esp" is type 0xef (its "boot"
                # would be a second active partition, and the MBR code boots the first).
                part.setFlag(parted.PARTITION_BOOT if gpt else _PED_PARTITION_ESP)
            if spec.legacy_boot and gpt:
                part.setFlag(parted.PARTITION_LEGACY_BOOT)
        disk.commit()
    except (
        parted.DiskException,
        parted.PartitionException,
        parted.IOException,
        parted.ConstraintException,
        parted.GeometryException,
    ) as exc:
        raise LiveOSError(f"writing the partition table of {path} failed: {exc}") from None
    table = read_table(path)
    return _as_planned(path, placed, table, label)


def _as_planned(
    path: str | Path, placed: list[tuple[int, int]], table: TableInfo, label: str
) -> TableInfo:
    """`table`, read back from `path`, if it is the plan; else TableMismatchError."""
    wrong = mismatches(placed, table, label=label)
    if wrong:
        raise TableMismatchError(
            f"the partition table of {path} reads back different from the plan: "
            + "; ".join(wrong),
            f"nothing was written into the partitions; check {path} (`fdisk -l {path}`) "
            "and run again",
        )
    return table


#: msdos type bytes as libparted writes them for a new partition: its "fat32" without the
#: lba flag, its "esp" flag, and Linux for the rest
_MSDOS_FAT32 = 0x0B
_MSDOS_ESP = 0xEF
_MSDOS_LINUX = 0x83
#: libparted's BIOS geometry for a regular file (linux.c init_file): 4 heads, 32 sectors
_FILE_HEADS = 4
_FILE_SECTORS = 32


def _chs(sector: int) -> bytes:
    """The 3 CHS bytes libparted writes for `sector` (msdos.c sector_to_chs)."""
    c = sector // (_FILE_HEADS * _FILE_SECTORS)
    h = (sector // _FILE_SECTORS) % _FILE_HEADS
    s = sector % _FILE_SECTORS
    if c > 1023:
        c, h, s = 1023, _FILE_HEADS - 1, _FILE_SECTORS - 1
    return bytes([h, s + 1 + (c >> 8 << 6), c & 0xFF])


def msdos_sector(specs: list[PartSpec], placed: list[tuple[int, int]], disk_id: int) -> bytes:
    """Sector 0 of an image file with this msdos table (no boot code: files.write_mbr
    writes that after)."""
    if len(specs) > 4:
        raise ValueError("an msdos table holds 4 primary partitions")
    mbr = bytearray(SECTOR)
    mbr[440:444] = disk_id.to_bytes(4, "little")
    for i, (spec, (start, length)) in enumerate(zip(specs, placed, strict=True)):
        if start % SECTOR or length % SECTOR or (start + length) // SECTOR >= 1 << 32:
            raise ValueError(f"{start}+{length} is not in whole sectors an msdos table holds")
        first, count = start // SECTOR, length // SECTOR
        kind = (
            _MSDOS_ESP
            if spec.esp
            else _MSDOS_FAT32
            if _FS_TYPES.get(spec.fstype, "fat32") == "fat32"
            else _MSDOS_LINUX
        )
        entry = (
            bytes([0x80 if spec.boot else 0])
            + _chs(first)
            + bytes([kind])
            + _chs(first + count - 1)
            + struct.pack("<II", first, count)
        )
        mbr[446 + 16 * i : 462 + 16 * i] = entry
    mbr[510:512] = b"\x55\xaa"
    return bytes(mbr)


def read_msdos_sector(data: bytes, size: int) -> TableInfo:
    """The msdos table in sector 0 `data` of a disk of `size` bytes (no extended
    partitions: write_msdos_image makes none)."""
    if len(data) < SECTOR or data[510:512] != b"\x55\xaa":
        return TableInfo(None, size, ())
    parts = []
    for i in range(4):
        entry = data[446 + 16 * i : 462 + 16 * i]
        first, count = struct.unpack("<II", entry[8:16])
        if entry[4] == 0 or count == 0:
            continue
        flags = ("boot",) if entry[0] == 0x80 else ()
        parts.append(PartInfo(i + 1, first * SECTOR, count * SECTOR, None, None, flags))
    return TableInfo("msdos", size, tuple(parts))


def write_msdos_image(
    path: str | Path, specs: list[PartSpec], placed: list[tuple[int, int]]
) -> TableInfo:
    """write_table() for an msdos table in an image file this run made (all zeros, so
    there is nothing of an older table to clear): the sector, then read back from the
    file and compared with the plan (TableMismatchError)."""
    data = msdos_sector(specs, placed, secrets.randbits(32))
    fd = os.open(path, os.O_RDWR)
    try:
        if os.pwrite(fd, data, 0) != len(data):
            raise LiveOSError(f"writing the partition table of {path} failed: a short write")
        table = read_msdos_sector(os.pread(fd, SECTOR, 0), os.fstat(fd).st_size)
    finally:
        os.close(fd)
    return _as_planned(path, placed, table, "msdos")
