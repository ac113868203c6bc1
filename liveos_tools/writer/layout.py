"""Which LiveOS layout a source has, and where its pieces are.

classic: isolinux/ + EFI/BOOT + nested squashfs (Fedora up to 36).
grub:    GRUB only (Fedora 37+): kernel in images/pxeboot/ or boot/<arch>/loader/.
flat:    squashfs.img holds the root tree: only OverlayFS persistence works.
uncompressed: LiveOS/rootfs.img on the source (a --skipcompress stick).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from liveos_tools.errors import TargetError
from liveos_tools.writer.bootcfg import OWN_ARGS
from liveos_tools.writer.source import Source

KERNEL_CANDIDATES = (
    ("/isolinux/vmlinuz", "/isolinux/initrd.img"),
    ("/isolinux/vmlinuz0", "/isolinux/initrd0.img"),
    ("/syslinux/vmlinuz", "/syslinux/initrd.img"),
    ("/images/pxeboot/vmlinuz", "/images/pxeboot/initrd.img"),
)
LOADER_RE = re.compile(r"^/boot/([^/]+)/loader/linux$", re.IGNORECASE)
GRUB_CFGS = ("/EFI/BOOT/grub.cfg", "/boot/grub2/grub.cfg", "/boot/grub/grub.cfg")
SYSLINUX_CFGS = ("/isolinux/isolinux.cfg", "/syslinux/syslinux.cfg", "/syslinux/extlinux.conf")


class LayoutKind(Enum):
    CLASSIC = "classic"
    GRUB = "grub"
    FLAT = "flat"
    UNCOMPRESSED = "uncompressed"


@dataclass(frozen=True)
class Layout:
    kind: LayoutKind
    livedir: str  # the directory on the source: LiveOS
    image: str  # /LiveOS/squashfs.img or /LiveOS/rootfs.img
    nested: bool  # squashfs.img holds LiveOS/rootfs.img (dm overlays possible)
    kernel: str
    initrd: str
    syslinux_cfg: str | None
    grub_cfg: str | None
    efi_files: tuple[str, ...]  # /EFI/BOOT/... files
    efiboot: str | None
    boot_args: tuple[str, ...]  # the source's own extra kernel arguments (quiet, rhgb...)


def find_kernel(src: Source) -> tuple[str, str]:
    for kernel, initrd in KERNEL_CANDIDATES:
        k, i = src.get(kernel), src.get(initrd)
        if k is not None and i is not None:
            return k.path, i.path
    for name in sorted(src.files):
        m = LOADER_RE.match(name)
        if m:
            found = src.get(name[: -len("linux")] + "initrd")
            if found is not None:
                return name, found.path
    raise TargetError(
        f"{src.origin}: no kernel found (looked in isolinux/, images/pxeboot/, "
        "boot/<arch>/loader/, syslinux/)",
        "is this a LiveOS image? An installer ISO cannot be written as a live stick",
    )


def extra_args_of(line: str) -> tuple[str, ...]:
    """The words of a kernel command line the writer keeps (quiet, rhgb, ...)."""
    return tuple(w for w in line.split() if not OWN_ARGS.match(w) and "CDLABEL" not in w)


def source_boot_args(
    src: Source, syslinux_cfg: str | None, grub_cfg: str | None
) -> tuple[str, ...]:
    if syslinux_cfg:
        for line in src.read_text(syslinux_cfg).splitlines():
            words = line.strip().split(None, 1)
            if len(words) == 2 and words[0].lower() == "append":
                return extra_args_of(words[1])
    if grub_cfg:
        for line in src.read_text(grub_cfg).splitlines():
            words = line.strip().split(None, 2)
            if len(words) >= 2 and words[0] in ("linux", "linuxefi"):
                return extra_args_of(words[2] if len(words) == 3 else "")
    return ()


def detect(src: Source, squash_holds_nested: bool | None = None) -> Layout:
    """Find the layout. `squash_holds_nested` answers "is LiveOS/rootfs.img inside the
    squashfs?" (None: ask unsquashfs)."""
    livedir = "LiveOS"
    squash = src.get(f"/{livedir}/squashfs.img")
    rootfs = src.get(f"/{livedir}/rootfs.img") or src.get(f"/{livedir}/ext3fs.img")
    if squash is None and rootfs is None:
        raise TargetError(
            f"{src.origin}: no LiveOS/squashfs.img or LiveOS/rootfs.img",
            "is this a LiveOS image? Installer-only ISOs cannot be written as a live stick",
        )
    kernel, initrd = find_kernel(src)
    syslinux_cfg = next((c for c in SYSLINUX_CFGS if src.get(c)), None)
    grub_cfg = next((c for c in GRUB_CFGS if src.get(c)), None)
    efi = tuple(sorted(p for p in src.files if p.upper().startswith("/EFI/BOOT/")))
    efiboot = src.get("/images/efiboot.img")
    if rootfs is not None:
        kind, image, nested = LayoutKind.UNCOMPRESSED, rootfs.path, True
    else:
        assert squash is not None
        if squash_holds_nested is None:
            squash_holds_nested = squashfs_is_nested(squash.backing, squash.offset)
        nested = squash_holds_nested
        image = squash.path
        if not nested:
            kind = LayoutKind.FLAT
        elif syslinux_cfg and syslinux_cfg.lower().startswith("/isolinux/"):
            kind = LayoutKind.CLASSIC
        else:
            kind = LayoutKind.GRUB
    return Layout(
        kind=kind,
        livedir=livedir,
        image=image,
        nested=nested,
        kernel=kernel,
        initrd=initrd,
        syslinux_cfg=syslinux_cfg,
        grub_cfg=grub_cfg,
        efi_files=efi,
        efiboot=efiboot.path if efiboot else None,
        boot_args=source_boot_args(src, syslinux_cfg, grub_cfg),
    )


def squashfs_is_nested(backing: str, offset: int) -> bool:
    """Does the squashfs at `offset` of `backing` hold LiveOS/rootfs.img (or ext3fs.img)?"""
    from liveos_tools.tools.squashfs import NESTED_NAMES, find_paths

    return bool(find_paths(backing, NESTED_NAMES, offset=offset))
