"""What a TARGET is, and the refusals made before anything is written.

Removable: a block device counts as removable when sysfs says `removable` is 1, or
when it sits on USB (`/sys/.../usb` in its device path), or is an MMC/SD card. Loop
devices and disk image files count as removable-equivalent: they are how tests and
image builds run, and writing one cannot hurt the machine. Anything else needs
`--force`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from liveos_tools import mounts
from liveos_tools.errors import InUseError, LiveOSError, TargetError, UsageError


class TargetKind(Enum):
    IMAGE = "image"  # a disk image file (the whole "disk")
    DISK = "disk"  # a whole block device
    PARTITION = "partition"  # one partition of a block device


class NotRemovableError(LiveOSError):
    pass


#: Mount points whose disk is "the disk the running system lives on".
SYSTEM_MOUNTS = ("/", "/boot", "/boot/efi", "/usr", "/var", "/home")


@dataclass(frozen=True)
class Target:
    spec: str
    kind: TargetKind
    path: str
    size: int  # bytes; 0 for an image file that does not exist yet
    removable: bool
    removable_why: str
    exists: bool = True
    disk: str | None = None  # the whole disk's sysfs name (sdb), for devices
    partition_number: int | None = None


def _sysfs_name(majmin: tuple[int, int]) -> str | None:
    p = Path(f"/sys/dev/block/{majmin[0]}:{majmin[1]}")
    try:
        return os.path.basename(os.path.realpath(p))
    except OSError:
        return None


def whole_disk(name: str) -> str:
    """sdb1 -> sdb, loop0p1 -> loop0, nvme0n1p2 -> nvme0n1 (from sysfs)."""
    sysdir = Path("/sys/class/block") / name
    if (sysdir / "partition").exists():
        return os.path.basename(os.path.realpath(sysdir / ".."))
    return name


def disk_of_majmin(majmin: tuple[int, int]) -> str | None:
    name = _sysfs_name(majmin)
    return whole_disk(name) if name else None


def system_disks(
    table: list[mounts.Mount], disk_of: Callable[[tuple[int, int]], str | None] = disk_of_majmin
) -> set[str]:
    """Whole disks that hold the running system's own filesystems."""
    out = set()
    for m in table:
        if m.mountpoint in SYSTEM_MOUNTS:
            disk = disk_of(m.majmin)
            if disk:
                out.add(disk)
    return out


def refuse_system_disk(
    disk: str,
    table: list[mounts.Mount],
    disk_of: Callable[[tuple[int, int]], str | None] = disk_of_majmin,
) -> None:
    if disk in system_disks(table, disk_of):
        held = [
            m.mountpoint
            for m in table
            if m.mountpoint in SYSTEM_MOUNTS and disk_of(m.majmin) == disk
        ]
        where = ", ".join(sorted(held))
        raise InUseError(
            f"/dev/{disk} is the disk the running system lives on (it holds {where})",
            "pick the USB stick: compare sizes and models with `lsblk -o NAME,SIZE,MODEL,TRAN`",
        )


def refuse_mounted(disk: str, names: list[str], table: list[mounts.Mount]) -> None:
    """Refuse if the disk or any of its partitions is mounted."""
    wanted = set(names) | {disk}
    for m in table:
        name = _sysfs_name(m.majmin) if m.source.startswith("/dev/") else None
        if name in wanted:
            raise InUseError(
                f"/dev/{name} is mounted at {m.mountpoint}",
                f"unmount it first: umount {m.mountpoint}",
            )


def removable_reason(name: str) -> tuple[bool, str]:
    sysdir = Path("/sys/block") / name
    if name.startswith("loop"):
        return True, "a loop device (removable-equivalent)"
    try:
        if (sysdir / "removable").read_text().strip() == "1":
            return True, "sysfs says removable"
    except OSError:
        pass
    real = os.path.realpath(sysdir)
    if "/usb" in real:
        return True, "it is on USB"
    if name.startswith("mmcblk"):
        return True, "an MMC/SD card"
    return False, "sysfs says it is not removable and it is not on USB"


def partitions_of(disk: str) -> list[str]:
    sysdir = Path("/sys/class/block") / disk
    if not sysdir.is_dir():
        return []
    return sorted(p.name for p in sysdir.iterdir() if (p / "partition").exists())


def resolve(spec: str, *, format_size: int | None, formatting: bool) -> Target:
    """Describe TARGET. A missing path becomes a new image file when --format gives a size."""
    path = Path(spec)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if formatting and format_size:
            if not path.parent.is_dir():
                raise TargetError(f"{path.parent}: no such directory") from None
            return Target(
                spec,
                TargetKind.IMAGE,
                spec,
                format_size,
                True,
                "a new disk image file",
                exists=False,
            )
        raise TargetError(
            f"{spec}: no such file or device",
            "give a device (/dev/sdX, /dev/sdX1), or --format SIZE to create a disk image file",
        ) from None
    if stat.S_ISREG(st.st_mode):
        if st.st_size == 0:
            if not format_size:
                raise UsageError(f"{spec} is an empty file", "give its size: --format 4G")
            # sized like a new image file (exists=False: it is made that big first)
            return Target(
                spec,
                TargetKind.IMAGE,
                spec,
                format_size,
                True,
                "an empty file, made a disk image",
                exists=False,
            )
        # --format SIZE on an existing image is the LiveOS partition's size, as on a disk
        return Target(spec, TargetKind.IMAGE, spec, st.st_size, True, "a disk image file")
    if not stat.S_ISBLK(st.st_mode):
        raise TargetError(f"{spec} is neither a block device nor a disk image file")
    name = _sysfs_name((os.major(st.st_rdev), os.minor(st.st_rdev))) or path.name
    disk = whole_disk(name)
    # Before even opening it: the system disk is refused whatever else is true.
    refuse_system_disk(disk, mounts.mounts())
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
    except PermissionError:
        raise TargetError(f"{spec}: permission denied", "run as root (sudo)") from None
    except OSError as exc:
        raise TargetError(f"{spec}: cannot open it: {exc.strerror}") from None
    removable, why = removable_reason(disk)
    if disk != name:
        try:
            number = int((Path("/sys/class/block") / name / "partition").read_text())
        except (OSError, ValueError):
            number = None
        return Target(
            spec,
            TargetKind.PARTITION,
            spec,
            size,
            removable,
            why,
            disk=disk,
            partition_number=number,
        )
    return Target(spec, TargetKind.DISK, spec, size, removable, why, disk=disk)


def check(target: Target, *, force: bool, table: list[mounts.Mount] | None = None) -> None:
    """The refusals that do not depend on the plan (space is checked by the plan)."""
    table = mounts.mounts() if table is None else table
    if target.kind is TargetKind.IMAGE:
        if os.path.exists(target.path):
            from liveos_tools.tools import losetup

            try:
                attached = losetup.find_by_file(target.path)
            except LiveOSError:
                attached = []
            if attached:
                raise InUseError(
                    f"{target.path} is attached to {attached[0].name}",
                    f"detach it first: losetup -d {attached[0].name}",
                )
        return
    assert target.disk is not None
    refuse_system_disk(target.disk, table)
    name = os.path.basename(os.path.realpath(target.path))
    refuse_mounted(
        target.disk if target.kind is TargetKind.DISK else name,
        partitions_of(target.disk) if target.kind is TargetKind.DISK else [],
        table,
    )
    if not target.removable and not force:
        raise NotRemovableError(
            f"{target.path} is not a removable disk ({target.removable_why})",
            "check it is the right device; add --force to write it anyway",
        )
