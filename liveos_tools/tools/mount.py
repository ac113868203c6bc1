"""mount and umount, read-only by default: reading a stick must not change it."""

from __future__ import annotations

from pathlib import Path

from liveos_tools.errors import TargetError, ToolError
from liveos_tools.run import run

# ext4's `ro` still replays a dirty journal; `noload` does not. A stick pulled from a
# running live system always has a dirty journal (docs/ARCHITECTURE.md F2).
_RO_OPTIONS = {"ext4": "ro,noload", "ext3": "ro,noload", "ext2": "ro"}


def kernel_filesystems(text: str | None = None) -> set[str]:
    """Filesystem types the running kernel can mount now (/proc/filesystems)."""
    if text is None:
        try:
            text = Path("/proc/filesystems").read_text()
        except OSError:
            return set()
    return {line.split()[-1] for line in text.splitlines() if line.strip()}


def mount(
    device: str,
    mountpoint: str | Path,
    *,
    fstype: str | None = None,
    options: str | None = None,
) -> None:
    argv = ["mount"]
    if fstype:
        argv += ["-t", fstype]
    opts = options if options is not None else _RO_OPTIONS.get(fstype or "", "ro")
    argv += ["-o", opts, device, str(mountpoint)]
    try:
        run(argv)
    except ToolError as err:
        # mount(8) only says "dmesg may have more information": say what is missing.
        if fstype and fstype not in kernel_filesystems():
            raise TargetError(
                f"this kernel cannot mount {fstype} filesystems, so {device} cannot be read",
                f"load its module (modprobe {fstype}) or use a system with {fstype} support",
            ) from err
        raise


def umount(mountpoint: str | Path) -> None:
    run(["umount", str(mountpoint)])
