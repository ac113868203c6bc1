"""syslinux (FAT, userspace, at an offset) and extlinux (ext*, mounted), and the MBR code.

Fedora keeps syslinux's files in /usr/share/syslinux, Debian in /usr/lib/syslinux/mbr
and /usr/lib/syslinux/modules/bios. The reference tool looks only in Fedora's place
and carries on silently without an MBR; we look in both and fail when none is there.
"""

from __future__ import annotations

from pathlib import Path

from liveos_tools.errors import ToolMissingError
from liveos_tools.run import run

MBR_DIRS = (
    Path("/usr/lib/syslinux/mbr"),  # Debian, Ubuntu
    Path("/usr/share/syslinux"),  # Fedora
    Path("/usr/lib/syslinux"),  # older Debian
    Path("/usr/lib/SYSLINUX"),
)
MODULE_DIRS = (
    Path("/usr/lib/syslinux/modules/bios"),  # Debian
    Path("/usr/share/syslinux"),  # Fedora
    Path("/usr/lib/syslinux"),
)
#: The modules a menu needs; ldlinux.c32 is what the boot sector loads next.
MODULES = ("ldlinux.c32", "libcom32.c32", "libutil.c32", "menu.c32", "vesamenu.c32")
MBR_CODE_BYTES = 440


def find_file(name: str, dirs: tuple[Path, ...]) -> Path:
    for d in dirs:
        if (d / name).is_file():
            return d / name
    where = ", ".join(str(d) for d in dirs)
    raise ToolMissingError(f"{name} (looked in {where})", "syslinux-common")


def mbr_code(gpt: bool) -> bytes:
    """The 440 bytes of boot code for an msdos (mbr.bin) or GPT (gptmbr.bin) disk."""
    path = find_file("gptmbr.bin" if gpt else "mbr.bin", MBR_DIRS)
    data = path.read_bytes()[:MBR_CODE_BYTES]
    if len(data) < 400:
        raise ToolMissingError(f"{path} is truncated ({len(data)} bytes)", "syslinux-common")
    return data


def module_paths() -> list[Path]:
    return [find_file(m, MODULE_DIRS) for m in MODULES]


def install_fat(device: str | Path, offset: int, directory: str = "/syslinux") -> None:
    """Write ldlinux.sys/ldlinux.c32 and the boot sector into a FAT at `offset` bytes."""
    run(["syslinux", "--install", "--offset", str(offset), "--directory", directory, str(device)])


def install_ext(mounted_dir: str | Path) -> None:
    """extlinux into a directory of a mounted ext2/3/4 filesystem."""
    run(["extlinux", "--install", str(mounted_dir)])
