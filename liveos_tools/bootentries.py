"""Point an existing stick's boot entries at an image slot, and add or drop a
"previous image" entry.

A stick's boot configs (syslinux.cfg / extlinux.conf for BIOS, grub.cfg for EFI)
boot `LiveOS/squashfs.img` with the overlay dracut finds by its default name. During
a refresh the entries are pointed at other files with dracut's own arguments
(docs/ARCHITECTURE.md F2; dmsquash-live-root.sh in dracut 059):

    rd.live.dir=LiveOS rd.live.squashimg=previous/squashfs.img
    rd.live.overlay=UUID=<uuid>:/LiveOS/previous/overlay-<LABEL>-<UUID>

dracut joins `/run/initramfs/live/<rd.live.dir>/<rd.live.squashimg>`, so a
sub-directory in rd.live.squashimg works, and rd.live.dir stays the LiveOS directory
so the live system still finds home.img and swap.img there.

The text functions are pure (the plan shows what will be written); `write_atomic`
replaces a config by writing a sibling, fsyncing it and renaming it over the old one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Protocol

from liveos_tools.errors import LiveOSError, TargetError

#: Where boot configs live on sticks (the writer's, livecd-iso-to-disk's, Fedora's ISOs).
CONFIG_PATHS = (
    "syslinux/syslinux.cfg",
    "syslinux/extlinux.conf",
    "extlinux/extlinux.conf",
    "boot/extlinux/extlinux.conf",
    "EFI/BOOT/grub.cfg",
    "EFI/BOOT/BOOT.conf",
    "EFI/fedora/grub.cfg",
    "boot/grub2/grub.cfg",
    "boot/grub/grub.cfg",
)
BEGIN = "# liveos-tools: previous image (begin)"
END = "# liveos-tools: previous image (end)"
PREVIOUS_TITLE = "Previous image (kept by liveos-overlay)"
NEW_SUFFIX = ".liveos-new"


class Slot(Enum):
    """Where an image and its overlay sit inside the LiveOS directory."""

    CURRENT = ""  # LiveOS/squashfs.img + LiveOS/overlay-<LABEL>-<UUID>: dracut's defaults
    NEXT = ".liveos-next"  # a new pair being put in place
    PREVIOUS = "previous"  # the image kept for going back


class Kind(Enum):
    SYSLINUX = "syslinux"
    GRUB = "grub"


@dataclass(frozen=True)
class Names:
    """What the arguments name: the LiveOS directory and the overlay's file name."""

    livedir: str
    overlay: str
    #: (slot value, kernel, initrd) for each slot booting its own kernel (after an
    #: update): absolute paths on the stick. Empty: kernel lines are left alone.
    kernels: tuple[tuple[str, str, str], ...] = ()

    def kernel_of(self, slot: Slot) -> tuple[str, str] | None:
        for value, kernel, initrd in self.kernels:
            if value == slot.value:
                return kernel, initrd
        return None

    def squashimg(self, slot: Slot) -> str:
        return f"{slot.value}/squashfs.img" if slot.value else "squashfs.img"

    def overlay_path(self, slot: Slot) -> str:
        sub = f"/{slot.value}" if slot.value else ""
        return f"/{self.livedir}{sub}/{self.overlay}"


class ConfigFile(Protocol):
    """A boot config not reachable as a path: one on the stick's EFI system partition,
    read and replaced through mtools (liveos_tools/espcfg.py)."""

    @property
    def name(self) -> str: ...

    def read_text(self) -> str: ...

    def replace_text(self, text: str) -> bool:
        """Replace the whole file atomically; False when it already holds `text`."""
        ...


#: a config on the mounted stick, or one elsewhere (the ESP)
Config = Path | ConfigFile


def kind_of(path: Path | str) -> Kind:
    name = Path(path).name.lower()
    return Kind.GRUB if name.endswith(("grub.cfg", "boot.conf")) else Kind.SYSLINUX


def find_configs(root: Path) -> list[Path]:
    """The boot configs on the stick whose entries boot a persistent LiveOS."""
    found = []
    for rel in CONFIG_PATHS:
        path = root / rel
        if path.is_file() and "rd.live.overlay=" in path.read_text(errors="replace"):
            found.append(path)
    return found


# --- arguments --------------------------------------------------------------------------


def _key(word: str) -> str:
    return word.partition("=")[0]


def slot_args(words: list[str], slot: Slot, names: Names) -> list[str]:
    """The kernel words pointed at `slot`: other words keep their order."""
    devspec = None
    for w in words:
        if _key(w) == "rd.live.overlay":
            devspec = w.partition("=")[2].partition(":")[0]
    if not devspec:
        raise TargetError(
            "a boot entry has no rd.live.overlay=: this stick has no persistent overlay entry",
            "write the stick with an overlay (liveos-iso-to-disk --overlay-size-mb)",
        )
    out: list[str] = []
    for w in words:
        key = _key(w)
        if key in ("rd.live.dir", "live_dir", "rd.live.squashimg"):
            continue
        if key == "rd.live.overlay":
            if slot is not Slot.CURRENT or names.livedir != "LiveOS":
                out.append(f"rd.live.dir={names.livedir}")
            if slot is Slot.CURRENT:
                out.append(f"rd.live.overlay={devspec}")
            else:
                out.append(f"rd.live.squashimg={names.squashimg(slot)}")
                out.append(f"rd.live.overlay={devspec}:{names.overlay_path(slot)}")
            continue
        out.append(w)
    return out


_APPEND = re.compile(r"^(\s*)(append|APPEND)(\s+)(.*)$")
_LINUX = re.compile(r"^(\s*)(linux|linuxefi|linux16)(\s+)(\S+)(\s+)(.*)$")
_SYS_KERNEL = re.compile(r"^(\s*)(kernel|KERNEL|linux|LINUX)(\s+)(\S+)(.*)$")
_GRUB_INITRD = re.compile(r"^(\s*)(initrd|initrdefi|initrd16)(\s+)(\S+)(.*)$")


def _with_initrd(words: list[str], initrd: str | None) -> list[str]:
    if initrd is None:
        return words
    return [f"initrd={initrd}" if w.lower().startswith("initrd=") else w for w in words]


def _point_line(line: str, kind: Kind, slot: Slot, names: Names) -> str:
    k = names.kernel_of(slot)
    if kind is Kind.SYSLINUX and (m := _APPEND.match(line)) and "rd.live.overlay=" in line:
        words = _with_initrd(slot_args(m.group(4).split(), slot, names), k[1] if k else None)
        return m.group(1) + m.group(2) + m.group(3) + " ".join(words)
    if kind is Kind.GRUB and (m := _LINUX.match(line)) and "rd.live.overlay=" in line:
        args = " ".join(slot_args(m.group(6).split(), slot, names))
        path = k[0] if k else m.group(4)
        return m.group(1) + m.group(2) + m.group(3) + path + m.group(5) + args
    if k and kind is Kind.SYSLINUX and (m := _SYS_KERNEL.match(line)):
        return m.group(1) + m.group(2) + m.group(3) + k[0] + m.group(5)
    if k and kind is Kind.GRUB and (m := _GRUB_INITRD.match(line)):
        return m.group(1) + m.group(2) + m.group(3) + k[1] + m.group(5)
    return line


def kernel_paths(config: Path, root: Path) -> tuple[str, str] | None:
    """The kernel and initrd the config's first entry boots, as absolute paths on the
    stick (syslinux takes paths relative to its config's directory)."""
    text = strip_previous(config.read_text(errors="replace"))
    kind = kind_of(config)
    kernel = initrd = None
    for line in text.splitlines():
        if kind is Kind.SYSLINUX:
            if kernel is None and (m := _SYS_KERNEL.match(line)):
                kernel = m.group(4)
            if initrd is None and (m := _APPEND.match(line)):
                initrd = next(
                    (w[7:] for w in m.group(4).split() if w.lower().startswith("initrd=")), None
                )
        else:
            if kernel is None and (m := _LINUX.match(line)):
                kernel = m.group(4)
            if initrd is None and (m := _GRUB_INITRD.match(line)):
                initrd = m.group(4)
    if kernel is None or initrd is None:
        return None
    base = "/" + str(config.parent.relative_to(root)).strip("/.")

    def absolute(p: str) -> str:
        return p if p.startswith("/") else f"{base.rstrip('/')}/{p}"

    return absolute(kernel), absolute(initrd)


def strip_previous(text: str) -> str:
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    inside = False
    for line in lines:
        if line.strip() == BEGIN:
            inside = True
            continue
        if line.strip() == END:
            inside = False
            continue
        if not inside:
            out.append(line)
    return "".join(out)


def _first_block(lines: list[str], kind: Kind) -> list[str]:
    """The first boot entry that passes rd.live.overlay=: its lines."""
    if kind is Kind.SYSLINUX:
        starts = [i for i, ln in enumerate(lines) if ln.strip().lower().startswith("label ")]
        for n, i in enumerate(starts):
            end = starts[n + 1] if n + 1 < len(starts) else len(lines)
            block = lines[i:end]
            if any("rd.live.overlay=" in ln for ln in block):
                while block and not block[-1].strip():
                    block = block[:-1]
                return block
        return []
    for i, ln in enumerate(lines):
        if ln.lstrip().startswith("menuentry "):
            depth, block = 0, []
            for ln2 in lines[i:]:
                block.append(ln2)
                depth += ln2.count("{") - ln2.count("}")
                if depth <= 0 and "}" in ln2:
                    break
            if any("rd.live.overlay=" in b for b in block):
                return block
    return []


def _previous_block(
    first: list[str], kind: Kind, names: Names, title: str, slot: Slot
) -> list[str]:
    out = []
    for line in first:
        body = line.rstrip("\n")
        if kind is Kind.SYSLINUX:
            low = body.strip().lower()
            if low.startswith("label "):
                body = body[: len(body) - len(body.lstrip())] + "label liveos-previous"
            elif low.startswith("menu label"):
                body = body[: len(body) - len(body.lstrip())] + f"menu label {title}"
            elif low.startswith("menu default"):
                continue
        elif body.lstrip().startswith("menuentry "):
            indent = body[: len(body) - len(body.lstrip())]
            rest = body.split("{", 1)
            body = f"{indent}menuentry '{title}' --id liveos-previous {{" + (
                rest[1] if len(rest) > 1 else ""
            )
        out.append(_point_line(body, kind, slot, names) + "\n")
    return out


def render(
    text: str,
    kind: Kind,
    names: Names,
    *,
    default: Slot,
    previous: Slot | None,
    title: str = PREVIOUS_TITLE,
) -> str:
    """`text` with its entries booting `default`, and a previous-image entry booting
    `previous` (None: no such entry). Pure; render(render(t, X), CURRENT, None) == t
    for a config this module has not changed by hand."""
    base = strip_previous(text)
    lines = [
        _point_line(ln.rstrip("\n"), kind, default, names) + ("\n" if ln.endswith("\n") else "")
        for ln in base.splitlines(keepends=True)
    ]
    if previous is None:
        return "".join(lines)
    first = _first_block(base.splitlines(keepends=True), kind)
    if not first:
        raise TargetError(
            "no boot entry with rd.live.overlay= to copy for the previous image",
            "this stick's boot config was changed by hand; add the entry yourself",
        )
    block = [BEGIN + "\n", *_previous_block(first, kind, names, title, previous), END + "\n"]
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    return "".join(lines + block)


def has_previous(text: str) -> bool:
    return BEGIN in text


def _slot_in(text: str) -> Slot:
    for slot in (Slot.NEXT, Slot.PREVIOUS):
        if f"rd.live.squashimg={slot.value}/" in text:
            return slot
    return Slot.CURRENT


def default_slot(text: str) -> Slot:
    """Which slot the config's ordinary entries boot now."""
    return _slot_in(strip_previous(text))


def previous_slot(text: str) -> Slot | None:
    """Which slot the previous-image entry boots, None if there is none."""
    if BEGIN not in text:
        return None
    return _slot_in(text.split(BEGIN, 1)[1].split(END, 1)[0])


# --- writing ----------------------------------------------------------------------------


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> bool:
    """Replace `path` with `text` (a sibling written, fsynced, renamed over it, the
    directory fsynced). Returns False when the file already holds exactly that."""
    try:
        if path.read_text() == text:
            return False
        tmp = path.with_name(path.name + NEW_SUFFIX)
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        raise LiveOSError(
            f"cannot write the boot config {path}: {exc.strerror}",
            "check that the stick is mounted read-write and not full",
        ) from None
    return True


def point_configs(
    configs: Sequence[Config], names: Names, *, default: Slot, previous: Slot | None
) -> list[Config]:
    """Point every config at `default` (+ a previous entry); return the ones changed."""
    changed: list[Config] = []
    for cfg in configs:
        text = cfg.read_text()
        new = render(text, kind_of(cfg.name), names, default=default, previous=previous)
        done = write_atomic(cfg, new) if isinstance(cfg, Path) else cfg.replace_text(new)
        if done:
            changed.append(cfg)
    return changed
