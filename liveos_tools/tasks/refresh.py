"""`liveos-overlay refresh` and `rollback`: fold the overlay into a new squashfs.img,
switch to it with a fresh overlay, keep the old pair bootable; and go back.

The new image is built entirely in the workdir (merge, e2fsck, free blocks zeroed,
mksquashfs) before anything on the stick is touched, so every refusal, a failure of
the build, or Ctrl-C during it leaves the stick byte-identical. Only then is the
journal written, the image copied into LiveOS/.liveos-next/ beside a fresh overlay,
and the switch (liveos_tools/switch.py) run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from liveos_tools import switch
from liveos_tools.bootentries import CONFIG_PATHS, Names, Slot, fsync_dir
from liveos_tools.cow import RESET_BYTES, StoreState, read_store
from liveos_tools.errors import (
    AbortedError,
    CorruptError,
    InUseError,
    LiveOSError,
    NoSpaceError,
    TargetError,
    UsageError,
)
from liveos_tools.media import ImageLayout, Medium, OverlayKind, Source
from liveos_tools.plan import Plan
from liveos_tools.tasks import backup as bk
from liveos_tools.units import format_size

DEFAULT_WORKDIR = Path("/var/tmp")
#: vfat cannot hold a file of 4 GiB or more.
FAT_MAX_FILE = 4 * 1024**3 - 1
_COPY_BLOCK = 4 * 1024 * 1024
SCRATCH_PREFIX = "liveos-refresh-"

Meter = Callable[[str], Callable[[int, int], None]]


def _no_meter(label: str) -> Callable[[int, int], None]:
    return lambda done, total: None


class SwitchPlan(Plan):
    """A plan whose failure or Ctrl-C before the switch clears the workdir and NEXT."""

    cleanup: Callable[[], None] | None = None
    #: what state an interruption leaves, for the error message.
    interrupted: str = "nothing on the stick was changed"
    interrupted_hint: str | None = None
    freed: int = 0

    def execute(self, progress: Callable[[int, int, str], None] | None = None) -> None:
        try:
            super().execute(progress)
        except KeyboardInterrupt:
            self._clean()
            raise AbortedError(f"interrupted: {self.interrupted}", self.interrupted_hint) from None
        except LiveOSError:
            self._clean()
            raise
        except OSError as exc:
            self._clean()
            raise LiveOSError(
                f"{self.title} failed: {exc.strerror or exc}"
                + (f" ({exc.filename})" if exc.filename else "")
                + f"; {self.interrupted}",
                self.interrupted_hint,
            ) from None
        self._clean()

    def _clean(self) -> None:
        if self.cleanup is not None:
            with contextlib.suppress(OSError):
                self.cleanup()


# --- finding the stick's files --------------------------------------------------------------


def stick_files(medium: Medium) -> switch.StickFiles:
    if medium.source is Source.LIVE:
        raise InUseError(
            "this is the running live system: its image and overlay are in use",
            "boot another system (or a rescue shell) and run this against the stick's "
            "device, e.g. liveos-overlay refresh /dev/sdb1",
        )
    if medium.root is None:
        raise TargetError(
            f"{medium.target}: no LiveOS directory found",
            "point at the stick's mount point, its device or a disk image",
        )
    ldir = medium.root / medium.livedir
    journal = switch.read_journal(ldir)
    if journal is not None and journal.overlay:
        name = journal.overlay
    elif medium.overlay_path is not None and medium.overlay_path.parent == ldir:
        name = medium.overlay_path.name
    elif medium.expected_overlay_name:
        name = medium.expected_overlay_name
    else:
        raise TargetError(
            f"{medium.target} has no persistent overlay",
            "refresh needs a dm overlay file, or an OverlayFS directory or image",
        )
    kernel: tuple[str, str] | None = None
    if journal is not None and journal.kernel:
        kernel = (journal.kernel, journal.initrd)
    else:
        from liveos_tools.bootentries import find_configs, kernel_paths

        for cfg in find_configs(medium.root):
            kernel = kernel_paths(cfg, medium.root)
            if kernel is not None:
                break
    from liveos_tools import espcfg

    esp = espcfg.find(medium)
    return switch.StickFiles(
        medium.root, Names(medium.livedir, name), kernel, esp=esp.configs, esp_notes=esp.notes
    )


def require_configs(stick: switch.StickFiles) -> None:
    if not stick.configs():
        raise UsageError(
            f"no boot config with rd.live.overlay= on {stick.root} "
            f"(looked for {', '.join(CONFIG_PATHS[:5])}, ...)",
            "the stick must boot through its own syslinux/extlinux or GRUB config, which "
            "the switch rewrites; without one there is no safe way to switch images",
        )


def _refuse_pairs_in_use(stick: switch.StickFiles) -> None:
    for slot in Slot:
        for path in stick.pair(slot).files():
            if path.is_file():
                bk.refuse_in_use(path, "replaced")
            elif path.is_dir():
                from liveos_tools.tasks.refresh_ovl import refuse_dir_in_use

                refuse_dir_in_use(path)


def _refuse_in_use(medium: Medium, stick: switch.StickFiles) -> None:
    _refuse_pairs_in_use(stick)
    if not medium.opened_readonly:
        bk.refuse_readonly(stick.ldir)


def _same_fs(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


def check_fat_limit(size: int, fstype: str | None, what: str) -> None:
    if fstype == "vfat" and size > FAT_MAX_FILE:
        raise NoSpaceError(
            f"the new {what} would be {format_size(size)}; vfat holds files up to 4 GiB - 1 byte",
            "use a stronger compressor (--compress xz or zstd), or put the stick on ext4",
        )


# --- the pieces of a refresh -----------------------------------------------------------


def build_image(medium: Medium, scratch: Path, compressor: str, meter: Meter) -> Path:
    """The shared pipeline (liveos_tools/rebuild.py): merge into the workdir, e2fsck,
    zero the free blocks, compress. Returns scratch/squashfs.img."""
    from liveos_tools import merge, rebuild

    dest = scratch / "squashfs.img"
    with merge.merged(medium) as view:
        image = rebuild.scratch_image(view, scratch, progress=meter("merge"))
    try:
        bk.kill_point("refresh-merged")
        rebuild.check_clean(image)
        rebuild.zero_free_blocks(image)
        rebuild.make_squashfs(image, dest, compressor=compressor, progress=meter("compress"))
    finally:
        rebuild.remove_scratch(image)
    return dest


def copy_synced(src: Path, dst: Path, meter: Callable[[int, int], None]) -> None:
    total = src.stat().st_size
    done = 0
    with open(src, "rb") as fi, open(dst, "xb") as fo:
        while block := fi.read(_COPY_BLOCK):
            fo.write(block)
            done += len(block)
            meter(done, total)
        fo.flush()
        os.fsync(fo.fileno())


def make_fresh_overlay(path: Path, size: int) -> None:
    """A new store: preallocated, all zeros (the kernel writes the header on first use)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
        os.pwrite(fd, bytes(min(RESET_BYTES, size)), 0)
        os.fsync(fd)
    finally:
        os.close(fd)


# --- refresh ------------------------------------------------------------------------------


def plan_refresh(
    medium: Medium,
    *,
    workdir: str | Path | None = None,
    compress: str | None = None,
    keep_previous: bool = True,
    meter: Meter = _no_meter,
) -> Plan:
    stick = stick_files(medium)
    journal = switch.read_journal(stick.ldir)
    if journal is not None and journal.op != "refresh":
        raise UsageError(
            f"an interrupted {journal.op} is recorded in {stick.journal_path}",
            f"run liveos-overlay {journal.op} to finish it first",
        )
    _refuse_in_use(medium, stick)
    if journal is not None and journal.after("staged"):
        return _plan_finish(medium, stick, journal)
    return _plan_build(medium, stick, journal, workdir, compress, keep_previous, meter)


def _plan_build(
    medium: Medium,
    stick: switch.StickFiles,
    journal: switch.Journal | None,
    workdir_arg: str | Path | None,
    compress: str | None,
    keep_previous: bool,
    meter: Meter,
) -> Plan:
    from liveos_tools import merge, rebuild
    from liveos_tools.run import require
    from liveos_tools.tools import mksquashfs

    cur = stick.pair(Slot.CURRENT)
    require_configs(stick)
    ovl = medium.overlay_kind in (OverlayKind.OVERLAYFS_DIR, OverlayKind.OVERLAYFS_IMAGE)
    if medium.overlay_kind is not OverlayKind.DM and not ovl:
        raise UsageError(
            f"{medium.target} has no persistent overlay ({stick.names.overlay} is not in "
            f"{stick.names.livedir}/): there is nothing to fold into the image",
            "refresh works on sticks with a dm overlay file or OverlayFS persistence",
        )
    bk.refuse_unreadable_image(medium, "refresh")
    nested = medium.image_layout is ImageLayout.NESTED
    if not (nested or (ovl and medium.image_layout is ImageLayout.FLAT)) or (
        medium.squashfs_path is None
    ):
        raise UsageError(
            f"the live image on {medium.target} has the {medium.image_layout.value} layout; "
            "refresh rebuilds a squashfs.img holding LiveOS/rootfs.img",
            "an unreadable squashfs.img is damaged: put a good one back (check unsquashfs)",
        )
    for tool in ("mksquashfs", "unsquashfs", "e2fsck"):
        require(tool)
    fold = None
    if ovl:
        from liveos_tools.tasks import refresh_ovl

        fold = refresh_ovl.prepare(medium, cur)
        used = fold.upper_bytes
    else:
        report = read_store(cur.overlay)
        if report.state in (StoreState.CORRUPT, StoreState.INVALID):
            raise CorruptError(
                f"the overlay {cur.overlay.name} is {report.state.value}"
                + (f" ({report.problem})" if report.problem else ""),
                "repair it first: liveos-overlay repair",
            )
        used = report.used_bytes
    old_comp = rebuild.squashfs_compressor(cur.base)
    comp = compress or old_comp
    if comp not in mksquashfs.WRITABLE_COMPRESSORS:
        raise UsageError(
            f"mksquashfs cannot write {comp}-compressed images"
            + ("" if compress else " (the old image's compressor)"),
            f"choose one with --compress: {', '.join(mksquashfs.WRITABLE_COMPRESSORS)}",
        )
    if fold is not None:
        rootfs_bytes, overlay_size = fold.work_bytes, fold.overlay_size
        scratch_what = "the unpacked base with the upper layer applied"
    else:
        with merge.open_base(medium) as rootfs:  # also proves squashfs.img readable
            rootfs_bytes = rootfs.stat().st_size
        overlay_size = cur.overlay.stat().st_size
        scratch_what = "the merged root filesystem"
    estimate = cur.base.stat().st_size + used

    workdir = Path(workdir_arg) if workdir_arg is not None else DEFAULT_WORKDIR
    if not workdir.is_dir():
        raise UsageError(f"the workdir {workdir} is not a directory", "give --workdir DIR")
    if _same_fs(workdir, stick.ldir):
        raise UsageError(
            f"the workdir {workdir} is on the stick being refreshed",
            "give --workdir on another disk (the default is /var/tmp)",
        )
    need_work = rootfs_bytes + estimate
    work_free = rebuild.free_bytes(workdir)
    if work_free < need_work:
        raise NoSpaceError(
            f"not enough room in the workdir {workdir}: {format_size(work_free)} free, "
            f"up to {format_size(need_work)} needed ({scratch_what} "
            f"{format_size(rootfs_bytes)} and the new image)",
            "give --workdir on a disk with more room",
        )
    prev = stick.pair(Slot.PREVIOUS)
    prev_bytes = prev.size()
    stick_free = rebuild.free_bytes(stick.ldir)
    if stick_free + prev_bytes < estimate + overlay_size:
        _no_room(stick_free, prev_bytes, estimate + overlay_size, estimated=True)

    plan = SwitchPlan("refresh", medium.target)
    plan.notes.append(
        f"the new image is compressed with {comp}"
        + (" (as the old one)" if comp == old_comp else f" (the old one used {old_comp})")
    )
    if fold is not None and not fold.image_overlay:
        fresh = "the new overlay is an empty directory, with an empty ovlwork/ beside it"
    else:
        fresh = f"the new overlay is empty and has the same size ({format_size(overlay_size)})"
    plan.notes.append(f"home.img and swap.img are not touched; {fresh}")
    if keep_previous:
        plan.notes.append(
            "the old image and its overlay are kept in LiveOS/previous/ with a boot entry "
            "'Previous image'; liveos-overlay rollback goes back to them"
        )
    else:
        plan.destroys.append(
            "the old squashfs.img and overlay are deleted once the new pair is in place "
            "(--no-keep-previous): there is no way back"
        )
    if prev_bytes:
        plan.destroys.append(
            f"the previous image already kept in LiveOS/previous/ ({format_size(prev_bytes)}) "
            "is deleted to make room for this one"
        )
    if journal is not None:
        plan.notes.append("an unfinished new image from an interrupted refresh is discarded")

    scratch_box: list[Path] = []
    built: list[Path] = []
    names = stick.names
    next_dir = stick.slot_dir(Slot.NEXT)
    staged: list[bool] = []

    def cleanup() -> None:
        for d in scratch_box:
            shutil.rmtree(d, ignore_errors=True)
        if not staged and switch.read_journal(stick.ldir) is not None:
            # Stopped before the switch began: the old pair is untouched; drop the rest.
            switch.discard_next(stick)
            switch.remove_journal(stick.ldir)

    plan.cleanup = cleanup
    plan.interrupted_hint = "run refresh again"

    def preflight() -> None:
        _refuse_pairs_in_use(stick)
        bk.refuse_readonly(stick.ldir)

    def build() -> None:
        sweep_scratch(workdir)
        scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=workdir))
        scratch_box.append(scratch)
        if fold is not None:
            built.append(refresh_ovl.build(medium, cur, fold, scratch, comp, meter))
        else:
            built.append(build_image(medium, scratch, comp, meter))
        bk.kill_point("refresh-built")

    def check_room() -> None:
        size = built[0].stat().st_size
        check_fat_limit(size, medium.volume.fstype if medium.volume else None, "squashfs.img")
        free = rebuild.free_bytes(stick.ldir)
        if free + prev.size() < size + overlay_size:
            _no_room(free, prev.size(), size + overlay_size, estimated=False)
        plan.notes.append(
            f"new squashfs.img: {format_size(size)} (old: "
            f"{format_size(cur.base.stat().st_size)} + overlay used "
            f"{format_size(used)})"
        )

    def drop_old_previous() -> None:
        switch.drop_previous(stick)

    def stage() -> None:
        if journal is not None:
            switch.discard_next(stick)
        new = switch.new_journal(
            "refresh",
            names.overlay,
            keep_previous=keep_previous,
            detail=f"new image {format_size(built[0].stat().st_size)}",
        )
        switch.write_journal(stick.ldir, new)
        bk.kill_point("refresh-journal")
        next_dir.mkdir(exist_ok=True)
        nxt = stick.pair(Slot.NEXT)
        copy_synced(built[0], nxt.base, meter("copy"))
        bk.kill_point("refresh-copied")
        if fold is not None:
            refresh_ovl.make_fresh(stick, cur, nxt)
        else:
            make_fresh_overlay(nxt.overlay, overlay_size)
        fsync_dir(next_dir)
        switch.write_journal(stick.ldir, switch.Journal(**{**new.__dict__, "step": "staged"}))
        staged.append(True)
        bk.kill_point("refresh-staged")
        plan.interrupted = "the switch stopped part-way; the stick boots the old or the new pair"
        plan.interrupted_hint = "run refresh again to finish, or rollback to go back"

    plan.add("check again that nothing uses the stick's files and it is writable", preflight)
    if fold is not None:
        merge_step = f"in {workdir}/liveos-refresh-*/: {refresh_ovl.describe(fold)}"
        fresh_step = (
            f"a new empty overlay image ({format_size(overlay_size)}, same type, label and "
            "UUID, holding empty overlayfs/ and ovlwork/)"
            if fold.image_overlay
            else "an empty overlay directory and an empty ovlwork/"
        )
    else:
        merge_step = (
            f"merge squashfs.img ({format_size(cur.base.stat().st_size)}) and the overlay "
            f"({format_size(used)} used) into {workdir}/liveos-refresh-*/, "
            "check it with e2fsck, zero its free blocks, compress it with mksquashfs"
        )
        fresh_step = (
            f"a fresh overlay beside it ({format_size(overlay_size)}, preallocated, mode 0600)"
        )
    flat = fold is not None and not fold.nested
    plan.add(
        merge_step,
        build,
        argv=mksquashfs.command(
            f"{workdir}/liveos-refresh-*/" + ("<root-tree>" if flat else "<merged-tree>"),
            f"{workdir}/liveos-refresh-*/squashfs.img",
            compressor=comp,
            keep_owners=flat,
        ),
    )
    plan.add("check that the stick has room for the new image and a fresh overlay", check_room)
    if prev_bytes:
        plan.add("remove the previous-image boot entry, delete LiveOS/previous/", drop_old_previous)
    plan.add(
        f"write the journal {switch.JOURNAL}; copy the new image to "
        f"{names.livedir}/{Slot.NEXT.value}/squashfs.img and create {fresh_step}, fsynced",
        stage,
    )
    _add_switch_steps(plan, stick, keep_previous)
    return plan


def sweep_scratch(workdir: Path) -> None:
    """Delete scratch directories of refreshes that were killed (their process is gone)."""
    for d in workdir.glob(f"{SCRATCH_PREFIX}*"):
        pid = d.name.removeprefix(SCRATCH_PREFIX).partition("-")[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            from liveos_tools.tasks.refresh_ovl import release

            release(d)  # an OverlayFS build mounts its scratch copies
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:
            pass


def _no_room(free: int, prev: int, need: int, *, estimated: bool) -> None:
    kept = f" (plus {format_size(prev)} of the kept previous image, deleted first)" if prev else ""
    raise NoSpaceError(
        f"not enough room on the stick: {format_size(free)} free{kept}, "
        f"{'about ' if estimated else ''}{format_size(need)} needed for the new image and a "
        "fresh overlay beside the old pair",
        "free space on the stick; --no-keep-previous deletes the old pair after the switch "
        "but the new pair must fit beside it first",
    )


def _add_switch_steps(plan: SwitchPlan, stick: switch.StickFiles, keep_previous: bool) -> None:
    plan.notes.extend(stick.esp_notes)
    stops = ("boot-next", "moved-old", "boot-previous", "moved-new", "")
    for summary, until in zip(switch.describe_steps(keep_previous), stops, strict=True):

        def step(until: str = until) -> None:
            current = switch.read_journal(stick.ldir)
            if current is None:
                return
            plan.freed += switch.advance(stick, current, bk.kill_point, until=until)

        plan.add(summary, step)


def _plan_finish(medium: Medium, stick: switch.StickFiles, journal: switch.Journal) -> Plan:
    plan = SwitchPlan(f"finish the interrupted {journal.op}", medium.target)
    plan.notes.append(
        f"the journal says the switch reached '{journal.step}' ({journal.detail or 'no detail'})"
    )
    plan.interrupted = "the switch stopped part-way; the stick boots the old or the new pair"
    plan.interrupted_hint = f"run {journal.op} again to finish"
    plan.add(
        "check again that nothing uses the stick's files and it is writable",
        lambda: _refuse_in_use(medium, stick),
    )
    _add_switch_steps(plan, stick, journal.keep_previous)
    return plan


# --- rollback ---------------------------------------------------------------------------


def plan_rollback(medium: Medium, *, drop_previous: bool = False) -> Plan:
    stick = stick_files(medium)
    journal = switch.read_journal(stick.ldir)
    _refuse_in_use(medium, stick)
    prev = stick.pair(Slot.PREVIOUS)
    if drop_previous:
        if journal is not None:
            raise UsageError(
                f"an interrupted {journal.op} is recorded in {stick.journal_path}",
                f"run liveos-overlay {journal.op} to finish it first",
            )
        if not prev.base.exists() and not prev.overlay.exists():
            raise TargetError(f"no previous image is kept on {medium.target}", "nothing to drop")
        plan = SwitchPlan("drop the previous image", medium.target)
        plan.destroys.append(
            f"the previous image and its overlay in LiveOS/previous/ ({format_size(prev.size())})"
            ": there is no way back to them"
        )
        plan.add(
            "remove the 'Previous image' entry from every boot config, then delete "
            "LiveOS/previous/",
            lambda: setattr(plan, "freed", switch.drop_previous(stick)),
        )
        return plan
    if journal is not None and journal.op != "rollback" and not journal.after("staged"):
        plan = SwitchPlan(f"undo the interrupted {journal.op}", medium.target)
        plan.notes.append("the old pair was never touched: only the unfinished new image goes")

        def undo() -> None:
            switch.discard_next(stick)
            switch.remove_journal(stick.ldir)

        plan.add(f"delete {stick.names.livedir}/{Slot.NEXT.value}/ and the journal", undo)
        return plan
    plan = SwitchPlan("roll back to the previous image", medium.target)
    plan.interrupted = "the rollback stopped part-way; the stick boots the old or the new pair"
    plan.interrupted_hint = "run rollback again to finish it"
    if journal is not None and journal.op != "rollback":
        plan.notes.append(
            f"an interrupted {journal.op} (at '{journal.step}') is finished first, keeping the old "
            "pair; its new image is then the kept previous image"
        )

        def keep_old() -> None:
            j = switch.read_journal(stick.ldir)
            if j is not None and not j.keep_previous:
                switch.write_journal(stick.ldir, replace(j, keep_previous=True))

        plan.add("record in the journal that the old pair is kept", keep_old)
        _add_switch_steps(plan, stick, True)
    elif journal is None and not prev.exists():
        raise TargetError(
            f"no previous image is kept on {medium.target}",
            "refresh keeps one unless --no-keep-previous was given",
        )
    plan.notes.append(
        "the current image and its overlay become the kept previous image: rollback again "
        "goes forward to them"
    )

    def begin() -> None:
        j = switch.read_journal(stick.ldir)
        if j is None or (j.op == "rollback" and not j.after("staged")):
            switch.begin_rollback(stick, bk.kill_point)

    plan.add(
        "write the journal; remove the previous entry; rename LiveOS/previous/'s image and "
        "overlay into LiveOS/.liveos-next/",
        begin,
    )
    _add_switch_steps(plan, stick, True)
    return plan
