"""Kernel arguments of the boot contract (docs/ARCHITECTURE.md F2) and the boot loader configs.

Pure functions: the plan prints exactly the text that will be written.

The configs are the ISO's own, rewritten as livecd-iso-to-disk does (its `sed` pass over
isolinux.cfg and EFI/BOOT/grub.cfg): every menu entry the ISO offers (start, test this
media, basic graphics, rescue, boot from the local drive...) stays with its title and its
own words (quiet, nomodeset, rd.live.check...), and each one that boots the live kernel
gets the stick's arguments instead of the ISO's root=live:CDLABEL=. The ISO's timeout is
kept unless the user asks for another. Entries whose kernel is not copied to the stick
(memtest) are dropped: they could only fail. A source without a config of one kind
(a GRUB-only ISO has no isolinux.cfg) gets a menu made from the other's entries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from enum import Enum


class Persistence(Enum):
    DM = "dm-snapshot"  # overlay-<LABEL>-<UUID>, a preallocated snapshot store
    OVERLAYFS = "overlayfs"  # a directory (ext4) or an image file (vfat)
    OVERLAYFS_TEMP = "overlayfs-temp"  # OverlayFS in RAM: nothing kept
    NONE = "none"  # dracut's default: a temporary dm overlay in RAM


#: Words of a source's kernel command line that the writer replaces with its own.
OWN_ARGS = re.compile(
    r"^(root=|rootfstype=|initrd=|rd\.live\.|rd\.overlay|ro$|rw$|liveimg$|overlay=|"
    r"BOOT_IMAGE=|inst\.stage2=)"
)
#: ... except these, which say what an entry is for ("Test this media").
ENTRY_ARGS = frozenset({"rd.live.check"})


def entry_words(line: str) -> tuple[str, ...]:
    """The words of one menu entry's command line that it keeps on the stick."""
    return tuple(
        w for w in line.split() if (w in ENTRY_ARGS or not OWN_ARGS.match(w)) and "CDLABEL" not in w
    )


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
        for a in (*self.source_args, *self.extra):
            if a not in w:
                w.append(a)
        return w

    def line(self) -> str:
        return " ".join(self.words())

    def for_entry(self, source_line: str) -> str:
        """The command line of one of the ISO's entries: ours, then the entry's own words."""
        return replace(self, source_args=entry_words(source_line)).line()


def _is_live_kernel(path: str, kernel: str) -> bool:
    """Does a config's kernel path name the live kernel the writer copies?"""
    base = path.rsplit("/", 1)[-1].rsplit(")", 1)[-1]
    return base in (kernel.rsplit("/", 1)[-1], "linux") or base.startswith("vmlinuz")


# --- syslinux / extlinux ----------------------------------------------------------------

_SL_LABEL = re.compile(r"^\s*label\s+(\S+)", re.IGNORECASE)
_SL_BREAK = re.compile(r"^\s*(label\s|menu\s+(begin|end|separator)\b)", re.IGNORECASE)
_SL_KERNEL = re.compile(r"^(\s*)(kernel|linux)\s+(\S+)(.*)$", re.IGNORECASE)
_SL_APPEND = re.compile(r"^(\s*)append\b\s*(.*)$", re.IGNORECASE)
_SL_INITRD = re.compile(r"^(\s*)initrd\s+\S+", re.IGNORECASE)
_SL_TIMEOUT = re.compile(r"^\s*(total)?timeout\b", re.IGNORECASE)
_SL_DEFAULT = re.compile(r"^\s*default\b", re.IGNORECASE)
_SL_UI = re.compile(r"^\s*ui\b", re.IGNORECASE)
_SL_DISPLAY = re.compile(r"^\s*display\b", re.IGNORECASE)


def _sl_timeout(timeout_s: int) -> str:
    # syslinux counts tenths, and its 0 means "wait for ever": -1 is ours for that.
    if timeout_s < 0:
        return "timeout 0"
    return f"timeout {max(1, timeout_s * 10)}"


def _sl_blocks(text: str) -> list[list[str]]:
    """Lines in blocks: the header, then one block per label (up to the next label or
    menu begin/end/separator), with the lines between them as blocks of their own."""
    blocks: list[list[str]] = [[]]
    for line in text.splitlines():
        if _SL_BREAK.match(line):
            blocks.append([])
        blocks[-1].append(line)
        if not _SL_LABEL.match(line) and _SL_BREAK.match(line):
            blocks.append([])  # a menu line ends a label's block and starts nothing
    return [b for b in blocks if b]


def _sl_entry(
    block: list[str], args: BootArgs, kernel: str, initrd: str, source_kernel: str
) -> list[str] | None:
    """One label block rewritten for the stick; None drops it."""
    kernels = [m.group(3) for x in block if (m := _SL_KERNEL.match(x))]
    if any(
        not k.lower().endswith(".c32") and not _is_live_kernel(k, source_kernel) for k in kernels
    ):
        return None  # memtest and the like: not copied to the stick
    live = any(not k.lower().endswith(".c32") for k in kernels)
    out: list[str] = []
    for line in block:
        if (m := _SL_KERNEL.match(line)) and live:
            out.append(f"{m.group(1)}{m.group(2)} {kernel}{m.group(4)}")
        elif _SL_INITRD.match(line) and live:
            out.append(re.sub(r"^(\s*\S+\s+)\S+", rf"\g<1>{initrd}", line))
        elif (m := _SL_APPEND.match(line)) and live:
            out.append(f"{m.group(1)}append initrd={initrd} {args.for_entry(m.group(2))}")
        else:
            out.append(line)
    return out


def live_labels(source_cfg: str) -> list[str]:
    """The labels of a syslinux config whose entries boot a live image, in order."""
    labels: list[str] = []
    for block in _sl_blocks(source_cfg):
        m = _SL_LABEL.match(block[0])
        if m and any(_SL_APPEND.match(x) and "rd.live.image" in x for x in block):
            labels.append(m.group(1))
    return labels


def _sl_header(
    block: list[str], labels: list[str], timeout_s: int | None, menu: bool, bootmsg: bool
) -> list[str]:
    out: list[str] = []
    placed = timeout_s is None
    for line in block:
        if _SL_TIMEOUT.match(line) and timeout_s is not None:
            if not placed:  # the user's timeout, and no totaltimeout cutting it short
                out.append(_sl_timeout(timeout_s))
                placed = True
        elif (_SL_DISPLAY.match(line) and not bootmsg) or (_SL_UI.match(line) and not menu):
            continue
        elif _SL_DEFAULT.match(line) and not menu and labels:
            out.append(f"default {labels[0]}")  # no menu module: boot the first live entry
        else:
            out.append(line)
    if not placed:
        out.append(_sl_timeout(timeout_s or 0))
    return out


def rewrite_syslinux(
    source_cfg: str,
    args: BootArgs,
    *,
    kernel: str = "vmlinuz",
    initrd: str = "initrd.img",
    source_kernel: str = "vmlinuz",
    timeout_s: int | None = None,
    menu: bool = True,
    bootmsg: bool = True,
) -> str:
    """The ISO's isolinux.cfg for the stick (see the module docstring)."""
    labels = live_labels(source_cfg)
    out: list[str] = []
    for i, block in enumerate(_sl_blocks(source_cfg)):
        if i == 0 and not _SL_BREAK.match(block[0]):
            out += _sl_header(block, labels, timeout_s, menu, bootmsg)
        elif _SL_LABEL.match(block[0]):
            out += _sl_entry(block, args, kernel, initrd, source_kernel) or []
        else:
            out += block
    return "\n".join(out) + "\n"


def syslinux_cfg(
    args: BootArgs,
    *,
    title: str,
    kernel: str = "vmlinuz",
    initrd: str = "initrd.img",
    timeout_s: int | None = 10,
    menu: bool = True,
    bootmsg: bool = True,
    source_cfg: str | None = None,
    source_kernel: str = "vmlinuz",
    grub_source: str | None = None,
) -> str:
    """syslinux.cfg / extlinux.conf: the ISO's own menu rewritten when it has one
    (`source_cfg`: its isolinux.cfg), else a menu made from its GRUB entries
    (`grub_source`) or a plain one. timeout 0 boots at once; -1 waits for ever; None
    keeps the ISO's."""
    if source_cfg and live_labels(source_cfg):
        return rewrite_syslinux(
            source_cfg,
            args,
            kernel=kernel,
            initrd=initrd,
            source_kernel=source_kernel,
            timeout_s=timeout_s,
            menu=menu,
            bootmsg=bootmsg,
        )
    entries = grub_entries(grub_source, source_kernel) if grub_source else []
    if not entries:
        own = " ".join(args.source_args)
        entries = [
            (f"Start {title}", own),
            (f"Test this media & start {title}", f"{own} rd.live.check"),
        ]
    timeout = 10 if timeout_s is None else timeout_s
    lines = []
    if menu:
        lines += ["ui menu.c32", f"menu title {title}"]
    lines.append("default linux")
    if timeout < 0:
        lines.append("timeout 0")
    else:
        lines += [
            "prompt 0" if timeout == 0 or not menu else "prompt 1",
            f"timeout {max(1, timeout * 10)}",
        ]
    if not bootmsg:
        lines.append("# --nobootmsg: no boot message")
    for n, (entry_title, words) in enumerate(entries):
        lines += [
            "",
            f"label {'linux' if n == 0 else f'entry{n}'}",
            f"  menu label {entry_title}",
            f"  kernel {kernel}",
            f"  append initrd={initrd} {args.for_entry(words)}",
        ]
    lines += ["", "label local", "  menu label Boot from local drive", "  localboot 0xffff", ""]
    return "\n".join(lines)


# --- GRUB ---------------------------------------------------------------------------

_LINUX = re.compile(r"^(\s*)(linux|linuxefi|linux16)\s+(\S+)(.*)$")
_INITRD = re.compile(r"^(\s*)(initrd|initrdefi|initrd16)\s+(\S+)(.*)$")
_SEARCH = re.compile(r"^(\s*)search\b.*$")
_MENUENTRY = re.compile(r"^\s*menuentry\s+(['\"])(.*?)\1")
_INSMOD_PART = re.compile(r"^(\s*)insmod\s+part_(gpt|msdos)\s*$")
_INSMOD_FS = re.compile(r"^(\s*)insmod\s+(ext2|fat|xfs|f2fs|btrfs|iso9660)\s*$")
_TIMEOUT = re.compile(r"^(\s*)set\s+timeout=")
_DEFAULT = re.compile(r"^(\s*)set\s+default=")
GRUB_FS = {
    "vfat": "fat",
    "msdos": "fat",
    "ext2": "ext2",
    "ext3": "ext2",
    "ext4": "ext2",
    "btrfs": "btrfs",
    "xfs": "xfs",
    "f2fs": "f2fs",
}


def grub_entries(source_cfg: str, source_kernel: str = "vmlinuz") -> list[tuple[str, str]]:
    """(title, kernel command line) of each GRUB menu entry that boots the live kernel,
    submenus flattened, in order."""
    found: list[tuple[str, str]] = []
    title: str | None = None
    for line in source_cfg.splitlines():
        if m := _MENUENTRY.match(line):
            title = m.group(2)
        elif (m := _LINUX.match(line)) and title is not None:
            if _is_live_kernel(m.group(3), source_kernel):
                found.append((title, m.group(4).strip()))
            title = None
    return found


def _brace_delta(line: str) -> int:
    code = line.split("#", 1)[0]
    return code.count("{") - code.count("}")


def grub_cfg(
    source_cfg: str | None,
    args: BootArgs,
    *,
    title: str,
    kernel: str,
    initrd: str,
    timeout_s: int | None = 10,
    table: str | None = None,
    source_kernel: str = "vmlinuz",
    menu: bool = True,
) -> str:
    """A GRUB config derived from the ISO's: the same menu entries, finding the stick by
    UUID (with the modules for its partition table `table`, gpt or msdos, and its
    filesystem), booting the kernel we copied with the boot contract's arguments."""
    if not source_cfg or "menuentry" not in source_cfg:
        source_cfg = (
            f'set default="0"\nset timeout={10 if timeout_s is None else timeout_s}\n'
            f"search\nmenuentry '{title}' {{\n\tlinux /vmlinuz {' '.join(args.source_args)}\n"
            "\tinitrd /initrd.img\n}\n"
        )
    search = f"search --no-floppy --fs-uuid --set=root {args.uuid}"
    fs_mod = GRUB_FS.get(args.fstype, args.fstype)
    has_part = any(_INSMOD_PART.match(x) for x in source_cfg.splitlines())
    has_fs = any(_INSMOD_FS.match(x) for x in source_cfg.splitlines())
    out: list[str] = []
    entry: list[str] | None = None  # the menuentry being read, until its closing brace
    depth = 0
    keep = True
    for line in source_cfg.splitlines():
        if entry is None and _MENUENTRY.match(line):
            entry, depth, keep = [], 0, True
        target = entry if entry is not None else out
        if m := _SEARCH.match(line):
            if table and not has_part:
                target.append(f"{m.group(1)}insmod part_{table}")
            if not has_fs:
                target.append(f"{m.group(1)}insmod {fs_mod}")
            has_part = has_fs = True  # once, before the first search
            target.append(m.group(1) + search)
        elif m := _INSMOD_PART.match(line):
            target.append(f"{m.group(1)}insmod part_{table}" if table else line)
        elif m := _INSMOD_FS.match(line):
            target.append(f"{m.group(1)}insmod {fs_mod}")
        elif m := _LINUX.match(line):
            if _is_live_kernel(m.group(3), source_kernel):
                target.append(f"{m.group(1)}{m.group(2)} {kernel} {args.for_entry(m.group(4))}")
            else:
                keep = False  # memtest and the like: not copied to the stick
        elif m := _INITRD.match(line):
            target.append(f"{m.group(1)}{m.group(2)} {initrd}")
        elif (m := _TIMEOUT.match(line)) and timeout_s is not None:
            target.append(f"{m.group(1)}set timeout={timeout_s}")
        elif (m := _DEFAULT.match(line)) and not menu:
            target.append(f'{m.group(1)}set default="0"')
        else:
            target.append(line)
        if entry is not None:
            depth += _brace_delta(line)
            if depth <= 0:
                if keep:
                    out += entry
                entry = None
    if entry is not None and keep:
        out += entry
    if not menu:
        out.insert(0, "set timeout_style=hidden")
    return "\n".join(out) + "\n"
