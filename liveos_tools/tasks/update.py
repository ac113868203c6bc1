"""`liveos-overlay update --from NEW.iso|DIR|DEVICE [TARGET]`: move a stick to a new
release's image and kernel, keeping home.img; the old image, its overlay and its
kernel stay bootable as the previous image.

The source is read with the writer's own source and layout detection (ISO, directory
or device; classic isolinux and GRUB-only Fedora 37+ layouts). The new squashfs.img,
kernel and initrd are copied into LiveOS/.liveos-next/ beside a fresh overlay, and the
switch of liveos_tools/switch.py makes them current; the boot entries keep the stick's
own arguments and name the new kernel.
"""

from __future__ import annotations

import os
from pathlib import Path

from liveos_tools import switch
from liveos_tools.bootentries import Slot, fsync_dir
from liveos_tools.errors import CorruptError, TargetError, ToolError, UsageError
from liveos_tools.media import Medium, OverlayKind
from liveos_tools.plan import Plan
from liveos_tools.rebuild import free_bytes
from liveos_tools.tasks import backup as bk
from liveos_tools.tasks.refresh import (
    Meter,
    SwitchPlan,
    _add_switch_steps,
    _no_meter,
    _no_room,
    _plan_finish,
    _refuse_in_use,
    check_fat_limit,
    make_fresh_overlay,
    require_configs,
    stick_files,
)
from liveos_tools.units import format_size

_BLOCK = 4 * 1024 * 1024


def _read_release(spec: str) -> tuple[dict[str, tuple[str, int, int]], str]:
    """{'image'|'kernel'|'initrd': (backing, offset, size)} of the release, and its name."""
    from liveos_tools.writer.layout import detect
    from liveos_tools.writer.source import SourceKind, open_source

    try:
        with open_source(spec) as src:
            layout = detect(src)
            if not layout.nested or layout.image.lower().endswith("rootfs.img"):
                raise UsageError(
                    f"{spec} holds a {layout.kind.value} live image; update puts a squashfs.img "
                    "holding LiveOS/rootfs.img in place (device-mapper persistence)",
                    "write the stick afresh with liveos-iso-to-disk",
                )
            out = {}
            for key, path in (
                ("image", layout.image),
                ("kernel", layout.kernel),
                ("initrd", layout.initrd),
            ):
                sf = src.get(path)
                assert sf is not None
                out[key] = (sf.backing, sf.offset, sf.size)
            if src.kind is SourceKind.DEVICE and src.root is not None:
                # Its mount ends with this function; the copy happens later.
                raise UsageError(
                    f"{spec} is a device: update reads a release from an ISO file or a directory",
                    f"mount it (mount -o ro {spec} /mnt) and give the directory",
                )
            return out, src.label or Path(spec).name
    except ToolError as err:
        raise CorruptError(
            f"{spec}: its squashfs.img cannot be read ({err.message})",
            "the release image is damaged: download it again and check its checksum",
        ) from None


def copy_range(backing: str, offset: int, size: int, dst: Path, meter: Meter, what: str) -> None:
    report = meter(what)
    done = 0
    with open(backing, "rb") as fi, open(dst, "xb") as fo:
        fi.seek(offset)
        while done < size:
            block = fi.read(min(_BLOCK, size - done))
            if not block:
                raise CorruptError(f"{backing} ends before its {what} does", "the ISO is truncated")
            fo.write(block)
            done += len(block)
            report(done, size)
        fo.flush()
        os.fsync(fo.fileno())


def plan_update(
    medium: Medium, *, source: str, keep_previous: bool = True, meter: Meter = _no_meter
) -> Plan:
    stick = stick_files(medium)
    journal = switch.read_journal(stick.ldir)
    _refuse_in_use(medium, stick)
    if journal is not None:
        if journal.op == "update" and journal.after("staged"):
            return _plan_finish(medium, stick, journal)
        if journal.op != "update":
            raise UsageError(
                f"an interrupted {journal.op} is recorded in {stick.journal_path}",
                f"run liveos-overlay {journal.op} to finish it first",
            )
    require_configs(stick)
    ovl = medium.overlay_kind in (OverlayKind.OVERLAYFS_DIR, OverlayKind.OVERLAYFS_IMAGE)
    if medium.overlay_kind is not OverlayKind.DM and not ovl:
        raise UsageError(
            f"{medium.target} has no persistent overlay ({stick.names.overlay} is not in "
            f"{stick.names.livedir}/)",
            "update works on sticks with a dm overlay file or OverlayFS persistence; write "
            "this one afresh with liveos-iso-to-disk",
        )
    if stick.kernel is None or not all(p.exists() for p in stick.kernel_files(Slot.CURRENT) or ()):
        raise TargetError(
            f"the kernel and initrd the boot config of {medium.target} names are not on it",
            "check the stick's syslinux/grub config",
        )
    release, name = _read_release(source)
    cur = stick.pair(Slot.CURRENT)
    # an OverlayFS directory starts empty; an overlay file (dm or image) keeps its size
    overlay_size = 0 if stick.overlay_dir else cur.overlay.stat().st_size
    need = sum(size for _, _, size in release.values()) + overlay_size
    check_fat_limit(
        release["image"][2], medium.volume.fstype if medium.volume else None, "squashfs.img"
    )
    prev = stick.pair(Slot.PREVIOUS)
    prev_bytes = prev.size() + sum(
        p.stat().st_size for p in stick.kernel_files(Slot.PREVIOUS) or () if p.exists()
    )
    free = free_bytes(stick.ldir)
    if free + prev_bytes < need:
        _no_room(free, prev_bytes, need, estimated=False)

    plan = SwitchPlan(f"update to {name}", medium.target)
    plan.interrupted_hint = "run update again (the same --from), or rollback to undo"
    plan.notes.append(
        f"the new release's squashfs.img ({format_size(release['image'][2])}), kernel and "
        "initrd come from " + source + "; home.img and swap.img are kept"
    )
    plan.notes.append(
        "the boot entries keep this stick's kernel arguments and name the new kernel; the "
        "old image, its overlay and its kernel stay bootable as 'Previous image'"
    )
    if not keep_previous:
        plan.destroys.append(
            "the old release (image, overlay with every change in it, kernel) is deleted once "
            "the new one is in place (--no-keep-previous)"
        )
    else:
        plan.notes.append(
            "the old overlay belongs to the old image: the changes in it stay with the previous "
            "image (rollback boots them again)"
        )
    if prev_bytes:
        plan.destroys.append(
            f"the previous image already kept ({format_size(prev_bytes)}) is deleted first"
        )
    staged: list[bool] = []

    def cleanup() -> None:
        if not staged and switch.read_journal(stick.ldir) is not None:
            switch.discard_next(stick)
            switch.remove_journal(stick.ldir)

    plan.cleanup = cleanup

    def preflight() -> None:
        _refuse_in_use(medium, stick)
        bk.refuse_readonly(stick.ldir)

    def stage() -> None:
        if journal is not None:
            switch.discard_next(stick)
        assert stick.kernel is not None
        new = switch.new_journal(
            "update", stick.base_names.overlay, keep_previous=keep_previous, detail=f"to {name}"
        )
        from dataclasses import replace

        new = replace(new, kernel=stick.kernel[0], initrd=stick.kernel[1])
        switch.write_journal(stick.ldir, new)
        bk.kill_point("update-journal")
        nd = stick.slot_dir(Slot.NEXT)
        nd.mkdir(exist_ok=True)
        nxt = stick.pair(Slot.NEXT)
        kfiles = stick.kernel_files(Slot.NEXT)
        assert kfiles is not None
        for key, dst in (("image", nxt.base), ("kernel", kfiles[0]), ("initrd", kfiles[1])):
            backing, offset, size = release[key]
            copy_range(backing, offset, size, dst, meter, key)
        if ovl:
            from liveos_tools.tasks import refresh_ovl

            refresh_ovl.make_fresh(stick, cur, nxt)
        else:
            make_fresh_overlay(nxt.overlay, overlay_size)
        fsync_dir(nd)
        switch.write_journal(stick.ldir, replace(new, step="staged"))
        staged.append(True)
        bk.kill_point("update-staged")
        plan.interrupted = "the switch stopped part-way; the stick boots the old or the new pair"

    plan.add("check again that nothing uses the stick's files and it is writable", preflight)
    if prev_bytes:
        plan.add(
            "remove the previous-image boot entry, delete LiveOS/previous/",
            lambda: setattr(plan, "freed", switch.drop_previous(stick)),
        )
    plan.add(
        f"write the journal; copy the release's squashfs.img, kernel and initrd into "
        f"{stick.base_names.livedir}/{Slot.NEXT.value}/ and create a fresh overlay beside "
        + (
            "them (an empty directory and ovlwork/), fsynced"
            if stick.overlay_dir
            else f"them ({format_size(overlay_size)}, preallocated), fsynced"
        ),
        stage,
    )
    _add_switch_steps(plan, stick, keep_previous)
    plan.notes.append(
        "the old kernel and initrd move to LiveOS/previous/ with the old image and overlay"
    )
    return plan
