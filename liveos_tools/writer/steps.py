"""The step builder: a StickSpec becomes the Plan that --dry-run shows and that runs.

A run's state (the scratch directory, the open filesystem, the live image being written
in the background, the checksums to verify) lives in one StickRun; each step is one of
its methods, so the plan shown is the plan that runs.
"""

from __future__ import annotations

import contextlib
import secrets
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from liveos_tools.plan import ByteRange, Plan
from liveos_tools.tools import mkfs, mkfs_fat
from liveos_tools.units import format_size
from liveos_tools.writer import bootcfg, checkstick, copy, files
from liveos_tools.writer.dest import Dest, FatDest, MountedDest, mounted_range, verify
from liveos_tools.writer.options import (
    RESET_BYTES,
    BootDisk,
    HomeAction,
    OverlayAction,
    StickResult,
)
from liveos_tools.writer.partition import Part
from liveos_tools.writer.partition import locate as locate_partitions
from liveos_tools.writer.source import SourceFile
from liveos_tools.writer.spec import SYS_DIR, StickSpec
from liveos_tools.writer.target import TargetKind


class StickRun:
    """Everything one stick's write holds while it runs."""

    def __init__(self, spec: StickSpec) -> None:
        self.spec = spec
        self.result = StickResult(spec.target.spec, spec.fs.uuid, spec.fs.label, spec.overlay_name)
        self._scratch: tempfile.TemporaryDirectory[str] | None = None
        self._stack = contextlib.ExitStack()
        self._dest: Dest | None = None
        # the live image's data is written in this thread while mtools goes on with the rest
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="liveos-copy")
        self._image: Future[copy.Checksum | None] | None = None
        self._image_progress: copy.Progress | None = None
        self.checks: list[tuple[Dest, str, copy.Checksum]] = []
        #: the run's overall progress (tasks.write sets it when several sticks are written)
        self.board: copy.Board | None = None

    @property
    def dest(self) -> Dest:
        assert self._dest is not None, "the filesystem is not open"
        return self._dest

    @property
    def scratch(self) -> Path:
        assert self._scratch is not None
        return Path(self._scratch.name)

    def record(self, d: Dest, rel: str, c: copy.Checksum | None) -> None:
        if c is not None:
            self.checks.append((d, rel, c))
            self.result.checksums[rel] = c.hexdigest()

    # -- the disk
    def partition(self) -> None:
        from liveos_tools.tools import parted

        pp, target = self.spec.parts, self.spec.target
        assert pp is not None
        if target.kind is TargetKind.IMAGE and not target.exists and not pp.gpt:
            # an image this run made: its table is one sector (libparted took 30-80 ms)
            parted.write_msdos_image(target.path, pp.specs, pp.placed)
        else:
            parted.write_table(target.path, pp.specs, pp.placed, gpt=pp.gpt)
        locate_partitions(self.spec.target, pp)

    # -- the filesystem
    def open(self) -> None:
        spec = self.spec
        self._scratch = tempfile.TemporaryDirectory(prefix="liveos-write-")
        fs = spec.fs
        if fs.fstype == "vfat":
            self._dest = FatDest(fs.device, fs.offset, self.scratch, fresh=fs.new)
        else:
            length = fs.length if fs.offset else 0
            self._dest = self._stack.enter_context(
                mounted_range(fs.device, fs.offset, length, fs.fstype)
            )

    def start_image(self) -> None:
        image = self.spec.image
        assert image is not None
        d = self.dest
        # the boot files' directories too: one mmd on FAT, while nothing runs beside it
        d.mkdir(self.spec.livedir, *self._boot_dirs())
        sf = image.source
        if image.unpack:
            rootfs = files.extract_rootfs(sf.backing, sf.offset, self.scratch)
            sf = SourceFile(sf.path, rootfs.stat().st_size, str(rootfs), 0)
        prog = copy.Progress(f"{self.spec.target.spec}: {image.rel}", sf.size, board=self.board)
        data = d.begin_file(image.rel, sf, prog, checksum=self.spec.checksum)
        self._image_progress = prog
        self._image = self._pool.submit(data)

    def wait_image(self) -> None:
        fut, self._image = self._image, None
        if fut is not None:
            image = self.spec.image
            assert image is not None and self._image_progress is not None
            checksum = fut.result()
            self._image_progress.finish()
            self.record(self.dest, image.rel, checksum)

    def _boot_dirs(self) -> list[str]:
        return [str(Path(rel).parent) for _, rel in self.spec.boot.files] + ["EFI/BOOT"]

    def copy_boot(self) -> None:
        spec, d = self.spec, self.dest
        d.mkdir(*self._boot_dirs())
        for sf, rel in spec.boot.files:
            self.record(d, rel, d.write_file(rel, sf, None, checksum=spec.checksum))
        d.copy_host_files(SYS_DIR, list(spec.boot.modules))  # one mcopy for them all
        esp = spec.parts.esp if spec.parts else None
        if esp is not None:
            # The ESP gets the EFI loaders and our grub.cfg (the reference tool left it empty).
            fat = FatDest(esp.device, esp.offset, self.scratch, fresh=True)  # made by this run
            fat.mkdir("EFI/BOOT")
            for sf in spec.boot.esp_files:
                rel = "EFI/BOOT/" + Path(sf.path).name
                self.record(fat, rel, fat.write_file(rel, sf, None, checksum=spec.checksum))
            fat.write_bytes("EFI/BOOT/grub.cfg", spec.boot.grub_text.encode())

    def write_configs(self) -> None:
        d, boot = self.dest, self.spec.boot
        d.write_bytes(f"{SYS_DIR}/{boot.cfg_name}", boot.syslinux_text.encode())
        d.mkdir("EFI/BOOT")
        d.write_bytes("EFI/BOOT/grub.cfg", boot.grub_text.encode())

    def overlay(self) -> None:
        ov, d = self.spec.overlay, self.dest
        assert ov.rel is not None
        if ov.action is OverlayAction.RESET:
            d.zero_head(ov.rel, RESET_BYTES)
            return
        d.remove(ov.rel)
        if ov.action is OverlayAction.COPY:
            assert ov.source is not None
            self.record(
                d, ov.rel, d.write_file(ov.rel, ov.source, None, checksum=self.spec.checksum)
            )
            d.private(ov.rel)
        elif ov.persistence is bootcfg.Persistence.OVERLAYFS and d.fstype != "vfat":
            d.mkdir(ov.rel)  # its mode becomes the live root's: not made private
            d.mkdir(f"{self.spec.livedir}/ovlwork")
        elif ov.persistence is bootcfg.Persistence.OVERLAYFS:
            files.overlayfs_image(d, ov.rel, ov.size, self.scratch, ov.fstype, ov.blocksize)
        else:
            d.write_zeros(ov.rel, ov.size)
            d.private(ov.rel)

    def home(self) -> None:
        home, d = self.spec.home, self.dest
        if home.action is HomeAction.COPY:
            assert home.source is not None
            prog = copy.Progress(
                f"{self.spec.target.spec}: {home.rel}", home.source.size, board=self.board
            )
            files.copy_home(d, home.rel, home.source, self.record, self.spec.checksum, prog)
            prog.finish()
            d.private(home.rel)
        else:
            files.make_home(d, home, self.scratch)

    def swap(self) -> None:
        files.make_swap(
            self.dest, f"{self.spec.livedir}/swap.img", self.spec.swap_size, self.scratch
        )

    def install_loader(self) -> None:
        from liveos_tools.tools import syslinux

        fs, d = self.spec.fs, self.dest
        if fs.fstype == "vfat":
            # syslinux (mtools build) reads and writes the image through the page cache,
            # like mtools and our writes: no fsync is needed first.
            syslinux.install_fat(fs.device, fs.offset, f"/{SYS_DIR}")
            return
        host = d.host_path(SYS_DIR)
        assert host is not None and isinstance(d, MountedDest)
        syslinux.install_ext(host)
        # extlinux takes hidden sectors from the device it is installed through: 0 for a
        # loop device over an image file. Written through that same device, whose cache
        # also holds the ext superblock in the same page.
        files.set_hidden(d.device, 0, self.spec.part_start // 512)

    def sync_and_verify(self) -> None:
        d = self.dest
        # the page cache is dropped only for a read-back that must come from the disk
        d.sync(self.spec.verify)
        for other in {id(c[0]): c[0] for c in self.checks if c[0] is not d}.values():
            other.sync(self.spec.verify)
        image_rel = self.spec.image.rel if self.spec.image else None

        def check(cd: Dest, rel: str, expected: copy.Checksum) -> None:
            prog = (
                copy.Progress(
                    f"{self.spec.target.spec}: verify {rel}", expected.size, board=self.board
                )
                if rel == image_rel
                else None
            )
            verify(cd, rel, expected, prog)
            if prog:
                prog.finish()

        # The image is read back while the small files are checked beside it.
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="liveos-verify") as ex:
            for fut in [
                ex.submit(check, *c) for c in sorted(self.checks, key=lambda c: c[1] != image_rel)
            ]:
                fut.result()

    def expected(self) -> checkstick.Expected:
        spec = self.spec
        ov = spec.overlay
        return checkstick.Expected(
            spec.fs.device,
            spec.fs.offset,
            spec.fs.fstype,
            spec.fs.label,
            spec.fs.uuid,
            spec.fw_disk,
            spec.part_start,
            ov.rel if ov.persistence is not bootcfg.Persistence.OVERLAYFS_TEMP else None,
            f"{SYS_DIR}/ldlinux.sys",
            exact_hidden=spec.fs.new or spec.fs.fstype != "vfat",
        )

    def check_stick(self) -> None:
        checkstick.check(self.expected(), self.dest)

    def close(self) -> None:
        """Release everything; also what runs when a step failed (the background copy
        is let finish first: its thread writes into the open filesystem)."""
        self._pool.shutdown(wait=True)
        self._stack.close()
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None


def build(spec: StickSpec) -> tuple[Plan, StickResult, StickRun]:
    """The plan for one stick, its result record, and the run its steps act on."""
    r = StickRun(spec)
    target, fs, boot = spec.target, spec.fs, spec.boot
    plan = Plan("write a LiveOS stick", target.spec)
    plan.notes.extend(spec.notes)
    plan.destroys.extend(spec.destroys)
    if spec.parts is not None:
        _plan_format(plan, r)
    elif spec.relabel_from is not None:
        plan.add(
            f"relabel {spec.relabel_from!r} as {fs.label!r} (dracut cannot match a label "
            "with spaces)",
            lambda: files.relabel(fs, fs.label),
        )
    if spec.parts is not None:
        plan.add(
            f"write syslinux's {'gptmbr' if boot.gpt else 'mbr'}.bin boot code to the MBR",
            lambda: files.write_mbr(target.path, boot.mbr),
            writes=[ByteRange(target.path, 0, len(boot.mbr), "MBR boot code")],
        )
    elif spec.boot_disk is not None:
        _plan_boot_disk(plan, spec.boot_disk, spec)
    plan.add(
        f"open the {fs.fstype} filesystem"
        + (" (through mtools)" if fs.fstype == "vfat" else " (mounted)"),
        r.open,
    )
    if spec.home.action is HomeAction.COPY:
        r.result.copy_bytes += spec.home.size  # its progress feeds the run's board too
    if spec.image is not None:
        r.result.copy_bytes += spec.image.size * (2 if spec.verify else 1)  # written, read back
        plan.add(
            f"copy {spec.image.source.path} to {spec.image.rel} "
            f"({format_size(spec.image.size)}), with progress (its data is written while "
            "the next steps run)",
            r.start_image,
        )
    plan.add(
        "copy the kernel and initrd to /syslinux, EFI/BOOT, images/efiboot.img: "
        + ", ".join(rel for _, rel in boot.files),
        r.copy_boot,
    )
    plan.add(
        f"write /{SYS_DIR}/{boot.cfg_name} and /EFI/BOOT/grub.cfg with: {boot.args}",
        r.write_configs,
    )
    _plan_persistence(plan, r)
    plan.add(
        f"install {'syslinux' if fs.fstype == 'vfat' else 'extlinux'} into /{SYS_DIR}",
        r.install_loader,
    )
    if spec.image is not None:
        plan.add(f"wait until {spec.image.rel} is written", r.wait_image)
    plan.add(
        "fsync, then verify every copied file against its source checksum"
        if spec.verify
        else "fsync (--noverify: no verification)",
        r.sync_and_verify,
    )
    e = r.expected()
    plan.add(
        f"check the stick as the firmware and dracut see it: blkid -p on {e.device}"
        + (f" at byte {e.offset}" if e.offset else "")
        + f" finds {e.fstype} "
        f"LABEL={e.label} UUID={e.uuid}"
        + (f", the overlay is {e.overlay}" if e.overlay else "")
        + f", the boot sector at sector {e.start // 512} of {e.disk} loads "
        f"/{e.loader}",
        r.check_stick,
    )
    plan.add("release the stick", r.close)
    return plan, r.result, r


def _through(part: Part) -> str:
    return (
        f" (through {part.device})"
        if not part.offset
        else f" (at byte {part.offset} of {part.device})"
    )


def _plan_format(plan: Plan, r: StickRun) -> None:
    spec = r.spec
    target, fs, pp = spec.target, spec.fs, spec.parts
    assert pp is not None
    if target.kind is TargetKind.IMAGE and not target.exists:
        size = target.size
        plan.add(
            f"create the disk image {target.path} ({format_size(size)}, sparse)",
            lambda: files.create_image(target.path, size),
            argv=("truncate", "-s", str(size), target.path),
        )
    plan.add(
        f"write a {'GPT' if pp.gpt else 'msdos'} partition table ({format_size(pp.align)} "
        f"aligned): {pp.describe()}; read it back and check it is exactly that"
        + (
            ", and that the kernel shows each partition node there"
            if target.kind is TargetKind.DISK
            else ""
        ),
        r.partition,
        writes=[ByteRange(target.path, 0, pp.parts[0].start, "partition table")],
    )
    if pp.esp is not None:
        esp = pp.esp
        # FAT16 said outright: inside an image file of more than about 1.5 GiB, mkfs.fat picks
        # FAT32 by the file's size and refuses 64 MiB as too small a FAT32 (W2).
        esp_argv = mkfs_fat.argv(
            esp.device,
            esp.offset,
            esp.length,
            label="EFI",
            volume_id=secrets.token_hex(4).upper(),
            hidden_sectors=esp.start // 512,
            fat_bits=16,
        )
        plan.add(
            f"make vfat (label EFI) on the ESP, p{esp.number} {esp.where}{_through(esp)}",
            lambda: mkfs_fat.run_argv(esp_argv),
            argv=esp_argv,
        )
    live = pp.live
    what = (
        f"make {fs.fstype} labelled {fs.label}, UUID {fs.uuid} on p{live.number} "
        f"{live.where}{_through(live)}"
    )
    if fs.fstype == "vfat":
        argv = mkfs_fat.argv(
            fs.device,
            fs.offset,
            fs.length,
            label=fs.label,
            volume_id=spec.mkfs_id,
            hidden_sectors=live.start // 512,
        )
        plan.add(what, lambda: mkfs_fat.run_argv(argv), argv=argv)
    else:
        ext = mkfs.ext_argv(
            fs.device,
            fstype=fs.fstype,
            label=fs.label,
            uuid=spec.mkfs_id,
            blocksize=spec.blocksize or 4096,
            offset=fs.offset,
            length=fs.length,
        )
        plan.add(what, lambda: mkfs.run_argv(ext), argv=ext)


def _plan_persistence(plan: Plan, r: StickRun) -> None:
    spec = r.spec
    ov, home = spec.overlay, spec.home
    if ov.action is OverlayAction.COPY:
        assert ov.source is not None
        plan.add(
            f"copy the overlay {ov.source.path} ({format_size(ov.size)}) to {ov.rel}, "
            "the name dracut looks for on this stick",
            r.overlay,
        )
    elif ov.action is OverlayAction.RESET:
        plan.add(
            f"reset the overlay {ov.rel}: zero its first 64 KiB, as rd.live.overlay.reset does",
            r.overlay,
        )
    elif ov.action is OverlayAction.KEEP:
        plan.notes.append(f"the overlay {ov.rel} is kept as it is")
    elif ov.action is OverlayAction.NEW:
        dir_ = ov.persistence is bootcfg.Persistence.OVERLAYFS and spec.fstype != "vfat"
        what = "an OverlayFS directory" if dir_ else f"{format_size(ov.size)}, preallocated"
        plan.add(f"create the overlay {ov.rel} ({what})", r.overlay)
    if home.action is HomeAction.COPY:
        assert home.source is not None
        where = f" of {home.source.backing}" if home.source.offset else ""
        plan.add(
            f"copy {home.source.path}{where} ({format_size(home.size)}) to {home.rel} "
            f"as it is{', mode 0600' if spec.fstype != 'vfat' else ''}"
            + (f", verified ({spec.checksum})" if spec.checksum else ""),
            r.home,
        )
    elif home.action is HomeAction.KEEP:
        plan.notes.append(f"{home.rel} exists and is kept (--delete-home replaces it)")
    elif home.action in (HomeAction.CREATE, HomeAction.REPLACE):
        plan.add(
            f"{home.action.value} {home.rel} ({format_size(home.size)}, "
            f"{'LUKS' if home.encrypt else 'plain'} {home.fstype})",
            r.home,
        )
    if spec.swap_size:
        plan.add(f"create {spec.livedir}/swap.img ({format_size(spec.swap_size)})", r.swap)


def _plan_boot_disk(plan: Plan, disk: BootDisk, spec: StickSpec) -> None:
    """Writing into an existing partition: the boot code of its disk (--reset-mbr) and
    the flag that code boots by (msdos: active; GPT: legacy_boot)."""
    target, boot = spec.target, spec.boot
    if disk.table is None:
        if spec.reset_mbr:
            plan.notes.append(
                f"--reset-mbr: {target.spec} has no partition table (its "
                "filesystem starts at byte 0, where an MBR would go): no MBR "
                "boot code written; the filesystem's own boot sector boots it"
            )
        return
    if spec.reset_mbr:
        plan.add(
            f"write syslinux's {'gptmbr' if boot.gpt else 'mbr'}.bin boot code to the MBR "
            f"of {disk.path}",
            lambda: files.write_mbr(disk.path, boot.mbr),
            writes=[ByteRange(disk.path, 0, len(boot.mbr), "MBR boot code")],
        )
    elif disk.mbr_blank:
        plan.notes.append(
            f"{disk.path} has no MBR boot code: a BIOS will not boot it; add "
            "--reset-mbr to write syslinux's"
        )
    if disk.number is None:
        plan.notes.append(
            f"{target.spec} was not found in {disk.path}'s partition table: "
            "its boot flag is left as it is"
        )
    elif disk.table == "msdos" and "boot" not in disk.flags:
        if disk.number > 4:
            plan.notes.append(
                f"{target.spec} is a logical partition, which cannot be marked "
                "active: the MBR code boots only a primary partition"
            )
        else:
            n = disk.number
            plan.add(
                f"mark partition {n} of {disk.path} active (bootable), the others not: "
                "the MBR code boots the active partition",
                lambda: files.set_active(disk.path, n),
                writes=[ByteRange(disk.path, 446, 64, "the 4 partition entries' flags")],
            )
    elif disk.table == "gpt" and "legacy_boot" not in disk.flags:
        plan.notes.append(
            f"partition {disk.number} of {disk.path} lacks the legacy_boot "
            "attribute that gptmbr.bin boots by: set it with `parted "
            f"{disk.path} set {disk.number} legacy_boot on`"
        )
