"""mount and umount, read-only by default: reading a stick must not change it."""

from __future__ import annotations

from pathlib import Path

from liveos_tools.run import run

# ext4's `ro` still replays a dirty journal; `noload` does not. A stick pulled from a
# running live system always has a dirty journal (FACTS.md section 2).
_RO_OPTIONS = {"ext4": "ro,noload", "ext3": "ro,noload", "ext2": "ro"}


def mount(
    device: str, mountpoint: str | Path, *, fstype: str | None = None, options: str | None = None
) -> None:
    argv = ["mount"]
    if fstype:
        argv += ["-t", fstype]
    opts = options if options is not None else _RO_OPTIONS.get(fstype or "", "ro")
    argv += ["-o", opts, device, str(mountpoint)]
    run(argv)


def umount(mountpoint: str | Path) -> None:
    run(["umount", str(mountpoint)])
