"""--format's partitions: where they go, and where their filesystems are reached.

The plan places every partition (aligned, exact sectors shown by --dry-run); the table
is written with exactly those geometries and read back (tools/parted.py). On a block
device each filesystem is then made and written through its partition node
(/dev/sdb1, /dev/loop0p1), whose kernel-reported start and size must be the plan's; a
disk image file has no nodes, so its filesystems are reached at their byte offset.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from liveos_tools.errors import TargetError
from liveos_tools.tools.parted import SECTOR, PartSpec, alignment, sectors
from liveos_tools.tools.parted import layout as part_layout
from liveos_tools.writer.target import Target, TargetKind

ESP_SIZE = 64 * 1024 * 1024


@dataclass(frozen=True)
class Part:
    """One planned partition, and how its filesystem is reached once it exists."""

    number: int
    spec: PartSpec
    start: int  # bytes from the start of the disk
    length: int
    device: str  # the partition node (block device), or the image file
    offset: int  # 0 on a node; the partition's start inside an image file

    @property
    def where(self) -> str:
        return sectors(self.start, self.length)


@dataclass(frozen=True)
class Partitioning:
    disk: str
    gpt: bool
    align: int
    parts: tuple[Part, ...]
    live: Part
    esp: Part | None

    @property
    def label(self) -> str:
        return "gpt" if self.gpt else "msdos"

    @property
    def placed(self) -> list[tuple[int, int]]:
        return [(p.start, p.length) for p in self.parts]

    @property
    def specs(self) -> list[PartSpec]:
        return [p.spec for p in self.parts]

    def describe(self) -> str:
        return ", ".join(
            f"p{p.number} {p.spec.fstype}{' (ESP)' if p.spec.esp else ''} {p.where}"
            for p in self.parts
        )


def node_name(disk: str, number: int) -> str:
    """The kernel's name for partition `number` of `disk`: sdb1, but loop0p1, nvme0n1p1."""
    return f"{disk}p{number}" if disk[-1:].isdigit() else f"{disk}{number}"


def _sys(name: str) -> Path:
    return Path("/sys/class/block") / name


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 0


def check_can_partition(target: Target) -> None:
    """A loop device attached without partition scanning shows no partition nodes:
    refused before anything is written."""
    loop = target.kind is TargetKind.DISK and (target.disk or "").startswith("loop")
    if loop and _read_int(_sys(target.disk or "") / "loop" / "partscan") != 1:
        raise TargetError(
            f"{target.spec} was attached without partition scanning: the kernel would "
            "show no partitions to make filesystems on",
            "attach its image with `losetup -P`, or give the image file itself",
        )


def plan(
    target: Target, fstype: str, *, gpt: bool, esp: bool, live_size: int | None
) -> Partitioning:
    """GPT: ESP first (p1), LIVE second. msdos: LIVE first (p1, active), the ESP after
    it (type 0xef), as the reference tool lays out an ext4 stick that also boots UEFI.
    `live_size` None: LIVE takes the rest of the disk."""
    esp_spec = PartSpec("EFI System Partition", "vfat", ESP_SIZE, esp=True)
    if gpt:
        specs = ([esp_spec] if esp else []) + [
            PartSpec("LIVE", fstype, live_size, legacy_boot=True)
        ]
    elif esp:
        if live_size is None:  # the ESP goes after LIVE, so LIVE gets a size
            align = _align(target)
            end = target.size // align * align
            live_size = end - align - -(-ESP_SIZE // align) * align
        specs = [PartSpec("LIVE", fstype, live_size, boot=True), esp_spec]
    else:
        specs = [PartSpec("LIVE", fstype, live_size, boot=True)]
    align = _align(target)
    # a --format SIZE smaller than the disk: the rest stays unpartitioned
    placed = part_layout(target.size, specs, gpt=gpt, align=align)
    block = target.kind is TargetKind.DISK
    parts = []
    for i, (spec, (start, length)) in enumerate(zip(specs, placed, strict=True), 1):
        if block:
            assert target.disk is not None
            dev, off = f"/dev/{node_name(target.disk, i)}", 0
        else:
            dev, off = target.path, start
        parts.append(Part(i, spec, start, length, dev, off))
    live = next(p for p in parts if p.spec.name == "LIVE")
    esp_part = next((p for p in parts if p.spec.esp), None)
    return Partitioning(target.path, gpt, align, tuple(parts), live, esp_part)


def _align(target: Target) -> int:
    if target.kind is TargetKind.DISK and target.disk:
        return alignment(_read_int(_sys(target.disk) / "queue" / "optimal_io_size"))
    return alignment(0)


def locate(target: Target, p: Partitioning) -> None:
    """After the table is written: every planned node exists, and the kernel places it
    exactly where the plan does (its sysfs start and size, in 512-byte sectors)."""
    if target.kind is not TargetKind.DISK:
        return
    from liveos_tools.tools import losetup

    losetup.wait_for_partitions(target.path, timeout=10.0)
    for part in p.parts:
        name = os.path.basename(part.device)
        start = _read_int(_sys(name) / "start") * SECTOR
        size = _read_int(_sys(name) / "size") * SECTOR
        if not os.path.exists(part.device) or not size:
            raise TargetError(
                f"the kernel shows no {part.device} after the partition table was written",
                f"run `partx --update {target.path}` (or replug the stick) and run again",
            )
        if (start, size) != (part.start, part.length):
            raise TargetError(
                f"the kernel places {part.device} at {sectors(start, size)}, the plan at "
                f"{part.where}: nothing was made on it",
                f"run `partx --update {target.path}` (or replug the stick) and run again",
            )
