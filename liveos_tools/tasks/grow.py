"""`liveos-overlay grow`: make a device-mapper overlay larger, offline or under a live system.

Growing only appends: the new space is written as real zeros (FAT has no sparse
files, and a sparse hole on a stick would fail later, half-way through a write),
then fsynced. Nothing before the old end is touched, so at every instant the
overlay is the original plus a tail of zeros; a store of any size past its last
chunk is valid to the kernel. A running snapshot sees the new space once its loop
device is told (losetup --set-capacity): the kernel reads the COW size at each
allocation.
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass
from pathlib import Path

from liveos_tools import mounts
from liveos_tools.cow import StoreState, read_store
from liveos_tools.errors import CorruptError, LiveOSError, NoSpaceError, TargetError, UsageError
from liveos_tools.media import Medium, OverlayKind
from liveos_tools.plan import ByteRange, Plan
from liveos_tools.tasks import backup as bk
from liveos_tools.units import GiB, MiB, format_size

#: vfat cannot hold a file of 4 GiB or more.
FAT_MAX_FILE = 4 * GiB - 1
FAT_TYPES = ("vfat", "msdos", "fat")
#: the reference writer warns below this much free space on the stick.
LOW_FREE = 100 * MiB
_ZEROS = bytes(MiB)


@dataclass(frozen=True)
class GrowFacts:
    path: Path
    old_size: int
    new_size: int
    chunk_bytes: int
    fs_free: int
    fstype: str | None
    loops: tuple[tuple[str, tuple[str, ...]], ...]  # (loop, dm holders) using the overlay

    @property
    def delta(self) -> int:
        return self.new_size - self.old_size


def dm_overlay(medium: Medium) -> Path:
    """The overlay a dm-only command works on, or a clear refusal."""
    path = medium.overlay_path
    if path is None or medium.overlay_kind is OverlayKind.NONE:
        raise TargetError(
            f"{medium.target} has no persistent overlay",
            "make one first (liveos-iso-to-disk --overlay-size-mb), or check the stick",
        )
    if medium.overlay_kind is not OverlayKind.DM:
        raise UsageError(
            f"{path.name} is an OverlayFS overlay ({medium.overlay_kind.value}), "
            "not a device-mapper one",
            "an OverlayFS directory grows with the stick; an OverlayFS image cannot be "
            "grown by this command",
        )
    if not path.is_file():
        raise UsageError(f"{path} is not a regular file", "point at the overlay file or stick")
    return path


def _fstype(path: Path, medium: Medium | None) -> str | None:
    mount = mounts.mount_of(path)
    if mount is not None:
        return mount.fstype
    return medium.volume.fstype if medium and medium.volume else None


def _store_chunk_bytes(path: Path, *, in_use: bool, allow_corrupt: bool) -> int:
    """The store's chunk size; refuses a store that is not safe to grow (exit 10).

    A new (all-zero), valid, full or invalid store may be grown (repair grows a full
    one). A corrupt one may not: growing a truncated store would make its exceptions
    that point past the end look valid again. A store in use by a running snapshot
    changes while it is read, so only its header is judged then (the kernel is using
    the rest).
    """
    report = read_store(path, full=not in_use)
    header_damaged = report.state is StoreState.CORRUPT and report.next_free == 0
    if report.state is StoreState.CORRUPT and not allow_corrupt and (header_damaged or not in_use):
        raise CorruptError(
            f"{path.name} is corrupt ({report.problem}): growing it would hide the damage",
            "nothing was changed; see liveos-overlay status --full, then "
            "liveos-overlay repair (or reset, to start afresh)",
        )
    return report.chunk_sectors * 512


def target_size(old: int, chunk: int, *, to_bytes: int | None, by_bytes: int | None) -> int:
    """The new size, rounded down to whole chunks; refuses a shrink or a no-op."""
    if (to_bytes is None) == (by_bytes is None):
        raise UsageError("give exactly one of --by SIZE and --to SIZE", "e.g. grow --by 512M")
    wanted = old + by_bytes if by_bytes is not None else to_bytes
    assert wanted is not None
    if to_bytes is not None and to_bytes < old:
        raise UsageError(
            f"the overlay is {format_size(old)}; --to {format_size(to_bytes)} would shrink it",
            "shrinking loses the changes stored at its end; to start afresh with a "
            "smaller overlay, back up your files, reset it, and make a new one",
        )
    new = wanted // chunk * chunk
    if to_bytes is not None and new == old:
        return old  # already there (a re-run after a grow that was stopped): nothing to do
    if new <= old:
        raise UsageError(
            f"the overlay is already {format_size(old)}; that adds less than one chunk "
            f"({format_size(chunk)})",
            "give a larger size, e.g. --by 512M",
        )
    return new


def check_grow(
    path: Path,
    medium: Medium | None,
    *,
    to_bytes: int | None = None,
    by_bytes: int | None = None,
    allow_corrupt: bool = False,
) -> GrowFacts:
    """Every check before growing; raises NoSpaceError/UsageError/CorruptError with
    nothing changed. `allow_corrupt` is for repair, which cuts a damaged table first."""
    users = tuple((loop, tuple(h)) for loop, h in bk.loop_users(path))
    old = path.stat().st_size
    chunk = _store_chunk_bytes(path, in_use=bool(users), allow_corrupt=allow_corrupt)
    new = target_size(old, chunk, to_bytes=to_bytes, by_bytes=by_bytes)
    fstype = _fstype(path, medium)
    if fstype in FAT_TYPES and new > FAT_MAX_FILE:
        most = FAT_MAX_FILE // chunk * chunk
        raise NoSpaceError(
            f"{format_size(new)} is beyond the FAT limit: a file on vfat is at most 4 GiB - 1 byte",
            f"grow to at most {most // MiB} MiB (--to {most // MiB}M), or use an ext4 stick",
        )
    st = os.statvfs(path.parent)
    free = st.f_bavail * st.f_frsize
    if new - old > free:
        raise NoSpaceError(
            f"growing by {format_size(new - old)} needs more than the "
            f"{format_size(free)} free on the stick",
            f"grow by at most {free // MiB} MiB, or free space on the stick first",
        )
    return GrowFacts(path, old, new, chunk, free, fstype, users)


def append_zeros(path: Path, new_size: int) -> None:
    """Write real zeros from the end of the file up to new_size, then fsync."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise bk.translate_oserror(exc, path, "nothing was changed") from None
    pos = 0
    try:
        pos = os.lseek(fd, 0, os.SEEK_END)
        first = True
        while pos < new_size:
            n = os.pwrite(fd, _ZEROS[: min(len(_ZEROS), new_size - pos)], pos)
            pos += n
            if first:
                first = False
                bk.kill_point("grow-partial")
        os.fsync(fd)
    except OSError as exc:
        # Only zeros went past the old end: the overlay still works at any length.
        if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise NoSpaceError(
                f"growing {path.name} stopped at {format_size(pos)}: {exc.strerror}",
                "the overlay still works as it was; free space on the stick and try again",
            ) from None
        raise bk.translate_oserror(
            exc, path, f"growing stopped at {format_size(pos)}; the overlay still works as it was"
        ) from None
    finally:
        os.close(fd)
    bk.kill_point("grow-synced")


def _dm_name(holder: str) -> str | None:
    with contextlib.suppress(OSError):
        return (Path("/sys/block") / holder / "dm" / "name").read_text().strip()
    return None


def _overflowed(holders: tuple[str, ...]) -> list[str]:
    from liveos_tools.tools import dmsetup

    out = []
    for holder in holders:
        name = _dm_name(holder)
        if not name:
            continue
        with contextlib.suppress(LiveOSError):
            for line in dmsetup.status(name):
                if line.snapshot and line.snapshot.state is dmsetup.SnapshotState.OVERFLOW:
                    out.append(name)
    return out


def add_grow_steps(plan: Plan, facts: GrowFacts) -> None:
    """The grow itself, shared with repair (which grows a full overlay first)."""
    plan.add(
        f"append {format_size(facts.delta)} of zeros to {facts.path.name} "
        f"({format_size(facts.old_size)} -> {format_size(facts.new_size)}), then fsync",
        lambda: append_zeros(facts.path, facts.new_size),
        writes=[ByteRange(str(facts.path), facts.old_size, facts.delta, "zeros: new free space")],
    )


def plan_grow(
    medium: Medium,
    *,
    to_bytes: int | None = None,
    by_bytes: int | None = None,
    backup_dir: str | Path | None = None,
) -> Plan:
    path = dm_overlay(medium)
    if not medium.opened_readonly:
        bk.refuse_readonly(path)
    # A running live system is grown under it; an interrupted repair's snapshots are not.
    bk.refuse_leftovers(path, "grown")
    facts = check_grow(path, medium, to_bytes=to_bytes, by_bytes=by_bytes)
    origin = bk.Origin.of(medium, path)
    if facts.delta == 0:
        done = bk.SafePlan("grow overlay", origin.describe(path), overlay=path)
        done.notes.append(f"{path.name} is already {format_size(facts.new_size)}: nothing to do")
        return done
    plan = bk.SafePlan(
        "grow overlay",
        origin.describe(path),
        overlay=path,
        partial_state=f"{path.name} may have zeros appended past its old end "
        f"({format_size(facts.old_size)})",
        partial_hint="that is harmless (it works as before): run grow again, "
        "or cut them off with liveos-overlay repair --restore BACKUP",
    )
    plan.add(
        "check again that the overlay is not in use and the stick is writable",
        lambda: _recheck(path, facts),
    )
    left = facts.fs_free - facts.delta
    plan.notes.append(
        f"{format_size(facts.fs_free)} free on the stick"
        + (f" ({facts.fstype})" if facts.fstype else "")
        + f"; {format_size(left)} left after growing"
    )
    if left < LOW_FREE:
        plan.notes.append("less than 100 MiB will be left free on the stick")
    directory, notes = bk.choose_dir(path, backup_dir)
    run_id = bk.new_run_id()
    made: list[bk.Backup] = []

    def save() -> None:
        # Growing never changes a byte that exists, so the record is only the old size:
        # `repair --restore` cuts the file back. A full live system may not be able to
        # write it (its /var lives on the full overlay); the grow goes on regardless.
        try:
            made.append(
                bk.write_backup(
                    path, "grow", [], directory, run_id=run_id, whole_hash=False, origin=origin
                )
            )
            plan.notes.append(f"to undo: liveos-overlay repair --restore {made[0].path}")
            plan.partial_hint = (
                "that is harmless (it works as before): run grow again, or cut them off "
                f"with liveos-overlay repair --restore {made[0].path}"
            )
        except TargetError as err:
            plan.notes.append(f"no undo record: {err.message}")

    def seal() -> None:
        # A restore cuts the zeros off only while they are still zeros: once a boot
        # stored changes there, cutting them would break the overlay.
        if made:
            tail = bk.Region(facts.old_size, facts.delta, bk.zeros_sha256(facts.delta))
            try:
                made[0] = bk.seal(made[0], size=facts.new_size, regions=(tail,))
            except LiveOSError as err:  # the grow is done; say what the backup lacks
                plan.notes.append(f"warning: {err.message} ({err.hint})")

    plan.add(f"record the old size in a backup under {directory}", save)
    plan.notes.extend(notes)
    add_grow_steps(plan, facts)
    plan.add("record the new size in the backup", seal)
    for loop, holders in facts.loops:
        plan.add(
            f"tell {loop} (in use{' by ' + ', '.join(holders) if holders else ''}) "
            "about the new size",
            lambda loop=loop: _refresh(loop),  # type: ignore[misc]
            argv=["losetup", "--set-capacity", loop],
        )
    if facts.loops:
        held = tuple(h for _, hs in facts.loops for h in hs)
        over = _overflowed(held)
        if over:
            plan.notes.append(
                f"{', '.join(over)} already reports Overflow: the kernel keeps that until the "
                "next boot. The grow still lets that next boot start with free space."
            )
        else:
            plan.notes.append("the running snapshot can use the new space at once, no reboot")
    return plan


def _recheck(path: Path, facts: GrowFacts) -> None:
    """Right before the write (the prompt may have waited): same users, still writable."""
    bk.refuse_readonly(path)
    users = tuple((loop, tuple(h)) for loop, h in bk.loop_users(path))
    if users != facts.loops:
        raise UsageError(
            f"{path.name} was attached or released since the plan was made",
            "nothing was changed; run grow again",
        )
    if path.stat().st_size != facts.old_size:
        raise UsageError(
            f"{path.name} changed size since the plan was made",
            "nothing was changed; run grow again",
        )


def _refresh(loop: str) -> None:
    from liveos_tools.tools import losetup

    losetup.refresh_capacity(loop)
