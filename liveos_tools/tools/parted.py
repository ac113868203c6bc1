"""Partition tables through pyparted (libparted): read them, and write new ones.

pyparted is imported inside the functions: `liveos-iso-to-disk --help` must not
pay for it. Works on block devices and on regular image files alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from liveos_tools.errors import LiveOSError, TargetError

SECTOR = 512
ALIGN = 1024 * 1024  # every partition starts on a MiB boundary


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


def layout(disk_size: int, specs: list[PartSpec], *, gpt: bool) -> list[tuple[int, int]]:
    """(start, length) in bytes for each spec: MiB-aligned, the last one takes the rest.

    Pure: the plan shows these numbers before anything is written.
    """
    tail = 34 * SECTOR if gpt else 0  # the backup GPT at the end of the disk
    usable_end = (disk_size - tail) // ALIGN * ALIGN
    pos = ALIGN
    out = []
    for i, s in enumerate(specs):
        if s.size is None:
            if i != len(specs) - 1:
                raise ValueError("only the last partition may take the rest")
            length = usable_end - pos
        else:
            length = (s.size + ALIGN - 1) // ALIGN * ALIGN
        out.append((pos, length))
        pos += length
    if pos > usable_end or any(length <= 0 for _, length in out):
        raise TargetError(
            f"the partitions need {pos} bytes, the disk has {usable_end}",
            "use a bigger target, or smaller --overlay-size-mb/--home-size-mb",
        )
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
        flags = tuple(
            name for name, flag in known if p.isFlagAvailable(flag) and p.getFlag(flag)
        )
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


_FS_TYPES = {"vfat": "fat32", "fat32": "fat32", "ext4": "ext4", "ext3": "ext3", "ext2": "ext2",
             "btrfs": "btrfs", "xfs": "xfs"}  # fmt: skip


def write_table(
    path: str | Path, specs: list[PartSpec], *, gpt: bool
) -> list[tuple[int, int]]:
    """Replace the partition table of `path` with `specs`; return (start, length) of each."""
    import parted

    dev = _device(path)
    size = dev.length * dev.sectorSize
    placed = layout(size, specs, gpt=gpt)
    try:
        disk = parted.freshDisk(dev, "gpt" if gpt else "msdos")
        constraint = parted.Constraint(device=dev)
        for spec, (start, length) in zip(specs, placed, strict=True):
            geom = parted.Geometry(
                device=dev, start=start // dev.sectorSize, length=length // dev.sectorSize
            )
            fs = parted.FileSystem(type=_FS_TYPES.get(spec.fstype, "fat32"), geometry=geom)
            part = parted.Partition(
                disk=disk, type=parted.PARTITION_NORMAL, fs=fs, geometry=geom
            )
            disk.addPartition(partition=part, constraint=constraint)
            if gpt and spec.name:
                part.set_name(spec.name)
            if spec.boot and not gpt:
                part.setFlag(parted.PARTITION_BOOT)
            if spec.esp:
                part.setFlag(parted.PARTITION_BOOT if not gpt else
                             getattr(parted, "PARTITION_ESP", parted.PARTITION_BOOT))  # fmt: skip
            if spec.legacy_boot and gpt:
                part.setFlag(parted.PARTITION_LEGACY_BOOT)
        disk.commit()
    except (parted.DiskException, parted.PartitionException, parted.IOException,
            parted.ConstraintException, parted.GeometryException) as exc:  # fmt: skip
        raise LiveOSError(f"writing the partition table of {path} failed: {exc}") from None
    return placed
