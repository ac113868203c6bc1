"""`liveos-overlay reset`: empty an overlay, as `rd.live.overlay.reset` does at boot.

A device-mapper overlay is emptied the way dracut does it: its first 64 KiB are
zeroed, which leaves an all-zero header (a new store the kernel initialises on first
use). Those 64 KiB are backed up first, so a mistaken reset can be undone with
`repair --restore`. An OverlayFS directory is emptied (keeping it and its sibling
ovlwork/); an OverlayFS image gets a fresh filesystem with the same label and UUID.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from liveos_tools.cow import RESET_BYTES
from liveos_tools.errors import InUseError, LiveOSError, TargetError
from liveos_tools.media import Medium, OverlayKind, Source
from liveos_tools.plan import ByteRange, Plan
from liveos_tools.tasks import backup as bk
from liveos_tools.units import format_size

LOSS = "every change stored in the overlay (installed software, settings, files) is gone"


def _refuse_live(medium: Medium, path: Path) -> None:
    if medium.source is Source.LIVE:
        raise InUseError(
            f"{path.name} is the overlay of the running live system",
            "boot with rd.live.overlay.reset to empty it, or reset it from another system",
        )
    bk.refuse_in_use(path, "reset")


def zero_head(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.write(bytes(min(RESET_BYTES, size)))
        f.flush()
        os.fsync(f.fileno())


def empty_dir(path: Path) -> None:
    for entry in list(path.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def remake_image(path: Path, like: Path | None = None) -> None:
    """A new empty overlay filesystem in `path`, of the type, label and UUID of `like`
    (default: the one it replaces)."""
    from liveos_tools.tools import blkid, mkfs

    info = blkid.probe(like or path)
    fstype = info.get("TYPE", "ext4")
    if fstype not in mkfs.EXT_TYPES:
        raise LiveOSError(
            f"{path}: an overlay image with a {fstype} filesystem cannot be remade",
            "only ext2/3/4 overlay images can be reset",
        )
    with tempfile.TemporaryDirectory(prefix="liveos-ovl-") as tmp:
        for name in ("overlayfs", "ovlwork"):
            os.mkdir(Path(tmp) / name, 0o755)
        mkfs.make_ext(
            path, fstype=fstype, label=info.get("LABEL"), uuid=info.get("UUID"), populate=tmp
        )
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def plan_reset(medium: Medium, *, backup_dir: str | Path | None = None) -> Plan:
    path = medium.overlay_path
    if path is None or medium.overlay_kind is OverlayKind.NONE:
        raise TargetError(f"{medium.target} has no persistent overlay", "nothing to reset")
    _refuse_live(medium, path)
    if not medium.opened_readonly:
        bk.refuse_readonly(path)
    origin = bk.Origin.of(medium, path)
    plan = bk.SafePlan("reset overlay", origin.describe(path), overlay=path)
    plan.destroys.append(f"{path.name}: {LOSS}")
    plan.add(
        "check again that the overlay is not in use and the stick is writable",
        lambda: bk.preflight(path, "reset"),
    )
    kind = medium.overlay_kind
    if kind is OverlayKind.DM:
        if not path.is_file():
            raise TargetError(f"{path} is not a regular file", "point at the overlay file")
        size = path.stat().st_size
        head = min(RESET_BYTES, size)
        directory, notes = bk.choose_dir(path, backup_dir)
        run_id = bk.new_run_id()
        plan.notes.extend(notes)
        made: list[bk.Backup] = []

        def save() -> None:
            made.append(
                bk.write_backup(path, "reset", [(0, head)], directory, run_id=run_id, origin=origin)
            )
            plan.notes.append(f"to undo: liveos-overlay repair --restore {made[0].path}")
            plan.partial_hint = (
                f"run reset again, or undo it: liveos-overlay repair --restore {made[0].path}"
            )
            bk.kill_point("reset-backup")

        def zero_and_seal() -> None:
            zero_head(path)
            # What a restore must find to put the old header back safely.
            zeros = bk.Region(0, head, bk.zeros_sha256(head))
            try:
                made[0] = bk.seal(made[0], size=size, regions=(zeros,))
            except LiveOSError as err:  # the reset is done; say what the backup lacks
                plan.notes.append(f"warning: {err.message} ({err.hint})")

        plan.partial_state = f"the first {format_size(head)} of {path.name} may be partly zeroed"
        plan.add(f"back up the first {format_size(head)} of {path.name} under {directory}", save)
        plan.add(
            f"zero the first {format_size(head)} (as dracut's rd.live.overlay.reset), then fsync",
            zero_and_seal,
            writes=[ByteRange(str(path), 0, head, "zeros: an empty store")],
        )
    elif kind is OverlayKind.OVERLAYFS_DIR:
        work = path.parent / "ovlwork"
        plan.partial_state = f"{path.name} may be partly emptied"
        plan.partial_hint = "run reset again to finish emptying it"
        plan.notes.append("an OverlayFS directory is not backed up: copy out what you need first")
        plan.writes_from = len(plan.steps)
        plan.add(f"delete everything inside {path} (the directory stays)", lambda: empty_dir(path))
        if work.is_dir():
            plan.add(
                f"delete everything inside {work} (the directory stays)", lambda: empty_dir(work)
            )
    else:
        plan.partial_state = f"the filesystem in {path.name} may be half made"
        plan.partial_hint = "run reset again to make it afresh"
        plan.notes.append("an OverlayFS image is not backed up: copy out what you need first")
        plan.add(
            f"make a new empty filesystem in {path.name} (same label and UUID) "
            "holding overlayfs/ and ovlwork/",
            lambda: remake_image(path),
            argv=["mkfs.ext4", "-q", "-F", "-d", "<empty overlayfs/ ovlwork/>", str(path)],
            writes=[ByteRange(str(path), 0, path.stat().st_size, "a new filesystem")],
        )
    return plan
