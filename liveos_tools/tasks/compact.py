"""`liveos-overlay compact`: rewrite the store with only the chunks that still matter.

A chunk stays when its blocks are in use in the merged filesystem and its bytes differ
from the base (du's buckets: everything du calls reclaimable goes). The new store has
the same chunk size and file size, and its table lists the kept chunks in ascending
order, laid out exactly as the kernel lays out its own (cowwrite).

Order of writes, and what a crash (SIGKILL, power cut) at each point leaves:

1. the new store is written as LiveOS/.NAME.compact-new, preallocated, fsynced;
   crash: the old store is in place; the next compact or `compact --restore` deletes
   the leftover.
2. it is verified: through both merged views, every chunk holding an in-use block reads
   the same; then a record (.NAME.compact.json: the new table's sha256) is fsynced.
3. the switch: renameat2(RENAME_EXCHANGE) swaps the two names in one step, so dracut
   finds the old store or the new one, never neither; the old store, now under the
   temporary name, is renamed to NAME.before-compact. Crash between the two renames:
   the new store is in place; the record says which file is which and the next run
   finishes the rename. (A filesystem without RENAME_EXCHANGE gets two plain renames;
   a crash between them leaves no store under NAME, and `compact --restore` or a
   new compact put it back.)

`compact --restore` swaps NAME.before-compact back in (byte for byte the old store) and
deletes the compacted one, refusing if the compacted store was used since (its table or
modification time changed), unless --force.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from liveos_tools.cow import CowStore, Geometry, StoreState, read_store
from liveos_tools.cowwrite import StoreWriter, chunks_needed
from liveos_tools.errors import (
    CorruptError,
    InUseError,
    NoSpaceError,
    TargetError,
    UsageError,
)
from liveos_tools.ext4map import Ext4Map
from liveos_tools.media import Medium, OverlayKind, Source
from liveos_tools.plan import Plan
from liveos_tools.tasks import backup as bk
from liveos_tools.tasks import du
from liveos_tools.units import format_size

NEW_SUFFIX = ".compact-new"
BACKUP_SUFFIX = ".before-compact"
RECORD_SUFFIX = ".compact.json"
_RENAME_EXCHANGE = 2
_READ = 1024 * 1024

Progress = Callable[[int, int], None]


def names(overlay: Path) -> tuple[Path, Path, Path]:
    """(new store being built, the old store kept as backup, the record)."""
    d, n = overlay.parent, overlay.name
    return d / f".{n}{NEW_SUFFIX}", d / f"{n}{BACKUP_SUFFIX}", d / f".{n}{RECORD_SUFFIX}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # vfat directories may not take fsync
            raise
    finally:
        os.close(fd)


def exchange(a: Path, b: Path) -> bool:
    """Swap two names atomically; False if the filesystem cannot (then nothing moved)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def table_sha256(path: Path) -> str:
    """sha256 of the header and every metadata area up to the first non-full one."""
    h = hashlib.sha256()
    rep = read_store(path)
    geo = Geometry(rep.chunk_sectors, rep.size_bytes)
    areas = 0 if rep.state is StoreState.NEW else rep.current_area + 1
    with open(path, "rb") as f:
        h.update(f.read(geo.chunk_bytes))
        for area in range(areas):
            f.seek(geo.area_chunk(area) * geo.chunk_bytes)
            h.update(f.read(geo.chunk_bytes))
    return h.hexdigest()


# -- leftovers ---------------------------------------------------------------------------------


def finish_leftovers(overlay: Path) -> list[str]:
    """Bring an interrupted compact to a settled state; returns what was done."""
    tmp, bak, record = names(overlay)
    done: list[str] = []
    rec = _read_record(record)
    if tmp.exists():
        if rec is not None and overlay.exists() and table_sha256(overlay) == rec["new_table"]:
            # the exchange happened: the temporary name holds the old store
            os.rename(tmp, bak)
            done.append(f"finished an interrupted switch: the old store is now {bak.name}")
        elif rec is not None and not overlay.exists() and table_sha256(tmp) != rec["new_table"]:
            os.rename(tmp, overlay)
            done.append(f"put the old store back as {overlay.name}")
        else:
            os.unlink(tmp)
            done.append(f"deleted {tmp.name}, left by an interrupted compact")
        _fsync_dir(overlay.parent)
    if not overlay.exists() and bak.exists():
        os.rename(bak, overlay)
        _fsync_dir(overlay.parent)
        done.append(f"put the old store back as {overlay.name} (a switch was interrupted)")
    if not bak.exists():
        record.unlink(missing_ok=True)
    return done


def _read_record(record: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_record(record: Path, data: dict[str, Any]) -> None:
    tmp = record.with_name(record.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, record)
    _fsync_dir(record.parent)


# -- the work ----------------------------------------------------------------------------------


def _check_medium(medium: Medium) -> Path:
    path = medium.overlay_path
    if path is not None and medium.overlay_kind in (
        OverlayKind.OVERLAYFS_DIR,
        OverlayKind.OVERLAYFS_IMAGE,
    ):
        raise UsageError(
            f"{path} is an OverlayFS overlay ({medium.overlay_kind.value}): compact rewrites "
            "a device-mapper snapshot store",
            "an OverlayFS overlay gives space back when its files are deleted; "
            "`liveos-overlay refresh` folds it into the image",
        )
    if path is None or medium.overlay_kind is not OverlayKind.DM:
        raise TargetError(
            f"{medium.target} has no device-mapper overlay", "compact rewrites a snapshot store"
        )
    if medium.source is Source.LIVE:
        raise InUseError(
            f"{path.name} is the overlay of the running live system: it cannot be compacted "
            "while the kernel writes to it",
            "boot another system (or shut this one down) and run compact on the stick; "
            "`liveos-overlay du` shows here what compact would give back",
        )
    if not path.is_file():
        raise TargetError(f"{path} is not a regular file", "compact works on an overlay file")
    return path


def analyse(
    medium: Medium, progress: Progress | None = None
) -> tuple[du.Classified, Geometry, list[str]]:
    from liveos_tools.merge import merged

    notes: list[str] = []
    with merged(medium) as view:
        raw = du.RawReads(view.base_path, view.store_path)
        try:
            probe = Ext4Map(view.pread, view.size_bytes).sb
            keep_free = not probe.clean
            if keep_free:
                notes.append(
                    "the root filesystem was not cleanly unmounted: chunks of deleted files "
                    "are kept (boot the stick, shut it down cleanly, and compact again)"
                )
            c = du.classify(view, raw.base, raw.store, progress=progress, keep_free=keep_free)
        finally:
            raw.close()
        with CowStore(view.store_path) as cs:
            geo = cs.geometry()
    return c, geo, notes


def plan_compact(medium: Medium, progress: Progress | None = None) -> Plan:
    overlay = _check_medium(medium)
    bk.refuse_in_use(overlay, "compacted")
    if not medium.opened_readonly:
        bk.refuse_readonly(overlay)
    tmp, bak, record = names(overlay)
    if bak.exists():
        raise UsageError(
            f"{bak.name} is there from an earlier compact",
            f"delete it once the compacted store boots fine (rm {bak}), "
            "or undo that compact with `liveos-overlay compact --restore`",
        )
    c, geo, notes = analyse(medium, progress)
    old_used = chunks_needed(geo, c.data_chunks)
    new_used = chunks_needed(geo, len(c.kept))
    reclaim = (old_used - new_used) * geo.chunk_bytes
    plan = Plan("compact overlay", str(overlay))
    plan.notes.extend(notes)
    plan.notes.append(
        f"keeps {len(c.kept)} of {c.data_chunks} data chunks: drops "
        f"{len(c.deleted)} of deleted files and {len(c.unchanged)} unchanged from the base; "
        f"gives back {format_size(reclaim)} of the overlay"
    )
    if not c.deleted and not c.unchanged:
        plan.notes.append("nothing to give back: the overlay stays as it is")
        if tmp.exists():  # what an interrupted compact left: settle it
            plan.add("finish the interrupted compact", lambda: _preflight(overlay))
        return plan
    need = geo.size_bytes
    free = _free_bytes(overlay.parent) + (tmp.stat().st_size if tmp.exists() else 0)
    if free < need:
        raise NoSpaceError(
            f"the new store needs {format_size(need)} beside the old one, and the stick has "
            f"{format_size(free)} free",
            "free space on the stick (the old store is kept as a backup until you delete it)",
        )
    plan.notes.append(
        f"the old store is kept as {bak.name} ({format_size(geo.size_bytes)}): delete it "
        "once the stick boots fine; `liveos-overlay compact --restore` puts it back"
    )
    state: dict[str, Any] = {}
    plan.add(
        "check again that the overlay is not in use; finish any interrupted compact",
        lambda: _preflight(overlay),
    )
    plan.add(
        f"write the new store {tmp.name} ({len(c.kept)} chunks, in order), preallocated, fsync",
        lambda: _build(overlay, tmp, geo, c, progress),
    )
    plan.add(
        "verify: every chunk holding an in-use block reads the same through both stores",
        lambda: _verify(medium, overlay, tmp, c, state, record),
    )
    plan.add(
        f"switch: {tmp.name} becomes {overlay.name}, the old store becomes {bak.name}",
        lambda: _switch(overlay, tmp, bak, record, state),
    )
    return plan


def _free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def _preflight(overlay: Path) -> None:
    bk.preflight(overlay, "compacted")
    finish_leftovers(overlay)


def _build(
    overlay: Path, tmp: Path, geo: Geometry, c: du.Classified, prog: Progress | None
) -> None:
    with CowStore(overlay) as cs:
        table = dict(cs.exceptions())
    src = os.open(overlay, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with StoreWriter(tmp, geo) as w:
            try:
                w.preallocate()
            except OSError as exc:
                raise bk.translate_oserror(exc, tmp, "nothing was changed") from None
            cb = geo.chunk_bytes
            olds = list(c.kept)
            done = 0
            for run in _source_runs(olds, table):
                data = os.pread(src, len(run) * cb, table[run[0]] * cb)
                if len(data) != len(run) * cb:
                    raise CorruptError(f"{overlay}: chunk {table[run[0]]} is cut short")
                for k, old in enumerate(run):
                    w.add(old, data[k * cb : (k + 1) * cb])
                done += len(run)
                if prog:
                    prog(done, len(olds))
            bk.kill_point("compact-written")
            w.finish()
        _fsync_dir(overlay.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(src)


def _verify(
    medium: Medium,
    overlay: Path,
    tmp: Path,
    c: du.Classified,
    state: dict[str, Any],
    record: Path,
) -> None:
    try:
        _compare_views(medium, overlay, tmp, c, state, record)
    except BaseException:
        # Ctrl-C or a failure before the record: the new store is not trusted, drop it
        if not record.exists():
            tmp.unlink(missing_ok=True)
        raise


def _compare_views(
    medium: Medium,
    overlay: Path,
    tmp: Path,
    c: du.Classified,
    state: dict[str, Any],
    record: Path,
) -> None:
    from liveos_tools.merge import MergedView, open_base

    fs, cb = c.fs, c.chunk_bytes
    with open_base(medium) as base, MergedView(base, overlay) as old, MergedView(base, tmp) as new:
        if dict(new.exceptions()).keys() != set(c.kept):
            _fail(tmp, "the new store's table is not the planned one")
        # chunks of free blocks may differ (that is the point): only in-use ones are read
        olds = [
            x for x in sorted(old.exceptions()) if x * cb < old.size_bytes and _in_use(fs, x, cb)
        ]
        for run in _runs(olds):
            length = min(len(run) * cb, old.size_bytes - run[0] * cb)
            a = old.pread(length, run[0] * cb)
            b = new.pread(length, run[0] * cb)
            if a == b:
                continue
            for k, chunk in enumerate(run):
                if a[k * cb : (k + 1) * cb] != b[k * cb : (k + 1) * cb]:
                    _fail(tmp, f"chunk {chunk} reads differently through the new store")
    state["new_table"] = table_sha256(tmp)
    state["old_table"] = table_sha256(overlay)
    bk.kill_point("compact-verified")
    _write_record(record, {"new_table": state["new_table"], "old_table": state["old_table"]})


def _source_runs(olds: list[int], table: dict[int, int], most: int = 256) -> list[list[int]]:
    """Kept chunks in order, cut where their data is not consecutive in the old store."""
    out: list[list[int]] = []
    for c in olds:
        if out and table[c] == table[out[-1][-1]] + 1 and len(out[-1]) < most:
            out[-1].append(c)
        else:
            out.append([c])
    return out


def _runs(chunks: list[int], most: int = 256) -> list[list[int]]:
    out: list[list[int]] = []
    for c in chunks:
        if out and c == out[-1][-1] + 1 and len(out[-1]) < most:
            out[-1].append(c)
        else:
            out.append([c])
    return out


def _in_use(fs: Ext4Map, chunk: int, cb: int) -> bool:
    bs, n = fs.sb.block_size, fs.sb.blocks_count
    lo, hi = chunk * cb // bs, ((chunk + 1) * cb - 1) // bs
    return lo >= n or any(fs.in_use(b) for b in range(lo, min(hi, n - 1) + 1))


def _fail(tmp: Path, why: str) -> None:
    tmp.unlink(missing_ok=True)
    raise CorruptError(
        f"verification failed: {why}; the new store was deleted, the old one is untouched",
        "please report this with `liveos-overlay du --json` output",
    )


def _switch(overlay: Path, tmp: Path, bak: Path, record: Path, state: dict[str, Any]) -> None:
    if exchange(tmp, overlay):
        bk.kill_point("compact-exchanged")
        os.rename(tmp, bak)
    else:
        os.rename(overlay, bak)
        bk.kill_point("compact-exchanged")
        os.rename(tmp, overlay)
    _fsync_dir(overlay.parent)
    st = overlay.stat()
    _write_record(record, {**state, "new_mtime_ns": st.st_mtime_ns, "done": True})


# -- restore -----------------------------------------------------------------------------------


def plan_restore(medium: Medium, *, force: bool = False) -> Plan:
    overlay = _check_medium(medium)
    bk.refuse_in_use(overlay, "restored")
    if not medium.opened_readonly:
        bk.refuse_readonly(overlay)
    tmp, bak, record = names(overlay)
    plan = Plan("undo compact", str(overlay))
    if not bak.exists() and not tmp.exists():
        raise TargetError(
            f"no {bak.name} beside {overlay.name}: there is no compact to undo",
            "the backup of the old store is deleted, or compact never ran here",
        )
    rec = _read_record(record) or {}
    if bak.exists() and overlay.exists() and rec.get("done"):
        used = table_sha256(overlay) != rec.get("new_table") or (
            rec.get("new_mtime_ns") not in (None, overlay.stat().st_mtime_ns)
        )
        if used and not force:
            raise CorruptError(
                f"{overlay.name} was written to since compact: restoring the old store "
                "loses those changes",
                "add --force to restore anyway",
            )
        if used:
            plan.destroys.append(f"the changes made in {overlay.name} since it was compacted")
    plan.add("finish any interrupted compact", lambda: _preflight(overlay))
    plan.add(
        f"swap {bak.name} back in as {overlay.name}, delete the compacted store",
        lambda: _restore(overlay, bak, record),
    )
    return plan


def _restore(overlay: Path, bak: Path, record: Path) -> None:
    if not bak.exists():
        return  # finish_leftovers already put the old store back
    if exchange(bak, overlay):
        bk.kill_point("restore-exchanged")
        os.unlink(bak)
    else:
        os.rename(bak, overlay)  # replaces the compacted store in one step
    record.unlink(missing_ok=True)
    _fsync_dir(overlay.parent)
