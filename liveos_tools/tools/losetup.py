"""losetup: attach, detach, list, find by backing file, refresh capacity."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from liveos_tools.errors import CorruptError
from liveos_tools.run import run

_COLUMNS = "NAME,BACK-FILE,BACK-INO,BACK-MAJ:MIN,OFFSET,SIZELIMIT,RO,AUTOCLEAR,PARTSCAN,MAJ:MIN"


@dataclass(frozen=True)
class LoopDevice:
    name: str  # /dev/loopN
    back_file: str | None
    back_ino: int | None
    back_dev: tuple[int, int] | None  # the backing file's filesystem device
    offset: int
    sizelimit: int
    readonly: bool
    partscan: bool
    majmin: tuple[int, int] | None

    @property
    def deleted(self) -> bool:
        return bool(self.back_file and self.back_file.endswith(" (deleted)"))


def _flag(value: Any) -> bool:
    # util-linux < 2.37 printed "0"/"1" strings; newer prints JSON booleans.
    if isinstance(value, bool):
        return value
    return str(value).strip() in ("1", "true")


def _int(value: Any) -> int | None:
    if value is None:
        return None
    text = str(value).strip()
    return int(text) if text.isdigit() else None


def _majmin(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    major, sep, minor = str(value).strip().partition(":")
    if not sep or not major.isdigit() or not minor.isdigit():
        return None
    return int(major), int(minor)


def parse_list(text: str) -> list[LoopDevice]:
    """Parse `losetup --json --list --output ...`. Empty output means no devices."""
    if not text.strip():
        return []
    try:
        data = json.loads(text)
        entries = data["loopdevices"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptError(f"unrecognised losetup output: {text[:80]!r}") from exc
    devices = []
    for e in entries:
        if not isinstance(e, dict) or "name" not in e:
            raise CorruptError(f"unrecognised losetup entry: {e!r}")
        devices.append(
            LoopDevice(
                name=str(e["name"]),
                back_file=e.get("back-file"),
                back_ino=_int(e.get("back-ino")),
                back_dev=_majmin(e.get("back-maj:min")),
                offset=_int(e.get("offset")) or 0,
                sizelimit=_int(e.get("sizelimit")) or 0,
                readonly=_flag(e.get("ro", False)),
                partscan=_flag(e.get("partscan", False)),
                majmin=_majmin(e.get("maj:min")),
            )
        )
    return devices


def list_devices() -> list[LoopDevice]:
    return parse_list(run(["losetup", "--json", "--list", "--output", _COLUMNS]).stdout)


def attach(
    path: str | Path,
    *,
    readonly: bool = False,
    partscan: bool = False,
    device: str | None = None,
    offset: int = 0,
    sizelimit: int = 0,
    direct_io: bool = False,
) -> str:
    """Attach a file to a free loop device (or to `device`); return its node (/dev/loopN).
    `offset`/`sizelimit` (bytes): only that range of the file. `direct_io`: the loop
    device reads and writes the file with O_DIRECT, not through its page cache (where the
    kernel cannot, it stays buffered)."""
    argv = ["losetup"] if device else ["losetup", "--find", "--show"]
    if readonly:
        argv.append("--read-only")
    if direct_io:
        argv.append("--direct-io=on")
    if partscan:
        argv.append("--partscan")
    if offset or sizelimit:
        argv += ["--offset", str(offset), "--sizelimit", str(sizelimit)]
    if device:
        run([*argv, device, str(path)])
        return device
    return run([*argv, str(path)]).stdout.strip()


def find_free() -> str:
    """The first unused loop device (a caller records its name before attaching to it)."""
    return run(["losetup", "--find"]).stdout.strip()


def detach(device: str) -> None:
    run(["losetup", "--detach", device])


def refresh_capacity(device: str) -> None:
    """Make the loop device see its backing file's new size (after a grow)."""
    run(["losetup", "--set-capacity", device])


def matches_file(dev: LoopDevice, st: os.stat_result) -> bool:
    """True if the loop device is backed by the file whose stat is given.

    Matching by inode and filesystem device, not by path: the same file is seen
    under other paths in a chroot, a bind mount or a live system's /run.
    """
    if dev.back_ino is None or dev.back_dev is None:
        return False
    return dev.back_ino == st.st_ino and dev.back_dev == (
        os.major(st.st_dev),
        os.minor(st.st_dev),
    )


def find_by_file(path: str | Path, devices: list[LoopDevice] | None = None) -> list[LoopDevice]:
    st = os.stat(path)
    return [d for d in (devices if devices is not None else list_devices()) if matches_file(d, st)]


def partitions(device: str) -> list[str]:
    """Partition nodes of a whole-disk device, from sysfs (works without udev)."""
    name = os.path.basename(os.path.realpath(device))
    sysdir = Path("/sys/class/block") / name
    if not sysdir.is_dir():
        return []
    found = [p for p in sysdir.iterdir() if (p / "partition").exists()]
    found.sort(key=lambda p: int((p / "partition").read_text()))
    return [f"/dev/{p.name}" for p in found]


def wait_for_partitions(device: str, *, timeout: float = 3.0) -> list[str]:
    """The partitions of a device that has a partition table, once the kernel shows them.

    `losetup --partscan` asks the kernel to scan, but the partitions can take a
    moment, and some kernels (seen on 6.18 in a VM) never scan a loop device by
    themselves; `partx --add` then registers them from userspace.
    """
    start = time.monotonic()
    deadline = start + timeout
    asked_partx = False
    while True:
        parts = partitions(device)
        if parts and all(os.path.exists(p) for p in parts):
            return parts
        if not asked_partx and time.monotonic() > start + 0.3:
            run(["partx", "--add", device], check=False)
            asked_partx = True
        if time.monotonic() > deadline:
            return parts
        time.sleep(0.05)
