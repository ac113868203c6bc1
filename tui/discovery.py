"""Finding sticks with udev: pyudev devices become plain dicts at this edge.

Everything after `device_info()` is pure, so it is tested without udev. pyudev is
imported only inside the functions that need it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

#: filesystems a LiveOS directory can live on (never the squashfs or the ISO itself).
SKIP_FSTYPES = {"squashfs", "iso9660", "udf", "swap", "crypto_LUKS", "LVM2_member"}


def device_info(dev: Any) -> dict[str, str]:
    """The udev properties we use, from a pyudev Device."""
    info: dict[str, str] = {
        "node": dev.device_node or "",
        "devtype": dev.device_type or "",
        "action": getattr(dev, "action", None) or "",
    }
    for key in ("ID_FS_USAGE", "ID_FS_TYPE", "ID_FS_LABEL", "ID_FS_UUID", "ID_BUS"):
        value = dev.get(key)
        if value:
            info[key] = str(value)
    disk = dev if dev.device_type == "disk" else dev.find_parent("block", "disk")
    if disk is not None:
        with contextlib.suppress(KeyError, AttributeError):
            raw = disk.attributes.get("removable")
            if raw is not None:
                info["removable"] = raw.decode().strip() if isinstance(raw, bytes) else str(raw)
    return info


def is_candidate(info: dict[str, str]) -> bool:
    """A removable (or USB) block device or partition holding a filesystem."""
    if not info.get("node"):
        return False
    if info.get("ID_FS_USAGE") != "filesystem" or info.get("ID_FS_TYPE") in SKIP_FSTYPES:
        return False
    return info.get("removable") == "1" or info.get("ID_BUS") == "usb"


def title_of(info: dict[str, str]) -> str:
    label = info.get("ID_FS_LABEL")
    node = info["node"]
    fs = info.get("ID_FS_TYPE")
    parts = [label] if label else []
    parts.append(node)
    return f"{' '.join(parts)} ({fs})" if fs else " ".join(parts)


def scan() -> list[dict[str, str]]:
    """Every candidate block device udev knows now."""
    try:
        import pyudev
    except ImportError:
        return []
    try:
        context = pyudev.Context()
        found = [device_info(d) for d in context.list_devices(subsystem="block")]
    except Exception:  # pyudev raises plain OSError/ImportError variants without udev
        return []
    return [i for i in found if is_candidate(i)]


def start_monitor(handler: Callable[[dict[str, str]], None]) -> Callable[[], None] | None:
    """Call handler(info) from a background thread for each block device event."""
    try:
        import pyudev

        context = pyudev.Context()
        monitor = pyudev.Monitor.from_netlink(context)
        monitor.filter_by("block")
        observer = pyudev.MonitorObserver(monitor, callback=lambda d: handler(device_info(d)))
        observer.daemon = True
        observer.start()
    except Exception:  # no udev netlink here (containers, guests): no hotplug, not an error
        return None

    def stop() -> None:
        with contextlib.suppress(Exception):
            observer.send_stop()

    return stop
