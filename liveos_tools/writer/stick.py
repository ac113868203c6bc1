"""The plan for one target: partition, filesystem, copy, boot loader, persistence.

`plan_stick()` checks everything it can before returning (refusals, space, the FAT
4 GiB limit, boot files present), so a refusal never changes the target. The
plan's steps carry their actions; `Plan.execute()` runs them in order and a
failing step is named in the error.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
import threading
import uuid as uuidlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from liveos_tools.errors import LiveOSError, NoSpaceError, TargetError, UsageError
from liveos_tools.plan import ByteRange, Plan
from liveos_tools.tools import mkfs_fat
from liveos_tools.units import MiB, format_size
from liveos_tools.writer import bootcfg, checkstick, copy
from liveos_tools.writer.dest import Dest, FatDest, MountedDest, mounted_range
from liveos_tools.writer.layout import Layout
from liveos_tools.writer.partition import Part, Partitioning, check_can_partition
from liveos_tools.writer.partition import locate as locate_partitions
from liveos_tools.writer.partition import plan as plan_partitions
from liveos_tools.writer.source import Source, SourceFile
from liveos_tools.writer.target import Target, TargetKind

FAT_MAX_FILE = 4 * 1024**3 - 1
RESERVE = 100 * MiB  # the reference tool stops if less would remain
FS_OVERHEAD = 0.03
FAT_LABEL_MAX = 11
EXT_LABEL_MAX = 16
FSTYPES = ("vfat", "ext4", "ext3", "ext2")
RESET_BYTES = 64 * 1024  # dracut's rd.live.overlay.reset zeroes this much


@dataclass
class WriteOptions:
    format: bool = False
    format_size: int | None = None
    fstype: str = "ext4"
    blocksize: int | None = None
    reset_mbr: bool = False
    efi: bool = False
    msdos_table: bool = False  # --msdos-table: msdos even with --efi
    noesp: bool = False
    noverify: bool = False
    skipcopy: bool = False
    force: bool = False
    label: str | None = None
    livedir: str = "LiveOS"
    skipcompress: bool = False
    overlay: bootcfg.Persistence | None = None  # None: decided from the layout
    overlay_size: int = 0
    reset_overlay: bool = False
    copy_overlay: bool = False
    home_size: int = 0
    home_fstype: str = "ext4"
    home_blocksize: int | None = None
    overlay_fstype: str | None = None  # for an OverlayFS overlay image on vfat
    overlay_blocksize: int | None = None
    copy_home: bool = False
    delete_home: bool = False
    encrypt_home: bool = True
    passphrase: bytes | None = None
    swap_size: int = 0
    extra_args: tuple[str, ...] = ()
    timeout: int | None = None  # None: the ISO's own
    nomenu: bool = False
    nobootmsg: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class StickFs:
    """The filesystem that will hold LiveOS."""

    device: str  # disk/image path or partition node
    offset: int
    length: int
    fstype: str
    label: str
    uuid: str  # as blkid prints it
    new: bool  # made by this plan


@dataclass(frozen=True)
class BootDisk:
    """Writing into an existing filesystem: the disk whose MBR boots it."""

    path: str  # the parent disk of a partition (/dev/sdb for /dev/sdb1), or the image file
    table: str | None  # "msdos", "gpt"; None: no table (the filesystem starts at byte 0)
    number: int | None  # the partition's number in that table
    flags: tuple[str, ...] = ()  # parted's: "boot" (msdos active), "legacy_boot" (GPT)
    mbr_blank: bool = False  # no boot code in its first 440 bytes


def clean_label(text: str | None, fstype: str) -> str:
    """Spaces cannot appear in an overlay name dracut matches: they become '_'."""
    raw = (text or "LIVE").strip().replace(" ", "_")
    limit = FAT_LABEL_MAX if fstype == "vfat" else EXT_LABEL_MAX
    return raw[:limit]


def new_uuid(fstype: str) -> tuple[str, str]:
    """(value for mkfs, UUID as blkid prints it)."""
    if fstype == "vfat":
        vid = secrets.token_hex(4).upper()
        return vid, f"{vid[:4]}-{vid[4:]}"
    u = str(uuidlib.uuid4())
    return u, u


@dataclass
class Sizes:
    image: int
    boot: int
    overlay: int
    home: int
    swap: int

    @property
    def total(self) -> int:
        return self.image + self.boot + self.overlay + self.home + self.swap


@dataclass
class StickResult:
    target: str
    uuid: str
    label: str
    overlay_name: str | None
    checksums: dict[str, str] = field(default_factory=dict)
    #: bytes of the live image this plan writes and reads back (for the overall progress)
    copy_bytes: int = 0


def _persistence(opts: WriteOptions, layout: Layout, keep: bool = False) -> bootcfg.Persistence:
    """`keep`: an overlay is copied from the source or kept on the target."""
    p = opts.overlay
    if p is None:
        p = bootcfg.Persistence.DM if opts.overlay_size or keep else bootcfg.Persistence.NONE
    if p is bootcfg.Persistence.DM and not layout.nested and not opts.skipcompress:
        opts.notes.append("the squashfs is flat: using OverlayFS persistence (FACTS: flat "
                          "images cannot take a device-mapper overlay)")
        p = bootcfg.Persistence.OVERLAYFS
    return p


def overlay_rel(livedir: str, label: str, uuid: str) -> str:
    return f"{livedir}/overlay-{label}-{uuid}"


def plan_stick(
    src: Source,
    layout: Layout,
    target: Target,
    opts: WriteOptions,
    *,
    existing_fs: StickFs | None = None,
    boot_disk: BootDisk | None = None,
    table_desc: list[str] | None = None,
) -> tuple[Plan, StickResult]:
    """Build the whole plan for one target. Raises before anything is written."""
    from liveos_tools.tools import syslinux

    plan = Plan("write a LiveOS stick", target.spec)
    ldir = opts.livedir
    pre_fs = None if opts.format else existing_fs
    pre_label = clean_label(opts.label or pre_fs.label, pre_fs.fstype) if pre_fs else ""
    existing_ov = None
    if pre_fs is not None:
        rel = f"{ldir}/overlay-{pre_label}-{pre_fs.uuid}"
        existing_ov = rel if fs_has(pre_fs, rel) else None
        if existing_ov and (opts.overlay_size or opts.copy_overlay):
            plan.destroys.append(f"the overlay {existing_ov} on {target.spec} and every change "
                                 "stored in it (a new one replaces it)")
    copy_ov = source_overlay(src, layout) if opts.copy_overlay else None
    if copy_ov is not None:
        check_same_base(src, layout, opts, pre_fs, plan)
    copy_home = source_home(src, layout) if opts.copy_home else None
    if opts.reset_overlay and copy_ov is None and not opts.overlay_size and existing_ov is None:
        raise UsageError(
            f"--reset-overlay: {target.spec} has no overlay of its own to reset",
            "make a new one with --overlay-size-mb N",
        )
    if opts.reset_overlay and (copy_ov is not None or opts.overlay_size):
        plan.notes.append("--reset-overlay: the overlay is new anyway")
    keep_ov = existing_ov is not None and copy_ov is None and not opts.overlay_size
    persistence = _persistence(opts, layout, keep=copy_ov is not None or keep_ov)
    ov_fs_used = persistence is bootcfg.Persistence.OVERLAYFS and (
        opts.fstype if opts.format else (existing_fs.fstype if existing_fs else "vfat")) == "vfat"
    if (opts.overlay_fstype or opts.overlay_blocksize) and not ov_fs_used:
        plan.notes.append(
            "--overlay-size-mb N,FSTYPE,BLKSZ: FSTYPE and BLKSZ apply only to an OverlayFS "
            "overlay image on vfat; a device-mapper overlay is a raw snapshot store (dracut "
            "uses 4 KiB chunks) and an OverlayFS directory uses the stick's filesystem: ignored")
    if opts.home_blocksize and opts.encrypt_home and (opts.home_size and not opts.copy_home):
        plan.notes.append("--home-size-mb N,FSTYPE,BLKSZ: BLKSZ is not applied inside an "
                          "encrypted home.img yet (the home.img library has no block size); "
                          "the filesystem gets mkfs's default")
    plan.notes[:0] = opts.notes
    fstype = opts.fstype if opts.format else (existing_fs.fstype if existing_fs else "vfat")
    if fstype not in FSTYPES:
        raise UsageError(f"unsupported filesystem {fstype!r}", f"use one of {', '.join(FSTYPES)}")
    if opts.format or boot_disk is None:
        gpt = opts.efi and not opts.msdos_table
    else:  # the existing table decides which boot code fits
        gpt = boot_disk.table == "gpt"
    mbr = syslinux.mbr_code(gpt)  # fails loudly now, not after the copy
    modules = syslinux.module_paths()

    # -- sizes, before anything else
    image_sf = src.get(layout.image)
    assert image_sf is not None
    kernel_sf, initrd_sf = src.get(layout.kernel), src.get(layout.initrd)
    assert kernel_sf is not None and initrd_sf is not None
    efi_sfs = [s for p in layout.efi_files if (s := src.get(p)) is not None]
    efiboot_sf = src.get(layout.efiboot) if layout.efiboot else None
    image_size = image_sf.size
    if opts.skipcompress and layout.image.endswith("squashfs.img"):
        # the rootfs.img inside is usually 3-4x the squashfs; its real size is read at copy time
        image_size = _nested_rootfs_size(image_sf.backing, image_sf.offset) or image_size * 4
    overlay_size = opts.overlay_size if persistence is bootcfg.Persistence.DM or (
        persistence is bootcfg.Persistence.OVERLAYFS and fstype == "vfat") else 0
    if copy_ov is not None:
        if opts.overlay_size and opts.overlay_size != copy_ov.size:
            plan.notes.append(f"--copy-overlay: the copy keeps the source overlay's size "
                              f"({format_size(copy_ov.size)}), not --overlay-size-mb; grow it "
                              "later with `liveos-overlay grow`")
        overlay_size = copy_ov.size
    home_size = opts.home_size
    home_exists = pre_fs is not None and bool(opts.home_size or copy_home) and fs_has(
        pre_fs, f"{ldir}/home.img")
    keep_home = home_exists and not opts.delete_home and copy_home is None
    if keep_home:
        home_size = 0  # kept: the reference tool keeps home.img unless --delete-home
    elif home_exists:
        plan.destroys.append(f"{ldir}/home.img on {target.spec} and every file in it "
                             "(--delete-home: a new one replaces it)")
    if copy_home is not None:
        if opts.home_size:
            plan.notes.append("--copy-home: the source's home.img is copied; "
                              "--home-size-mb is ignored")
        home_size = copy_home.size
        if home_exists and not opts.delete_home:
            from liveos_tools.tasks.home import ExistsError

            raise ExistsError(f"{target.spec} already has {ldir}/home.img",
                              "add --delete-home to replace it with the source's (its files "
                              "will be lost)")
    boot_bytes = 2 * (kernel_sf.size + initrd_sf.size) + sum(s.size for s in efi_sfs) + (
        efiboot_sf.size if efiboot_sf else 0) + 2 * MiB
    sizes = Sizes(image_size, boot_bytes, overlay_size, home_size, opts.swap_size)

    if fstype == "vfat":
        for what, n in (("the live image", image_size), ("the overlay", sizes.overlay),
                        ("home.img", sizes.home), ("swap.img", sizes.swap)):
            if n > FAT_MAX_FILE:
                raise NoSpaceError(
                    f"{what} would be {format_size(n)}: FAT cannot hold a file of 4 GiB or more",
                    "use smaller sizes (at most 4095 MiB), or --format with ext4",
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
        parts = plan_partitions(target, fstype, gpt=gpt, esp=_wants_esp(opts, fstype, gpt),
                                live_size=live_size)
        live = parts.live
        label = clean_label(opts.label or src.label, fstype)
        mkfs_id, uuid = new_uuid(fstype)
        fs = StickFs(live.device, live.offset, live.length, fstype, label, uuid, new=True)
        capacity = int(live.length * (1 - FS_OVERHEAD))
    else:
        if existing_fs is None:
            raise TargetError(
                f"{target.spec} holds no filesystem to write into",
                "add --format to partition and format it",
            )
        fs = existing_fs
        label = clean_label(opts.label or fs.label, fs.fstype)
        uuid, mkfs_id, capacity = fs.uuid, "", int(fs.length * (1 - FS_OVERHEAD))
    need = sizes.total + RESERVE
    if not opts.format:
        # An existing filesystem: its free space, plus what the files this plan replaces
        # hold now, in the order they are written (each old file goes just before its new one).
        ov_new = overlay_size if (copy_ov is not None or not keep_ov) else 0
        order = [] if opts.skipcopy else [(f"{ldir}/{Path(layout.image).name}", image_size)]
        order += [(f"syslinux/{n}", s.size) for n, s in (("vmlinuz", kernel_sf),
                                                          ("initrd.img", initrd_sf))]
        order += [(s.path.lstrip("/"), s.size) for s in efi_sfs]
        if efiboot_sf:
            order.append(("images/efiboot.img", efiboot_sf.size))
        if ov_new and persistence in (bootcfg.Persistence.DM, bootcfg.Persistence.OVERLAYFS):
            order.append((overlay_rel(ldir, label, fs.uuid), ov_new))
        if home_size:
            order.append((f"{ldir}/home.img", home_size))
        if sizes.swap:
            order.append((f"{ldir}/swap.img", sizes.swap))
        check_free_space(fs, target.spec, order, sizes)
    elif need > capacity:
        raise NoSpaceError(
            f"{target.spec} is too small: the stick needs {format_size(need)} (image "
            f"{format_size(sizes.image)}, overlay {format_size(sizes.overlay)}, home "
            f"{format_size(sizes.home)}, swap {format_size(sizes.swap)}, 100 MiB left free), "
            f"the filesystem holds {format_size(capacity)}",
            "use a bigger stick, or smaller --overlay-size-mb/--home-size-mb/--swap-size-mb",
        )
    if opts.format and table_desc:
        plan.destroys.extend(table_desc)
    elif opts.format:
        plan.destroys.append(f"everything on {target.spec} ({format_size(target.size)})")

    fw_disk, part_start = _firmware_view(target, fs, parts, boot_disk)
    args = bootcfg.BootArgs(
        uuid=uuid, fstype=fstype, livedir=opts.livedir, persistence=persistence,
        reset_overlay=False, source_args=layout.boot_args, extra=opts.extra_args,
    )
    result = StickResult(target.spec, uuid, label,
                         f"overlay-{label}-{uuid}" if overlay_size or persistence in (
                             bootcfg.Persistence.DM, bootcfg.Persistence.OVERLAYFS) else None)
    title = (src.label or "LiveOS").strip()
    sys_dir = "syslinux"
    # The ISO's own menus, rewritten for the stick (bootcfg.py; as livecd-iso-to-disk does).
    iso_grub = src.read_text(layout.grub_cfg) if layout.grub_cfg else None
    syslinux_text = bootcfg.syslinux_cfg(
        args, title=title, timeout_s=opts.timeout, menu=not opts.nomenu,
        bootmsg=not opts.nobootmsg, source_kernel=Path(layout.kernel).name, grub_source=iso_grub,
        source_cfg=src.read_text(layout.syslinux_cfg) if layout.syslinux_cfg else None,
    )
    grub_text = bootcfg.grub_cfg(
        iso_grub, args, title=title, kernel=f"/{sys_dir}/vmlinuz",
        initrd=f"/{sys_dir}/initrd.img", timeout_s=opts.timeout, table="gpt" if gpt else "msdos",
        source_kernel=Path(layout.kernel).name, menu=not opts.nomenu,
    )
    plan.notes.append(f"kernel arguments: {args.line()}")

    scratch_cm = tempfile.TemporaryDirectory(prefix="liveos-write-")
    state: dict[str, object] = {}

    # -- steps
    if parts is not None:
        if target.kind is TargetKind.IMAGE and not target.exists:
            size = target.size
            plan.add(f"create the disk image {target.path} ({format_size(size)}, sparse)",
                     lambda: _create_image(target.path, size), argv=("truncate", "-s", str(size),
                                                                     target.path))
        pp = parts
        plan.add(
            f"write a {'GPT' if gpt else 'msdos'} partition table ({format_size(pp.align)} "
            f"aligned): {pp.describe()}; read it back and check it is exactly that"
            + (", and that the kernel shows each partition node there"
               if target.kind is TargetKind.DISK else ""),
            lambda: _partition(target, pp),
            writes=[ByteRange(target.path, 0, pp.parts[0].start, "partition table")],
        )
        if pp.esp is not None:
            esp = pp.esp
            esp_argv = mkfs_fat.argv(esp.device, esp.offset, esp.length, label="EFI",
                                     volume_id=secrets.token_hex(4).upper(),
                                     hidden_sectors=esp.start // 512)
            plan.add(f"make vfat (label EFI) on the ESP, p{esp.number} {esp.where}"
                     f"{_through(esp)}", lambda: _run(esp_argv), argv=esp_argv)
        if fstype == "vfat":
            fat_argv = mkfs_fat.argv(fs.device, fs.offset, fs.length, label=label,
                                     volume_id=mkfs_id, hidden_sectors=pp.live.start // 512)
            plan.add(f"make vfat labelled {label}, UUID {uuid} on p{pp.live.number} "
                     f"{pp.live.where}{_through(pp.live)}", lambda: _run(fat_argv), argv=fat_argv)
        else:
            ext_argv = _ext_argv(fs, mkfs_id, opts.blocksize)
            plan.add(f"make {fstype} labelled {label}, UUID {uuid} on p{pp.live.number} "
                     f"{pp.live.where}{_through(pp.live)}", lambda: _run(ext_argv), argv=ext_argv)
    elif label != fs.label:
        plan.add(f"relabel {fs.label!r} as {label!r} (dracut cannot match a label with spaces)",
                 lambda: _relabel(fs, label))
    if opts.format:
        plan.add(f"write syslinux's {'gptmbr' if gpt else 'mbr'}.bin boot code to the MBR",
                 lambda: _write_mbr(target.path, mbr),
                 writes=[ByteRange(target.path, 0, len(mbr), "MBR boot code")])
    elif boot_disk is not None:
        _plan_boot_disk(plan, boot_disk, target, mbr, gpt, opts.reset_mbr)

    def dest() -> Dest:
        d = state.get("dest")
        assert d is not None
        return d  # type: ignore[return-value]

    def open_dest() -> None:
        scratch = Path(scratch_cm.__enter__())
        state["scratch"] = scratch
        if fstype == "vfat":
            state["dest"] = FatDest(fs.device, fs.offset, scratch)
        else:
            stack = contextlib.ExitStack()
            state["stack"] = stack
            length = fs.length if fs.offset else 0
            state["dest"] = stack.enter_context(mounted_range(fs.device, fs.offset, length,
                                                              fstype))

    plan.add(f"open the {fstype} filesystem" + (" (through mtools)" if fstype == "vfat" else
                                                 " (loop mount)"), open_dest)
    verify_on = not opts.noverify
    checks: list[tuple[Dest, str, copy.Checksum]] = []

    def record(d: Dest, rel: str, c: copy.Checksum | None) -> None:
        if c is not None:
            checks.append((d, rel, c))
            result.checksums[rel] = c.hexdigest()
    image_rel = f"{ldir}/{'rootfs.img' if opts.skipcompress else Path(layout.image).name}"

    def copy_image() -> None:
        d = dest()
        d.mkdir(ldir)
        if opts.skipcompress and layout.image.endswith("squashfs.img"):
            rootfs = _extract_rootfs(image_sf.backing, image_sf.offset, Path(str(state["scratch"])))
            from liveos_tools.writer.source import SourceFile

            sf = SourceFile(layout.image, rootfs.stat().st_size, str(rootfs), 0)
        else:
            sf = image_sf
        prog = copy.Progress(f"{target.spec}: {image_rel}", sf.size)
        bg = _Background(d, prog, d.begin_file(image_rel, sf, prog, checksum=verify_on))
        # The image's bytes go to clusters allocated for it alone: write them while the
        # next steps (boot files, configs, boot loader) go on through mtools.
        bg.start(f"copy {target.spec}")
        state["image"] = bg

    def wait_image() -> None:
        bg = state.pop("image", None)
        if isinstance(bg, _Background):
            record(bg.dest, image_rel, bg.wait())

    if not opts.skipcopy:
        result.copy_bytes = image_size * (1 if opts.noverify else 2)  # written, read back
        plan.add(f"copy {layout.image} to {image_rel} ({format_size(image_size)}), with "
                 "progress (its data is written while the next steps run)", copy_image)
    boot_files = [(kernel_sf, f"{sys_dir}/vmlinuz"), (initrd_sf, f"{sys_dir}/initrd.img")]
    boot_files += [(s, s.path.lstrip("/")) for s in efi_sfs if not s.path.lower().endswith(
        "grub.cfg")]
    if efiboot_sf:
        boot_files.append((efiboot_sf, "images/efiboot.img"))

    def copy_boot() -> None:
        d = dest()
        for sf, rel in boot_files:
            d.mkdir(str(Path(rel).parent))
            record(d, rel, copy.copy(sf, d, rel, checksum=verify_on))
        for mod in modules:
            d.write_bytes(f"{sys_dir}/{mod.name}", mod.read_bytes())
        if parts is not None and parts.esp is not None:
            # The ESP gets the EFI loaders and our grub.cfg (the reference tool left it empty).
            esp = FatDest(parts.esp.device, parts.esp.offset, Path(str(state["scratch"])))
            esp.mkdir("EFI/BOOT")
            for sf in efi_sfs:
                if not sf.path.lower().endswith("grub.cfg"):
                    rel = "EFI/BOOT/" + Path(sf.path).name
                    record(esp, rel, copy.copy(sf, esp, rel, checksum=verify_on))
            esp.write_bytes("EFI/BOOT/grub.cfg", grub_text.encode())

    plan.add("copy the kernel and initrd to /syslinux, EFI/BOOT, images/efiboot.img: "
             + ", ".join(rel for _, rel in boot_files), copy_boot)
    cfg_name = "syslinux.cfg" if fstype == "vfat" else "extlinux.conf"

    def write_configs() -> None:
        d = dest()
        d.write_bytes(f"{sys_dir}/{cfg_name}", syslinux_text.encode())
        d.mkdir("EFI/BOOT")
        d.write_bytes("EFI/BOOT/grub.cfg", grub_text.encode())

    plan.add(f"write /{sys_dir}/{cfg_name} and /EFI/BOOT/grub.cfg with: {args.line()}",
             write_configs)
    if result.overlay_name:
        ov_rel = f"{ldir}/{result.overlay_name}"

        def copy_overlay() -> None:
            assert copy_ov is not None
            d = dest()
            d.remove(ov_rel)
            record(d, ov_rel, copy.copy(copy_ov, d, ov_rel, checksum=verify_on))
            d.private(ov_rel)

        def make_overlay() -> None:
            d = dest()
            d.remove(ov_rel)
            if persistence is bootcfg.Persistence.OVERLAYFS and fstype != "vfat":
                d.mkdir(ov_rel)
                d.mkdir(f"{ldir}/ovlwork")
            elif persistence is bootcfg.Persistence.OVERLAYFS:
                _overlayfs_image(d, ov_rel, overlay_size, Path(str(state["scratch"])),
                                 opts.overlay_fstype or "ext4", opts.overlay_blocksize)
            else:
                d.write_zeros(ov_rel, overlay_size)
                d.private(ov_rel)

        what = ("an OverlayFS directory" if persistence is bootcfg.Persistence.OVERLAYFS and
                fstype != "vfat" else f"{format_size(overlay_size)}, preallocated")
        if copy_ov is not None:
            plan.add(f"copy the overlay {copy_ov.path} ({format_size(copy_ov.size)}) to "
                     f"{ov_rel}, the name dracut looks for on this stick", copy_overlay)
        elif keep_ov and opts.reset_overlay:
            plan.add(f"reset the overlay {ov_rel}: zero its first 64 KiB, as "
                     "rd.live.overlay.reset does", lambda: dest().zero_head(ov_rel, RESET_BYTES))
        elif keep_ov:
            plan.notes.append(f"the overlay {ov_rel} is kept as it is")
        else:
            plan.add(f"create the overlay {ov_rel} ({what})", make_overlay)
    if copy_home is not None:
        home_sf = copy_home

        def copy_home_img() -> None:
            _copy_home(dest(), f"{ldir}/home.img", home_sf, record, verify_on)
            dest().private(f"{ldir}/home.img")

        plan.add(f"copy {home_sf.path} ({format_size(home_sf.size)}) to {ldir}/home.img, "
                 "verified", copy_home_img)
    elif keep_home:
        plan.notes.append(f"{ldir}/home.img exists and is kept (--delete-home replaces it)")
    elif opts.home_size:
        plan.add(f"{'replace' if home_exists else 'create'} {ldir}/home.img "
                 f"({format_size(opts.home_size)}, "
                 f"{'LUKS' if opts.encrypt_home else 'plain'} {opts.home_fstype})",
                 lambda: _make_home(dest(), f"{ldir}/home.img", opts,
                                    Path(str(state["scratch"]))))
    if opts.swap_size:
        plan.add(f"create {ldir}/swap.img ({format_size(opts.swap_size)})",
                 lambda: _make_swap(dest(), f"{ldir}/swap.img", opts.swap_size,
                                    Path(str(state["scratch"]))))

    def install_loader() -> None:
        from liveos_tools.tools import syslinux as sl

        d = dest()
        if fstype == "vfat":
            # syslinux (mtools build) reads and writes the image through the page cache,
            # like mtools and our writes: no fsync is needed first.
            sl.install_fat(fs.device, fs.offset, f"/{sys_dir}")
        else:
            host = d.host_path(sys_dir)
            assert host is not None
            sl.install_ext(host)
            # extlinux takes hidden sectors from the device it is installed through: 0 for
            # a loop device over an image file. Written through that same device, whose
            # cache also holds the ext superblock in the same page.
            assert isinstance(d, MountedDest)
            _set_hidden(d.device, 0, part_start // 512)

    plan.add(f"install {'syslinux' if fstype == 'vfat' else 'extlinux'} into /{sys_dir}",
             install_loader)

    if not opts.skipcopy:
        plan.add(f"wait until {image_rel} is written", wait_image)

    def sync_and_verify() -> None:
        d = dest()
        d.sync()
        for cd in {id(c[0]): c[0] for c in checks if c[0] is not d}.values():
            cd.sync()

        def check(cd: Dest, rel: str, expected: copy.Checksum) -> None:
            prog = (copy.Progress(f"{target.spec}: verify {rel}", expected.size)
                    if rel == image_rel else None)
            copy.verify(cd, rel, expected, prog)
            if prog:
                prog.finish()

        # The image is read back while the small files are checked beside it.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="liveos-verify") as ex:
            for fut in [ex.submit(check, *c) for c in sorted(
                    checks, key=lambda c: c[1] != image_rel)]:
                fut.result()

    plan.add("fsync, then verify every copied file against its source checksum"
             if not opts.noverify else "fsync (--noverify: no verification)",
             sync_and_verify)

    expected = checkstick.Expected(
        fs.device, fs.offset, fstype, label, uuid, fw_disk, part_start,
        f"{ldir}/{result.overlay_name}" if result.overlay_name and persistence is not
        bootcfg.Persistence.OVERLAYFS_TEMP else None, f"{sys_dir}/ldlinux.sys",
        exact_hidden=fs.new or fstype != "vfat")
    plan.add(f"check the stick as the firmware and dracut see it: blkid -p on {fs.device}"
             + (f" at byte {fs.offset}" if fs.offset else "") + f" finds {fstype} "
             f"LABEL={label} UUID={uuid}"
             + (f", the overlay is {expected.overlay}" if expected.overlay else "")
             + f", the boot sector at sector {part_start // 512} of {fw_disk} loads "
             f"/{sys_dir}/ldlinux.sys", lambda: checkstick.check(expected, dest()))

    def close() -> None:
        bg = state.pop("image", None)
        if isinstance(bg, _Background):  # a later step failed: let the copy end first
            bg.thread.join()
        stack = state.pop("stack", None)
        if isinstance(stack, contextlib.ExitStack):
            stack.close()
        scratch_cm.cleanup()

    plan.add("release the stick", close)
    state["close"] = close
    return plan, result


@dataclass
class _Background:
    """A file's data being written in a thread."""

    dest: Dest
    progress: copy.Progress
    data: Callable[[], copy.Checksum | None]
    thread: threading.Thread = field(init=False)
    checksum: copy.Checksum | None = None
    error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.checksum = self.data()
        except BaseException as exc:  # handed to wait()
            self.error = exc

    def start(self, name: str) -> None:
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def wait(self) -> copy.Checksum | None:
        self.thread.join()
        if self.error is not None:
            raise self.error
        self.progress.finish()
        return self.checksum


def execute(plan: Plan, target: Target | None = None) -> None:
    """Run a stick's plan; a failure names its step and always releases mounts. A block
    device that is gone when a step fails (unplugged, detached) is said so, exit 4."""
    current = ["?"]

    def progress(i: int, n: int, summary: str) -> None:
        current[0] = f"step {i + 1}/{n} ({summary.split(':')[0][:70]})"

    try:
        plan.execute(progress)
    except LiveOSError as err:
        _cleanup(plan)
        _vanished(target, current[0], err.message)
        err.message = f"{current[0]} failed: {err.message}"
        raise
    except OSError as exc:
        _cleanup(plan)
        _vanished(target, current[0], str(exc))
        raise LiveOSError(f"{current[0]} failed: {exc}") from None


def _vanished(target: Target | None, step: str, why: str) -> None:
    if target is None or target.kind is TargetKind.IMAGE or target.disk is None:
        return
    try:
        size = int((Path("/sys/class/block") / target.disk / "size").read_text())
    except (OSError, ValueError):
        size = 0
    if size == 0 or not os.path.exists(target.path):
        raise TargetError(
            f"{target.spec} vanished during {step} ({why.splitlines()[0][:120]}): what is "
            "on it now is unknown and it will not boot",
            "plug it in again and write it again with --format",
        )


def _cleanup(plan: Plan) -> None:
    last = plan.steps[-1]
    if last.action is not None:
        with contextlib.suppress(Exception):
            last.action()


def _run(argv: list[str]) -> None:
    from liveos_tools.run import run

    run(argv)


def _create_image(path: str, size: int) -> None:
    """A new file, or an empty one (never one that holds anything)."""
    with open(path, "ab") as f:
        if f.tell():
            raise TargetError(f"{path} is no longer empty", "run again")
        f.truncate(size)


def _partition(target: Target, pp: Partitioning) -> None:
    from liveos_tools.tools import parted

    parted.write_table(target.path, pp.specs, pp.placed, gpt=pp.gpt)
    locate_partitions(target, pp)


def _firmware_view(target: Target, fs: StickFs, parts: Partitioning | None,
                   boot_disk: BootDisk | None) -> tuple[str, int]:  # fmt: skip
    """(the disk the firmware reads, the first byte of the LiveOS partition on it)."""
    if parts is not None:
        return target.path, parts.live.start
    if target.kind is TargetKind.PARTITION:
        assert target.disk is not None
        name = os.path.basename(os.path.realpath(target.path))
        start = int((Path("/sys/class/block") / name / "start").read_text()) * 512
        return f"/dev/{target.disk}", start
    return (boot_disk.path if boot_disk else target.path), fs.offset


def _set_hidden(device: str, offset: int, sector: int) -> None:
    """Set the VBR's hidden sectors (the partition's start) where it differs."""
    from liveos_tools.writer import bootsector

    fd = os.open(device, os.O_RDWR)
    try:
        vbr = os.pread(fd, 512, offset)
        if bootsector.hidden_sectors(vbr) != sector:
            os.pwrite(fd, bootsector.with_hidden(vbr, sector), offset)
            os.fsync(fd)
    finally:
        os.close(fd)


def _through(part: Part) -> str:
    return (f" (through {part.device})" if not part.offset
            else f" (at byte {part.offset} of {part.device})")


def _wants_esp(opts: WriteOptions, fstype: str, gpt: bool) -> bool:
    """GPT (--efi): an ESP unless --noesp. msdos: an ESP beside an ext* LIVE (FAT itself
    holds EFI/BOOT, so a vfat stick boots UEFI from p1), unless --noesp."""
    if opts.noesp:
        return False
    return gpt or fstype != "vfat"


def _ext_argv(fs: StickFs, uuid: str, blocksize: int | None) -> list[str]:
    bs = blocksize or 4096
    argv = [f"mkfs.{fs.fstype}", "-q", "-F", "-L", fs.label, "-U", uuid, "-b", str(bs)]
    # nodiscard: a discard punches holes in an image file, undoing the preallocation
    argv += ["-E", f"offset={fs.offset},nodiscard" if fs.offset else "nodiscard"]
    argv += [fs.device, str(fs.length // bs)]
    return argv


def _relabel(fs: StickFs, label: str) -> None:
    """fatlabel/e2label on a partition node; inside a disk image (an offset) mlabel, or
    e2label's `?offset=`. The label blkid then reads must be the one the overlay is named
    after, else dracut would not find the overlay: checked."""
    from liveos_tools.run import run
    from liveos_tools.tools import mtools

    if fs.fstype == "vfat" and fs.offset:
        mtools.label(fs.device, fs.offset, label)
    elif fs.fstype == "vfat":
        run(["fatlabel", fs.device, label])
    else:
        run(["e2label", f"{fs.device}?offset={fs.offset}" if fs.offset else fs.device, label])
    res = run(["blkid", "-p", "-O", str(fs.offset), "-o", "value", "-s", "LABEL", fs.device],
              check=False)  # fmt: skip
    got = res.stdout.strip()
    if got != label:
        raise TargetError(
            f"relabelling gave the label {got!r}, not {label!r}: the overlay would not be "
            "found by dracut (nothing else was written)",
            "give an upper-case label without spaces with --label",
        )


def _plan_boot_disk(plan: Plan, disk: BootDisk, target: Target, mbr: bytes, gpt: bool,
                    reset_mbr: bool) -> None:  # fmt: skip
    """Writing into an existing partition: the boot code of its disk (--reset-mbr) and
    the flag that code boots by (msdos: active; GPT: legacy_boot)."""
    if disk.table is None:
        if reset_mbr:
            plan.notes.append(f"--reset-mbr: {target.spec} has no partition table (its "
                              "filesystem starts at byte 0, where an MBR would go): no MBR "
                              "boot code written; the filesystem's own boot sector boots it")
        return
    if reset_mbr:
        plan.add(f"write syslinux's {'gptmbr' if gpt else 'mbr'}.bin boot code to the MBR of "
                 f"{disk.path}", lambda: _write_mbr(disk.path, mbr),
                 writes=[ByteRange(disk.path, 0, len(mbr), "MBR boot code")])
    elif disk.mbr_blank:
        plan.notes.append(f"{disk.path} has no MBR boot code: a BIOS will not boot it; add "
                          "--reset-mbr to write syslinux's")
    if disk.number is None:
        plan.notes.append(f"{target.spec} was not found in {disk.path}'s partition table: "
                          "its boot flag is left as it is")
    elif disk.table == "msdos" and "boot" not in disk.flags:
        if disk.number > 4:
            plan.notes.append(f"{target.spec} is a logical partition, which cannot be marked "
                              "active: the MBR code boots only a primary partition")
        else:
            n = disk.number
            plan.add(f"mark partition {n} of {disk.path} active (bootable), the others not: "
                     "the MBR code boots the active partition",
                     lambda: _set_active(disk.path, n),
                     writes=[ByteRange(disk.path, 446, 64, "the 4 partition entries' flags")])
    elif disk.table == "gpt" and "legacy_boot" not in disk.flags:
        plan.notes.append(f"partition {disk.number} of {disk.path} lacks the legacy_boot "
                          "attribute that gptmbr.bin boots by: set it with `parted "
                          f"{disk.path} set {disk.number} legacy_boot on`")


def _set_active(path: str, number: int) -> None:
    """msdos table: partition `number` (1-4) active (0x80), the other primaries not."""
    fd = os.open(path, os.O_RDWR)
    try:
        sector = bytearray(os.pread(fd, 512, 0))
        if sector[510:512] != b"\x55\xaa" or sector[446 + 16 * (number - 1) + 4] == 0:
            raise TargetError(f"{path}: partition {number} is not in its msdos table")
        for i in range(4):
            if sector[446 + 16 * i + 4]:  # a used entry
                sector[446 + 16 * i] = 0x80 if i == number - 1 else 0x00
        os.pwrite(fd, bytes(sector[446:510]), 446)
        os.fsync(fd)
    finally:
        os.close(fd)


def free_bytes(fs: StickFs) -> tuple[int, int]:
    """(free bytes, allocation unit) of an unmounted filesystem: FAT from its first FAT
    copy, ext* from its superblock (dumpe2fs -h)."""
    from liveos_tools.tools import mtools

    if fs.fstype == "vfat":
        geo = mtools.read_geometry(fs.device, fs.offset)
        bits = mtools.fat_bits(geo)
        count = mtools.cluster_count(geo)
        with open(fs.device, "rb") as f:
            f.seek(fs.offset + geo.reserved * geo.bytes_per_sector)
            fat = f.read(geo.fat_sectors * geo.bytes_per_sector)
        if bits == 12:
            entries = [(int.from_bytes(fat[c * 3 // 2: c * 3 // 2 + 2], "little")
                        >> (4 * (c & 1))) & 0xFFF for c in range(2, count + 2)]
        else:
            w = bits // 8
            mask = 0x0FFFFFFF if bits == 32 else 0xFFFF
            view = memoryview(fat[: w * (count + 2)]).cast("I" if bits == 32 else "H")
            entries = [v & mask for v in view[2:]]
        return sum(1 for e in entries if e == 0) * geo.cluster_bytes, geo.cluster_bytes
    from liveos_tools.tools import e2fs

    where = f"{fs.device}?offset={fs.offset}" if fs.offset else fs.device
    u = e2fs.usage(where)
    return u.free_blocks * u.block_size, u.block_size


def existing_bytes(fs: StickFs, rel: str) -> int:
    """What `rel` occupies on the unmounted filesystem now (0 when it is not there)."""
    from liveos_tools.tools import mtools

    if not fs_has(fs, rel):
        return 0
    if fs.fstype == "vfat":
        return mtools.allocated_bytes(fs.device, fs.offset, rel)
    return sum(n for _, n in ext_pieces(fs, rel)[1])


def check_free_space(fs: StickFs, spec: str, order: list[tuple[str, int]],
                     sizes: Sizes) -> None:  # fmt: skip
    """Writing into an existing filesystem: its files stay, so what counts is its free
    space plus what the replaced files free, with 100 MiB left at the end, as the reference
    tool demands. Checked step by step: no write may run out of space half-way."""
    free, unit = free_bytes(fs)
    left = lowest = free
    for rel, new in order:
        left += existing_bytes(fs, rel) - -(-new // unit) * unit
        lowest = min(lowest, left)
    if lowest < 0 or left < RESERVE:
        short = max(RESERVE - left, -lowest)
        raise NoSpaceError(
            f"{spec} has too little free space: it has {format_size(free)} free, the files "
            f"to write (image {format_size(sizes.image)}, overlay {format_size(sizes.overlay)}"
            f", home {format_size(sizes.home)}, swap {format_size(sizes.swap)}, boot files) "
            f"need {format_size(short)} more, counting what the files they replace free and "
            "100 MiB left free",
            "delete files from it, or use smaller --overlay-size-mb/--home-size-mb/"
            "--swap-size-mb (or --format it, which erases it)",
        )


def _write_mbr(path: str, code: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, code, 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def _nested_rootfs_size(backing: str, offset: int) -> int | None:
    from liveos_tools.run import run

    out = run(["unsquashfs", "-no-progress", "-o", str(offset), "-lls", "-d", "", backing,
               "LiveOS/rootfs.img"], check=False).stdout
    for line in out.splitlines():
        if line.rstrip().endswith("/LiveOS/rootfs.img"):
            parts = line.split()
            if len(parts) >= 3 and parts[2].isdigit():
                return int(parts[2])
    return None


def _extract_rootfs(backing: str, offset: int, scratch: Path) -> Path:
    from liveos_tools.run import run

    out = scratch / "unpacked"
    run(["unsquashfs", "-no-progress", "-o", str(offset), "-d", str(out), backing,
         "LiveOS/rootfs.img"])
    return out / "LiveOS" / "rootfs.img"


def _overlayfs_image(d: Dest, rel: str, size: int, scratch: Path, fstype: str = "ext4",
                     blocksize: int | None = None) -> None:  # fmt: skip
    """On vfat, OverlayFS persistence is a filesystem image (ext4 unless
    --overlay-size-mb N,FSTYPE,BLKSZ says otherwise) holding overlayfs/ and ovlwork/."""
    from liveos_tools.run import run

    tree = scratch / "ovl-tree"
    (tree / "overlayfs").mkdir(parents=True, exist_ok=True)
    (tree / "ovlwork").mkdir(exist_ok=True)
    img = scratch / "ovl.img"
    bs = ["-b", str(blocksize)] if blocksize else []
    run([f"mkfs.{fstype}", "-q", "-F", "-E", "nodiscard", *bs, "-d", str(tree), str(img),
         str(size // (blocksize or 1024))])
    _put_file(d, rel, img)
    img.unlink()


def _put_file(d: Dest, rel: str, host: Path) -> None:
    if isinstance(d, FatDest):
        d.remove(rel)
        d.write_file(rel, SourceFile(rel, host.stat().st_size, str(host), 0), None,
                     checksum=False)
    else:
        hp = d.host_path(rel)
        assert hp is not None
        import shutil

        shutil.copyfile(host, hp)


def _make_home(d: Dest, rel: str, opts: WriteOptions, scratch: Path) -> None:
    from liveos_tools.tasks import home

    if d.exists(rel) and not opts.delete_home:
        return  # kept: the reference tool keeps home.img unless --delete-home
    hp = d.host_path(rel)
    where = hp if hp is not None else scratch / "home.img"
    if hp is not None and hp.exists():
        hp.unlink()
    p = home.plan_create(where, size=opts.home_size, fstype=opts.home_fstype,
                         encrypt=opts.encrypt_home, passphrase=opts.passphrase,
                         delete_existing=True)
    p.execute()
    if opts.home_blocksize and not opts.encrypt_home:
        # home.plan_create has no block size: make the (still empty) filesystem again
        from liveos_tools.run import run

        run([f"mkfs.{opts.home_fstype}", "-q", "-F", "-E", "nodiscard", "-L", home.HOME_LABEL,
             "-b", str(opts.home_blocksize), str(where)])
    if hp is None:
        d.remove(rel)
        _put_file(d, rel, where)
        where.unlink()
    d.private(rel)


def fs_has(fs: StickFs, rel: str) -> bool:
    """Does the (unmounted) filesystem hold `rel`? mtools for FAT, debugfs for ext*."""
    from liveos_tools.run import run
    from liveos_tools.tools import mtools

    if fs.fstype == "vfat":
        return mtools.exists(fs.device, fs.offset, rel)
    where = f"{fs.device}?offset={fs.offset}" if fs.offset else fs.device
    res = run(["debugfs", "-R", f"stat /{rel.strip('/')}", where], check=False)
    return res.returncode == 0 and "Inode:" in res.stdout


def ext_pieces(fs: StickFs, rel: str) -> tuple[int, list[tuple[int, int]]]:
    """(size, absolute byte ranges in file order) of a file on an unmounted ext*
    filesystem, from debugfs's `stat` and `blocks` (read-only, no journal replay)."""
    import re
    import struct

    from liveos_tools.run import run

    where = f"{fs.device}?offset={fs.offset}" if fs.offset else fs.device
    stat_out = run(["debugfs", "-R", f"stat /{rel.strip('/')}", where]).stdout
    m = re.search(r"\bSize: (\d+)", stat_out)
    if m is None:
        raise TargetError(f"{rel}: debugfs shows no size for it")
    size = int(m.group(1))
    blocks = [int(b) for b in run(["debugfs", "-R", f"blocks /{rel.strip('/')}", where]
                                  ).stdout.split()]  # fmt: skip
    with open(fs.device, "rb") as f:
        f.seek(fs.offset + 1024 + 24)
        bs = 1024 << struct.unpack("<I", f.read(4))[0]
    pieces: list[tuple[int, int]] = []
    for b in blocks:
        off = fs.offset + b * bs
        if pieces and pieces[-1][0] + pieces[-1][1] == off:
            pieces[-1] = (pieces[-1][0], pieces[-1][1] + bs)
        else:
            pieces.append((off, bs))
    return size, pieces


def _stick_source(src: Source, what: str) -> None:
    from liveos_tools.writer.source import SourceKind

    if src.kind is SourceKind.ISO:
        raise UsageError(f"{what}: an ISO image has no {what.split('-')[-1]} to copy",
                         "give a stick as SOURCE: `live`, its device, or its mounted directory")


def source_overlay(src: Source, layout: Layout) -> SourceFile:
    """The source stick's overlay file (overlay-<LABEL>-<UUID> in its LiveOS directory)."""
    _stick_source(src, "--copy-overlay")
    prefix = f"/{layout.livedir}/overlay-".lower()
    found = sorted((p for p in src.files if p.lower().startswith(prefix)), key=str.lower)
    if len(found) > 1 and src.label:
        mine = [p for p in found if p.lower().startswith(f"{prefix}{src.label.lower()}-")]
        found = mine or found
    if not found:
        raise TargetError(f"--copy-overlay: {src.origin} has no overlay file in "
                          f"/{layout.livedir}", "drop --copy-overlay to make a new overlay")
    if len(found) > 1:
        raise TargetError(f"--copy-overlay: {src.origin} has several overlays: "
                          + ", ".join(found), "remove the stale ones first")
    return src.files[found[0]]


def source_home(src: Source, layout: Layout) -> SourceFile:
    _stick_source(src, "--copy-home")
    sf = src.get(f"/{layout.livedir}/home.img")
    if sf is None:
        raise TargetError(f"--copy-home: {src.origin} has no /{layout.livedir}/home.img",
                          "drop --copy-home, or make a new one with --home-size-mb N")
    from liveos_tools.tasks import home

    home.ensure_not_in_use(Path(sf.backing))
    return sf


def check_same_base(src: Source, layout: Layout, opts: WriteOptions, fs: StickFs | None,
                    plan: Plan) -> None:  # fmt: skip
    """An overlay only means something on top of the image it was made over."""
    if not opts.skipcopy:
        plan.notes.append("--copy-overlay: the overlay goes with the very image it was made "
                          f"over ({layout.image}, copied from the same source)")
        return
    image_sf = src.get(layout.image)
    assert image_sf is not None
    hint = "drop --skipcopy so the source's image is copied with its overlay"
    rel = f"{opts.livedir}/{Path(layout.image).name}"
    if fs is None:
        raise UsageError("--copy-overlay with --skipcopy needs a stick with an image", hint)
    from liveos_tools.tools import mtools

    if not fs_has(fs, rel):
        raise TargetError(f"--copy-overlay: the stick has no {rel} for the overlay", hint)
    mine: copy.Checksum | None = None
    if fs.fstype == "vfat":
        same_size = mtools.allocated_bytes(fs.device, fs.offset, rel) >= image_sf.size
        with tempfile.TemporaryDirectory(prefix="liveos-cmp-") as tmp:
            mine = FatDest(fs.device, fs.offset, Path(tmp)).checksum(rel, image_sf.size)
    else:
        size, pieces = ext_pieces(fs, rel)
        same_size = size == image_sf.size
        if same_size and sum(n for _, n in pieces) < size:
            raise UsageError(f"--copy-overlay: the stick's {rel} is sparse, so it cannot be "
                             "compared with the source's image here", hint)
        fd = os.open(fs.device, os.O_RDONLY)
        try:
            mine = copy.read_back(fd, pieces, size, rel) if same_size else None
        finally:
            os.close(fd)
    theirs = copy.checksum_of(copy.source_chunks(image_sf, None, None))
    same = same_size and mine is not None and mine.first_difference(theirs) is None
    if not same:
        raise UsageError(
            f"--copy-overlay: the stick's {rel} is not the image the source's overlay was "
            f"made over (checksums differ): the overlay would corrupt the root filesystem",
            hint,
        )
    plan.notes.append(f"--copy-overlay: the stick's {rel} has the same checksum as the "
                      f"source's {layout.image}")


def _copy_home(d: Dest, rel: str, sf: SourceFile,
               record: Callable[[Dest, str, copy.Checksum | None], None],
               verify_on: bool) -> None:  # fmt: skip
    """The home.img library copies into a mounted filesystem (temporary name, fsync,
    SHA-256, rename); on FAT the fast writer copies it and the final pass verifies it."""
    hp = d.host_path(rel)
    if hp is not None:
        from liveos_tools.tasks import home

        home.plan_copy(Path(sf.backing), hp, delete_existing=True).execute()
        return
    d.remove(rel)
    record(d, rel, copy.copy(sf, d, rel, checksum=verify_on))


def _make_swap(d: Dest, rel: str, size: int, scratch: Path) -> None:
    from liveos_tools.tasks import swap

    hp = d.host_path(rel)
    where = hp if hp is not None else scratch / "swap.img"
    p = swap.plan_create(where, size)
    p.execute()
    if hp is None:
        _put_file(d, rel, where)
        where.unlink()
    d.private(rel)


@contextlib.contextmanager
def nothing() -> Iterator[None]:
    yield
