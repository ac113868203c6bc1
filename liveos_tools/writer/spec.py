"""The decision step: from the source, its layout, the target and the options, a frozen
StickSpec (persistence, sizes, filesystem, partitions, boot layout) or a refusal.

Nothing is written here. It reads the source and, when writing into an existing
filesystem, that filesystem (unmounted); everything the steps need is decided here, so
`--dry-run` shows exactly what runs.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from liveos_tools.errors import TargetError, UsageError
from liveos_tools.units import MiB, format_size
from liveos_tools.writer import bootcfg
from liveos_tools.writer.existing import (
    check_same_base,
    fs_has,
    home_notes,
    source_home,
    source_overlay,
)
from liveos_tools.writer.layout import Layout
from liveos_tools.writer.options import (
    FSTYPES,
    BootDisk,
    HomeAction,
    HomeSpec,
    OverlayAction,
    OverlaySpec,
    Sizes,
    StickFs,
    WriteOptions,
    clean_label,
    new_uuid,
    overlay_rel,
)
from liveos_tools.writer.partition import Partitioning, check_can_partition
from liveos_tools.writer.partition import plan as plan_partitions
from liveos_tools.writer.source import Source, SourceFile
from liveos_tools.writer.target import Target, TargetKind

SYS_DIR = "syslinux"


@dataclass(frozen=True)
class BootSpec:
    gpt: bool  # the disk's table: GPT (gptmbr.bin) or msdos (mbr.bin)
    mbr: bytes  # syslinux's MBR boot code
    modules: tuple[Path, ...]  # syslinux's .c32 modules
    files: tuple[tuple[SourceFile, str], ...]  # kernel, initrd, EFI files -> stick paths
    esp_files: tuple[SourceFile, ...]  # the EFI loaders the ESP gets
    cfg_name: str  # syslinux.cfg (FAT) or extlinux.conf (ext)
    syslinux_text: str
    grub_text: str
    args: str  # the kernel arguments, for the plan


@dataclass(frozen=True)
class ImageSpec:
    source: SourceFile
    rel: str  # LiveOS/squashfs.img, or LiveOS/rootfs.img with --skipcompress
    size: int  # on the stick (an estimate for an unpacked rootfs.img until copy time)
    unpack: bool  # --skipcompress: rootfs.img out of the squashfs


@dataclass(frozen=True)
class StickSpec:
    target: Target
    livedir: str
    fs: StickFs  # the filesystem that holds LiveOS (fs.new: made by this write)
    mkfs_id: str  # the UUID/volume id given to mkfs ("" for an existing filesystem)
    blocksize: int | None
    parts: Partitioning | None  # --format
    boot_disk: BootDisk | None  # writing into an existing filesystem
    relabel_from: str | None  # the existing label, when it must change
    image: ImageSpec | None  # None: --skipcopy
    boot: BootSpec
    overlay: OverlaySpec
    home: HomeSpec
    swap_size: int
    sizes: Sizes
    verify: bool
    algorithm: str  # --verify-hash
    reset_mbr: bool
    fw_disk: str  # what the firmware reads: the whole disk or image
    part_start: int  # the LiveOS partition's first byte on fw_disk
    notes: tuple[str, ...]
    destroys: tuple[str, ...]

    @property
    def fstype(self) -> str:
        return self.fs.fstype

    @property
    def checksum(self) -> str | None:
        """The checksum algorithm of the copies, None without verification."""
        return self.algorithm if self.verify else None

    @property
    def overlay_name(self) -> str | None:
        return os.path.basename(self.overlay.rel) if self.overlay.rel else None


def persistence_of(
    opts: WriteOptions, layout: Layout, notes: list[str], keep: bool = False
) -> bootcfg.Persistence:
    """`keep`: an overlay is copied from the source or kept on the target."""
    p = opts.overlay
    if p is None:
        p = bootcfg.Persistence.DM if opts.overlay_size or keep else bootcfg.Persistence.NONE
    if p is bootcfg.Persistence.DM and not layout.nested and not opts.skipcompress:
        notes.append(
            "the squashfs is flat: using OverlayFS persistence (dracut cannot put "
            "a device-mapper overlay on a flat image)"
        )
        p = bootcfg.Persistence.OVERLAYFS
    return p


def wants_esp(opts: WriteOptions, fstype: str, gpt: bool) -> bool:
    """GPT (--efi): an ESP unless --noesp. msdos: an ESP beside an ext* LIVE (FAT itself
    holds EFI/BOOT, so a vfat stick boots UEFI from p1), unless --noesp."""
    if opts.noesp:
        return False
    return gpt or fstype != "vfat"


def firmware_view(
    target: Target, fs: StickFs, parts: Partitioning | None, boot_disk: BootDisk | None
) -> tuple[str, int]:
    """(the disk the firmware reads, the first byte of the LiveOS partition on it)."""
    if parts is not None:
        return target.path, parts.live.start
    if target.kind is TargetKind.PARTITION:
        assert target.disk is not None
        name = os.path.basename(os.path.realpath(target.path))
        try:
            start = int((Path("/sys/class/block") / name / "start").read_text()) * 512
        except (OSError, ValueError):
            raise TargetError(f"{target.spec}: the kernel does not say where it starts") from None
        return f"/dev/{target.disk}", start
    return (boot_disk.path if boot_disk else target.path), fs.offset


def _nested_size(sf: SourceFile) -> int:
    from liveos_tools.writer.files import nested_rootfs_size

    # the rootfs.img inside is usually 3-4x the squashfs; its real size is read at copy time
    return nested_rootfs_size(sf.backing, sf.offset) or sf.size * 4


def decide(
    src: Source,
    layout: Layout,
    target: Target,
    opts: WriteOptions,
    *,
    existing_fs: StickFs | None = None,
    boot_disk: BootDisk | None = None,
    table_desc: list[str] | None = None,
) -> StickSpec:
    """Decide everything about one stick; raise a LiveOSError to refuse."""
    from liveos_tools.tools import syslinux

    notes: list[str] = []
    destroys: list[str] = []
    ldir = opts.livedir
    pre_fs = None if opts.format else existing_fs
    pre_label = clean_label(opts.label or pre_fs.label, pre_fs.fstype) if pre_fs else ""
    existing_ov = None
    if pre_fs is not None:
        rel = overlay_rel(ldir, pre_label, pre_fs.uuid)
        existing_ov = rel if fs_has(pre_fs, rel) else None
        if existing_ov and (opts.overlay_size or opts.copy_overlay):
            destroys.append(
                f"the overlay {existing_ov} on {target.spec} and every change "
                "stored in it (a new one replaces it)"
            )
    copy_ov = source_overlay(src, layout) if opts.copy_overlay else None
    if copy_ov is not None:
        notes.append(check_same_base(src, layout, opts, pre_fs))
    copy_home = source_home(src, layout) if opts.copy_home else None
    notes.extend(home_notes(src, layout, copy_home))
    if opts.reset_overlay and copy_ov is None and not opts.overlay_size and existing_ov is None:
        raise UsageError(
            f"--reset-overlay: {target.spec} has no overlay of its own to reset",
            "make a new one with --overlay-size-mb N",
        )
    if opts.reset_overlay and (copy_ov is not None or opts.overlay_size):
        notes.append("--reset-overlay: the overlay is new anyway")
    keep_ov = existing_ov is not None and copy_ov is None and not opts.overlay_size
    persistence = persistence_of(opts, layout, notes, keep=copy_ov is not None or keep_ov)
    fstype = opts.fstype if opts.format else (existing_fs.fstype if existing_fs else "vfat")
    ov_image = persistence is bootcfg.Persistence.OVERLAYFS and fstype == "vfat"
    if (opts.overlay_fstype or opts.overlay_blocksize) and not ov_image:
        notes.append(
            "--overlay-size-mb N,FSTYPE,BLKSZ: FSTYPE and BLKSZ apply only to an OverlayFS "
            "overlay image on vfat; a device-mapper overlay is a raw snapshot store (dracut "
            "uses 4 KiB chunks) and an OverlayFS directory uses the stick's filesystem: "
            "ignored"
        )
    if opts.home_blocksize and opts.encrypt_home and (opts.home_size and not opts.copy_home):
        notes.append(
            "--home-size-mb N,FSTYPE,BLKSZ: BLKSZ is not applied inside an "
            "encrypted home.img yet (the home.img library has no block size); "
            "the filesystem gets mkfs's default"
        )
    notes[:0] = opts.notes
    if fstype not in FSTYPES:
        raise UsageError(f"unsupported filesystem {fstype!r}", f"use one of {', '.join(FSTYPES)}")
    if opts.format or boot_disk is None:
        gpt = opts.efi and not opts.msdos_table
    else:  # the existing table decides which boot code fits
        gpt = boot_disk.table == "gpt"
    mbr = syslinux.mbr_code(gpt)  # fails loudly now, not after the copy
    modules = tuple(syslinux.module_paths())

    # -- what is copied, and the persistence files' sizes
    image_sf = src.get(layout.image)
    kernel_sf, initrd_sf = src.get(layout.kernel), src.get(layout.initrd)
    assert image_sf is not None and kernel_sf is not None and initrd_sf is not None
    efi_sfs = tuple(s for p in layout.efi_files if (s := src.get(p)) is not None)
    efiboot_sf = src.get(layout.efiboot) if layout.efiboot else None
    unpack = opts.skipcompress and layout.image.endswith("squashfs.img")
    image_size = _nested_size(image_sf) if unpack else image_sf.size
    image = (
        None
        if opts.skipcopy
        else ImageSpec(
            image_sf,
            f"{ldir}/{'rootfs.img' if opts.skipcompress else Path(layout.image).name}",
            image_size,
            unpack,
        )
    )
    overlay_size = (
        opts.overlay_size
        if persistence is bootcfg.Persistence.DM
        or (persistence is bootcfg.Persistence.OVERLAYFS and fstype == "vfat")
        else 0
    )
    if copy_ov is not None:
        if opts.overlay_size and opts.overlay_size != copy_ov.size:
            notes.append(
                f"--copy-overlay: the copy keeps the source overlay's size "
                f"({format_size(copy_ov.size)}), not --overlay-size-mb; grow it "
                "later with `liveos-overlay grow`"
            )
        overlay_size = copy_ov.size
    home = _home(opts, target, ldir, pre_fs, copy_home, notes, destroys)
    boot_bytes = (
        2 * (kernel_sf.size + initrd_sf.size)
        + sum(s.size for s in efi_sfs)
        + (efiboot_sf.size if efiboot_sf else 0)
        + 2 * MiB
    )
    sizes = Sizes(
        image_size,
        boot_bytes,
        overlay_size,
        home.size if home.action in (HomeAction.CREATE, HomeAction.REPLACE, HomeAction.COPY) else 0,
        opts.swap_size,
    )

    # -- the filesystem that holds LiveOS
    parts: Partitioning | None = None
    if opts.format:
        if target.kind is TargetKind.PARTITION:
            raise UsageError(
                f"--format needs the whole disk, and {target.spec} is a partition",
                "give the disk (e.g. /dev/sdb, not /dev/sdb1)",
            )
        check_can_partition(target)
        live_size = opts.format_size if target.exists and opts.format_size else None
        parts = plan_partitions(
            target, fstype, gpt=gpt, esp=wants_esp(opts, fstype, gpt), live_size=live_size
        )
        label = clean_label(opts.label or src.label, fstype)
        mkfs_id, uuid = new_uuid(fstype)
        fs = StickFs(
            parts.live.device, parts.live.offset, parts.live.length, fstype, label, uuid, new=True
        )
        destroys.extend(table_desc or [f"everything on {target.spec} ({format_size(target.size)})"])
    else:
        if existing_fs is None:
            raise TargetError(
                f"{target.spec} holds no filesystem to write into",
                "add --format to partition and format it",
            )
        fs = dataclasses.replace(
            existing_fs, label=clean_label(opts.label or existing_fs.label, existing_fs.fstype)
        )
        mkfs_id = ""

    # -- the overlay
    ov_rel = (
        overlay_rel(ldir, fs.label, fs.uuid)
        if overlay_size or persistence in (bootcfg.Persistence.DM, bootcfg.Persistence.OVERLAYFS)
        else None
    )
    if ov_rel is None:
        action = OverlayAction.NONE
    elif copy_ov is not None:
        action = OverlayAction.COPY
    elif keep_ov:
        action = OverlayAction.RESET if opts.reset_overlay else OverlayAction.KEEP
    else:
        action = OverlayAction.NEW
    overlay = OverlaySpec(
        persistence,
        action,
        ov_rel,
        overlay_size,
        copy_ov,
        opts.overlay_fstype or "ext4",
        opts.overlay_blocksize,
    )

    # -- the boot files and configs
    args = bootcfg.BootArgs(
        uuid=fs.uuid,
        fstype=fstype,
        livedir=ldir,
        persistence=persistence,
        reset_overlay=False,
        source_args=layout.boot_args,
        extra=opts.extra_args,
    )
    title = (src.label or "LiveOS").strip()
    # The ISO's own menus, rewritten for the stick (bootcfg.py; as livecd-iso-to-disk does).
    iso_grub = src.read_text(layout.grub_cfg) if layout.grub_cfg else None
    syslinux_text = bootcfg.syslinux_cfg(
        args,
        title=title,
        timeout_s=opts.timeout,
        menu=not opts.nomenu,
        bootmsg=not opts.nobootmsg,
        source_kernel=Path(layout.kernel).name,
        grub_source=iso_grub,
        source_cfg=src.read_text(layout.syslinux_cfg) if layout.syslinux_cfg else None,
    )
    grub_text = bootcfg.grub_cfg(
        iso_grub,
        args,
        title=title,
        kernel=f"/{SYS_DIR}/vmlinuz",
        initrd=f"/{SYS_DIR}/initrd.img",
        timeout_s=opts.timeout,
        table="gpt" if gpt else "msdos",
        source_kernel=Path(layout.kernel).name,
        menu=not opts.nomenu,
    )
    notes.append(f"kernel arguments: {args.line()}")
    files = [(kernel_sf, f"{SYS_DIR}/vmlinuz"), (initrd_sf, f"{SYS_DIR}/initrd.img")]
    files += [(s, s.path.lstrip("/")) for s in efi_sfs if not s.path.lower().endswith("grub.cfg")]
    if efiboot_sf:
        files.append((efiboot_sf, "images/efiboot.img"))
    boot = BootSpec(
        gpt,
        mbr,
        modules,
        tuple(files),
        tuple(s for s in efi_sfs if not s.path.lower().endswith("grub.cfg")),
        "syslinux.cfg" if fstype == "vfat" else "extlinux.conf",
        syslinux_text,
        grub_text,
        args.line(),
    )
    fw_disk, part_start = firmware_view(target, fs, parts, boot_disk)
    return StickSpec(
        target=target,
        livedir=ldir,
        fs=fs,
        mkfs_id=mkfs_id,
        blocksize=opts.blocksize,
        parts=parts,
        boot_disk=None if opts.format else boot_disk,
        relabel_from=existing_fs.label
        if (existing_fs and not opts.format and fs.label != existing_fs.label)
        else None,
        image=image,
        boot=boot,
        overlay=overlay,
        home=home,
        swap_size=opts.swap_size,
        sizes=sizes,
        verify=not opts.noverify,
        algorithm=opts.verify_hash,
        reset_mbr=opts.reset_mbr,
        fw_disk=fw_disk,
        part_start=part_start,
        notes=tuple(notes),
        destroys=tuple(destroys),
    )


def _home(
    opts: WriteOptions,
    target: Target,
    ldir: str,
    pre_fs: StickFs | None,
    copy_home: SourceFile | None,
    notes: list[str],
    destroys: list[str],
) -> HomeSpec:
    rel = f"{ldir}/home.img"
    exists = pre_fs is not None and bool(opts.home_size or copy_home) and fs_has(pre_fs, rel)
    if copy_home is not None:
        if opts.home_size:
            notes.append("--copy-home: the source's home.img is copied; --home-size-mb is ignored")
        if exists and not opts.delete_home:
            from liveos_tools.tasks.home import ExistsError

            raise ExistsError(
                f"{target.spec} already has {rel}",
                "add --delete-home to replace it with the source's (its files will be lost)",
            )
        if exists:
            destroys.append(
                f"{rel} on {target.spec} and every file in it (--delete-home: a "
                "new one replaces it)"
            )
        return HomeSpec(HomeAction.COPY, rel, copy_home.size, source=copy_home)
    if not opts.home_size:
        return HomeSpec(HomeAction.NONE, rel)
    if exists and not opts.delete_home:
        return HomeSpec(HomeAction.KEEP, rel)  # as the reference tool: kept unless asked
    from liveos_tools.tasks import home as home_lib

    # the home.img library's own minimum, refused now rather than after the copy
    minimum = home_lib.MIN_LUKS if opts.encrypt_home else home_lib.MIN_PLAIN
    if opts.home_size < minimum:
        raise UsageError(
            f"--home-size-mb: a{' LUKS' if opts.encrypt_home else ''} home.img "
            f"of {format_size(opts.home_size)} is too small",
            f"give at least {minimum // MiB} MiB",
        )
    if exists:
        destroys.append(
            f"{rel} on {target.spec} and every file in it (--delete-home: a new one replaces it)"
        )
    return HomeSpec(
        HomeAction.REPLACE if exists else HomeAction.CREATE,
        rel,
        opts.home_size,
        opts.home_fstype,
        opts.home_blocksize,
        opts.encrypt_home,
        opts.passphrase,
    )
