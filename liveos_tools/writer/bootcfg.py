"""Kernel arguments of the boot contract (FACTS.md section 2) and the boot loader configs.

Pure functions: the plan prints exactly the text that will be written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum


class Persistence(Enum):
    DM = "dm-snapshot"  # overlay-<LABEL>-<UUID>, a preallocated snapshot store
    OVERLAYFS = "overlayfs"  # a directory (ext4) or an image file (vfat)
    OVERLAYFS_TEMP = "overlayfs-temp"  # OverlayFS in RAM: nothing kept
    NONE = "none"  # dracut's default: a temporary dm overlay in RAM


@dataclass(frozen=True)
class BootArgs:
    uuid: str
    fstype: str
    livedir: str = "LiveOS"
    persistence: Persistence = Persistence.DM
    reset_overlay: bool = False
    source_args: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()

    def words(self) -> list[str]:
        # `rw` before rd.live.image: dracut mounts the stick read-write only then.
        w = [f"root=live:UUID={self.uuid}", f"rootfstype={self.fstype}", "rw", "rd.live.image"]
        if self.livedir != "LiveOS":
            w.append(f"rd.live.dir={self.livedir}")
        if self.persistence in (Persistence.DM, Persistence.OVERLAYFS):
            # No path: dracut looks for its default name overlay-<LABEL>-<UUID>.
            w.append(f"rd.live.overlay=UUID={self.uuid}")
        if self.persistence in (Persistence.OVERLAYFS, Persistence.OVERLAYFS_TEMP):
            w.append("rd.live.overlay.overlayfs")
        if self.reset_overlay:
            w.append("rd.live.overlay.reset")
        w += [a for a in self.source_args if a not in w]
        w += list(self.extra)
        return w

    def line(self) -> str:
        return " ".join(self.words())


def syslinux_cfg(
    args: BootArgs,
    *,
    title: str,
    kernel: str = "vmlinuz",
    initrd: str = "initrd.img",
    timeout_s: int = 10,
    menu: bool = True,
    bootmsg: bool = True,
) -> str:
    """syslinux.cfg / extlinux.conf. timeout 0 boots at once; -1 waits forever."""
    lines = []
    if menu:
        lines += ["ui menu.c32", f"menu title {title}"]
    lines.append("default linux")
    if timeout_s < 0:
        lines.append("timeout 0")
    else:
        lines += ["prompt 0" if timeout_s == 0 or not menu else "prompt 1",
                  f"timeout {max(1, timeout_s * 10)}"]  # fmt: skip
    if not bootmsg:
        lines.append("# --nobootmsg: no boot message")
    lines += [
        "",
        "label linux",
        f"  menu label ^Start {title}",
        f"  kernel {kernel}",
        f"  append initrd={initrd} {args.line()}",
        "",
        "label check",
        f"  menu label ^Test this media & start {title}",
        f"  kernel {kernel}",
        f"  append initrd={initrd} {args.line()} rd.live.check",
        "",
    ]
    return "\n".join(lines)


_LINUX = re.compile(r"^(\s*)(linux|linuxefi)\s+(\S+)(.*)$")
_INITRD = re.compile(r"^(\s*)(initrd|initrdefi)\s+(\S+)(.*)$")
_SEARCH = re.compile(r"^(\s*)search\b.*$")


def grub_cfg(
    source_cfg: str | None,
    args: BootArgs,
    *,
    title: str,
    kernel: str,
    initrd: str,
    timeout_s: int = 10,
) -> str:
    """A GRUB config derived from the ISO's: the same menu entries, but finding the
    stick by UUID, booting the kernel we copied, with the boot contract's arguments."""
    search = f"search --no-floppy --fs-uuid --set=root {args.uuid}"
    if not source_cfg or "menuentry" not in source_cfg:
        source_cfg = (
            f"set default=\"0\"\nset timeout={timeout_s}\nsearch\n"
            f"menuentry '{title}' {{\n\tlinux /x\n\tinitrd /x\n}}\n"
        )
    out = []
    for line in source_cfg.splitlines():
        if m := _SEARCH.match(line):
            out.append(m.group(1) + search)
        elif m := _LINUX.match(line):
            keep = [w for w in m.group(4).split() if w in ("rd.live.check", "nomodeset")]
            words = [args.line(), *keep]
            out.append(f"{m.group(1)}{m.group(2)} {kernel} {' '.join(words)}")
        elif m := _INITRD.match(line):
            out.append(f"{m.group(1)}{m.group(2)} {initrd}")
        elif line.strip().startswith("set timeout="):
            out.append(f"set timeout={timeout_s}")
        else:
            out.append(line)
    return "\n".join(out) + "\n"
