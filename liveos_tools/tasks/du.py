"""`liveos-overlay du`: which files, metadata and dead chunks fill the overlay.

Every data chunk of the store (every exception) lands in exactly one bucket, checked in
this order:

1. reclaimable, deleted: every filesystem block the chunk covers is free in the merged
   filesystem (the block bitmaps of what the kernel shows);
2. reclaimable, unchanged: the chunk's bytes in the store equal the base's bytes;
3. otherwise the owner of the lowest-numbered in-use block in the chunk: a file (by path),
   or a kind of filesystem metadata (ext4map.Meta).

Rule 3 decides when a chunk spans several blocks with different owners (chunk larger
than the block: 16 or 32 sectors over 4 KiB blocks, or 1 KiB blocks). A chunk smaller
than a block belongs to that block's owner. So the parts add up exactly to the
overlay's data chunks, and buckets 1 and 2 are exactly what `compact` drops.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from liveos_tools.cow import CowStore
from liveos_tools.errors import LiveOSError, TargetError
from liveos_tools.ext4map import META_BY_CODE, Ext4Map, Meta

SCHEMA = "liveos-tools/du/1"
#: chunks compared with the base per read (runs of consecutive chunks share one pread)
_BATCH = 256

Progress = Callable[[int, int], None]


class View(Protocol):
    """What du reads: the snapshot's view and the exception table (MergedView's shape)."""

    size_bytes: int
    chunk_bytes: int

    def exceptions(self) -> Mapping[int, int]: ...
    def pread(self, length: int, offset: int) -> bytes: ...


def _pread_all(fd: int, length: int, offset: int, what: str) -> bytes:
    try:
        data = os.pread(fd, length, offset)
    except OSError as exc:
        raise TargetError(f"{what}: read error at byte {offset}: {exc.strerror}") from None
    if len(data) < length:
        data += bytes(length - len(data))  # past the end of a short base reads as zeros
    return data


class RawReads:
    """The origin and the store read directly: du compares a chunk's two copies."""

    def __init__(self, base: str, store: str) -> None:
        from liveos_tools.cow import open_readonly

        self.base_path, self.store_path = base, store
        self._base = open_readonly(base, "base image")
        try:
            self._store = open_readonly(store, "overlay")
        except BaseException:
            os.close(self._base)
            raise

    def base(self, length: int, offset: int) -> bytes:
        return _pread_all(self._base, length, offset, self.base_path)

    def store(self, length: int, offset: int) -> bytes:
        return _pread_all(self._store, length, offset, self.store_path)

    def close(self) -> None:
        os.close(self._base)
        os.close(self._store)


class LiveView:
    """The running system: the kernel's snapshot device itself, and its table read from
    the store device (resolved the way the kernel resolves it)."""

    def __init__(self, device: str, store: str) -> None:
        from liveos_tools.cow import open_readonly
        from liveos_tools.merge import kernel_lookup

        with CowStore(store) as cs:
            self.chunk_bytes = cs.geometry().chunk_bytes
            self._map = kernel_lookup(cs.exceptions())
        self._fd = open_readonly(device, "live root device")
        self.size_bytes = os.lseek(self._fd, 0, os.SEEK_END)
        self.device = device

    def exceptions(self) -> Mapping[int, int]:
        return self._map

    def pread(self, length: int, offset: int) -> bytes:
        return _pread_all(self._fd, length, offset, self.device)

    def close(self) -> None:
        os.close(self._fd)


@dataclass(frozen=True)
class DuReport:
    chunk_bytes: int
    block_bytes: int
    data_chunks: int
    deleted_chunks: int
    unchanged_chunks: int
    #: metadata kind -> chunks
    metadata: Mapping[Meta, int]
    #: path as seen in the live system -> chunks
    files: Mapping[str, int]
    fs_clean: bool
    target: str = ""
    overlay: str = ""
    warnings: tuple[str, ...] = field(default=())

    @property
    def reclaimable_chunks(self) -> int:
        return self.deleted_chunks + self.unchanged_chunks

    @property
    def file_chunks(self) -> int:
        return sum(self.files.values())

    @property
    def metadata_chunks(self) -> int:
        return sum(self.metadata.values())

    def directories(self, depth: int) -> dict[str, int]:
        """Chunks under each directory down to `depth` levels ("/" is depth 0)."""
        dirs: dict[str, int] = {}
        for path, n in self.files.items():
            parts = path.strip("/").split("/")[:-1]
            dirs["/"] = dirs.get("/", 0) + n
            for k in range(1, min(depth, len(parts)) + 1):
                d = "/" + "/".join(parts[:k])
                dirs[d] = dirs.get(d, 0) + n
        return dirs

    def to_json(self, *, depth: int = 3, top: int = 20) -> dict[str, Any]:
        cb = self.chunk_bytes
        dirs = sorted(self.directories(depth).items(), key=lambda kv: (-kv[1], kv[0]))
        files = sorted(self.files.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
        return {
            "schema": SCHEMA,
            "target": self.target,
            "overlay": self.overlay,
            "chunk_bytes": cb,
            "block_bytes": self.block_bytes,
            "fs_clean": self.fs_clean,
            "data_chunks": self.data_chunks,
            "data_bytes": self.data_chunks * cb,
            "files_bytes": self.file_chunks * cb,
            "metadata_bytes": self.metadata_chunks * cb,
            "metadata": {m.value: n * cb for m, n in self.metadata.items() if n},
            "reclaimable_bytes": self.reclaimable_chunks * cb,
            "reclaimable": {
                "deleted": self.deleted_chunks * cb,
                "unchanged": self.unchanged_chunks * cb,
            },
            "depth": depth,
            "directories": [{"path": p, "bytes": n * cb} for p, n in dirs],
            "top_files": [{"path": p, "bytes": n * cb} for p, n in files],
            "warnings": list(self.warnings),
        }


def _runs(items: list[tuple[int, int]]) -> Iterator[list[tuple[int, int]]]:
    """Split (old, new) pairs sorted by old into runs consecutive in both, at most _BATCH."""
    run: list[tuple[int, int]] = []
    for old, new in items:
        if run and (old != run[-1][0] + 1 or new != run[-1][1] + 1 or len(run) >= _BATCH):
            yield run
            run = []
        run.append((old, new))
    if run:
        yield run


@dataclass(frozen=True)
class Classified:
    """Every exception sorted into du's buckets; compact keeps `kept`."""

    fs: Ext4Map
    chunk_bytes: int
    data_chunks: int
    deleted: frozenset[int]
    unchanged: frozenset[int]
    #: old chunk -> owner code (ext4map) of the chunks that stay, ascending
    kept: Mapping[int, int]


def classify(
    view: View,
    base: Callable[[int, int], bytes],
    store: Callable[[int, int], bytes],
    *,
    progress: Progress | None = None,
    keep_free: bool = False,
    exact: bool = True,
) -> Classified:
    """Put every exception of `view` in exactly one bucket (see the module docstring).

    `base` and `store` read the origin and the store file: a chunk whose two copies are
    equal is reclaimable, whatever the filesystem thinks of it. With `keep_free`, chunks
    of free blocks are treated as in use (a filesystem whose journal needs replaying has
    bitmaps that may be older than its data).

    Comparing means reading every chunk of the store and of the base. Without `exact`
    only the chunks whose blocks the base filesystem already used are compared (a file
    rewritten with the same bytes); a block the base had free and the overlay now uses is
    taken as changed. That finds the usual unchanged chunks at a fraction of the reads.
    """
    fs = Ext4Map(view.pread, view.size_bytes)
    base_fs: Ext4Map | None = None
    if not exact:
        try:
            base_fs = Ext4Map(base, None, inodes=False)
        except LiveOSError:
            base_fs = None  # compare everything
    sb = fs.sb
    cb, bs = view.chunk_bytes, sb.block_size
    items = sorted(view.exceptions().items())
    deleted: set[int] = set()
    owner, nblocks = fs.owner, sb.blocks_count
    compare: list[tuple[int, int]] = []
    first_owner: dict[int, int] = {}
    bits, fdb = fs.block_bits, sb.first_data_block
    last_chunk = -(-view.size_bytes // cb)
    same = cb == bs and fdb == 0
    for old, new in items:
        if same and old < nblocks:
            # the common case (4 KiB chunks over 4 KiB blocks), inlined: a million chunks
            if bits[old >> 3] >> (old & 7) & 1 or keep_free:
                first_owner[old] = owner[old]
                compare.append((old, new))
            else:
                deleted.add(old)
            continue
        lo, hi = old * cb // bs, ((old + 1) * cb - 1) // bs
        if old >= last_chunk:
            deleted.add(old)  # past the device's end: the kernel never shows it
            continue
        if lo >= nblocks:
            first_owner[old] = Meta.OUTSIDE.code
            compare.append((old, new))
            continue
        used = next((b for b in range(lo, min(hi, nblocks - 1) + 1) if fs.in_use(b)), None)
        if used is None and not keep_free:
            deleted.add(old)
            continue
        first_owner[old] = owner[lo if used is None else used]
        compare.append((old, new))
    unchanged: set[int] = set()
    kept: dict[int, int] = {}
    if base_fs is not None:
        compare = _base_used(base_fs, compare, cb, kept, first_owner)
    done = 0
    for run in _runs(compare):
        a = base(len(run) * cb, run[0][0] * cb)
        b = store(len(run) * cb, run[0][1] * cb)
        for k, (old, _new) in enumerate(run):
            if a[k * cb : (k + 1) * cb] == b[k * cb : (k + 1) * cb]:
                unchanged.add(old)
            else:
                kept[old] = first_owner[old]
        done += len(run)
        if progress:
            progress(done, len(compare))
    kept = dict(sorted(kept.items()))
    return Classified(fs, cb, len(items), frozenset(deleted), frozenset(unchanged), kept)


def _base_used(
    base_fs: Ext4Map,
    items: list[tuple[int, int]],
    cb: int,
    kept: dict[int, int],
    first_owner: dict[int, int],
) -> list[tuple[int, int]]:
    """The items whose chunk covers a block in use in the base; the others go to kept."""
    bs, n = base_fs.sb.block_size, base_fs.sb.blocks_count
    out = []
    if cb == bs and base_fs.sb.first_data_block == 0:
        bits = base_fs.block_bits  # the common case inlined, as in classify
        for old, new in items:
            if old >= n or bits[old >> 3] >> (old & 7) & 1:
                out.append((old, new))
            else:
                kept[old] = first_owner[old]
        return out
    for old, new in items:
        lo, hi = old * cb // bs, ((old + 1) * cb - 1) // bs
        if lo >= n or any(base_fs.in_use(b) for b in range(lo, min(hi, n - 1) + 1)):
            out.append((old, new))
        else:
            kept[old] = first_owner[old]
    return out


def attribute(
    view: View,
    base: Callable[[int, int], bytes],
    store: Callable[[int, int], bytes],
    *,
    progress: Progress | None = None,
    exact: bool = False,
) -> DuReport:
    """du's report: the classified chunks, the kept ones by owner and path."""
    c = classify(view, base, store, progress=progress, exact=exact)
    meta: dict[Meta, int] = {m: 0 for m in Meta}
    by_ino: dict[int, int] = {}
    for code, n in Counter(c.kept.values()).items():
        kind = META_BY_CODE.get(code)
        if kind is not None:
            meta[kind] += n
        elif code == 0:
            meta[Meta.OTHER] += n
        else:
            by_ino[code] = n
    paths = c.fs.paths()
    files: dict[str, int] = {}
    for ino, n in by_ino.items():
        path = paths.get(ino, f"/<inode {ino}: no path>")
        files[path] = files.get(path, 0) + n
    return DuReport(
        chunk_bytes=c.chunk_bytes,
        block_bytes=c.fs.sb.block_size,
        data_chunks=c.data_chunks,
        deleted_chunks=len(c.deleted),
        unchanged_chunks=len(c.unchanged),
        metadata=meta,
        files=files,
        fs_clean=c.fs.sb.clean,
    )


def _run(view: View, raw: RawReads, progress: Progress | None, exact: bool) -> DuReport:
    try:
        rep = attribute(view, raw.base, raw.store, progress=progress, exact=exact)
    finally:
        raw.close()
    warnings = []
    if not rep.fs_clean:
        warnings.append(
            "the root filesystem was not cleanly unmounted: its journal may hold newer "
            "metadata, so a few chunks may be attributed by older bitmaps"
        )
    return replace(rep, overlay=raw.store_path, warnings=tuple(warnings))


def du_store(
    base: str | Path,
    store: str | Path,
    *,
    progress: Progress | None = None,
    exact: bool = False,
) -> DuReport:
    """du of a base image and an overlay file, offline."""
    from liveos_tools.merge import MergedView

    with MergedView(base, store) as view:
        return _run(view, RawReads(str(base), str(store)), progress, exact)


def du_medium(
    target: str | None,
    *,
    livedir: str | None = None,
    progress: Progress | None = None,
    exact: bool = False,
) -> DuReport:
    """du of any TARGET `status` takes: the running system reads the kernel's view."""
    from liveos_tools.media import Source, open_medium
    from liveos_tools.merge import merged

    with open_medium(target, livedir=livedir) as medium:
        if medium.source is Source.LIVE and medium.live_dm:
            rep = _du_live(medium.live_dm, progress, exact)
        else:
            with merged(medium) as view:
                rep = _run(view, RawReads(view.base_path, view.store_path), progress, exact)
        return replace(rep, target=medium.target)


def _du_live(live_dm: str, progress: Progress | None, exact: bool) -> DuReport:
    """The running system: the filesystem as the kernel shows it (live-rw), the table and
    chunk data from the store's device, the base from the origin device."""
    from liveos_tools.tools import dmsetup

    lines = dmsetup.table(live_dm)
    snap = lines[0].snapshot if lines else None
    if snap is None:
        raise TargetError(f"{live_dm} is not a device-mapper snapshot")

    def node(ref: str) -> str:
        if ref.startswith("/") or os.path.exists(f"/dev/block/{ref}"):
            return ref if ref.startswith("/") else f"/dev/block/{ref}"
        # no udev (a rescue shell, the test guest): the kernel's name for major:minor
        try:
            with open(f"/sys/dev/block/{ref}/uevent") as f:
                names = [x[8:].strip() for x in f if x.startswith("DEVNAME=")]
        except OSError:
            names = []
        if not names:
            raise TargetError(f"no device node for {ref} (from the {live_dm} table)")
        return f"/dev/{names[0]}"

    device = f"/dev/mapper/{live_dm}"
    if not os.path.exists(device):
        device = dmsetup.info(live_dm).node
    origin, cow = node(snap.origin.text), node(snap.cow.text)
    view = LiveView(device, cow)
    try:
        return _run(view, RawReads(origin, cow), progress, exact)
    finally:
        view.close()


def check_sum(rep: DuReport) -> None:
    """The invariant du promises: the buckets add up to the data chunks."""
    total = rep.file_chunks + rep.metadata_chunks + rep.reclaimable_chunks
    if total != rep.data_chunks:
        raise LiveOSError(f"internal: du buckets add up to {total} of {rep.data_chunks} chunks")


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:5.1f}%" if whole else "    -"


def render_text(rep: DuReport, *, depth: int = 3, top: int = 10) -> str:
    """The learner's view: where the overlay went, what comes back, what to do."""
    from liveos_tools.units import format_size

    cb, total = rep.chunk_bytes, rep.data_chunks

    def size(n: int) -> str:
        return format_size(n * cb).rjust(10)

    lines = [
        f"overlay {rep.overlay or rep.target}: {format_size(total * cb)} of changes "
        f"in {total} chunks of {format_size(cb)}",
        f"  files        {size(rep.file_chunks)} {_pct(rep.file_chunks, total)}",
        f"  metadata     {size(rep.metadata_chunks)} {_pct(rep.metadata_chunks, total)}",
        f"  reclaimable  {size(rep.reclaimable_chunks)} {_pct(rep.reclaimable_chunks, total)}"
        f"  (deleted files {format_size(rep.deleted_chunks * cb)}, "
        f"unchanged {format_size(rep.unchanged_chunks * cb)})",
    ]
    meta = sorted(((m, n) for m, n in rep.metadata.items() if n), key=lambda x: -x[1])
    if meta:
        lines.append("")
        lines.append("metadata:")
        lines.extend(f"  {size(n)}  {m.value}" for m, n in meta)
    dirs = sorted(rep.directories(depth).items(), key=lambda kv: (-kv[1], kv[0]))
    dirs = [(p, n) for p, n in dirs if p != "/"][:top]
    if dirs:
        lines.append("")
        lines.append(f"largest directories (down to {depth} levels):")
        lines.extend(f"  {size(n)}  {p}" for p, n in dirs)
    files = sorted(rep.files.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    if files:
        lines.append("")
        lines.append("largest files:")
        lines.extend(f"  {size(n)}  {p}" for p, n in files)
    lines.append("")
    lines.extend(f"advice: {a}" for a in advice(rep))
    lines.extend(f"warning: {w}" for w in rep.warnings)
    return "\n".join(lines)


def advice(rep: DuReport) -> list[str]:
    from liveos_tools.units import format_size

    out = []
    back = rep.reclaimable_chunks * rep.chunk_bytes
    if back:
        out.append(
            f"`liveos-overlay compact` gives back {format_size(back)} "
            "(run it with the stick not booted: from another system)"
        )
    else:
        out.append("nothing to reclaim: every chunk holds live data")
    out.append("`liveos-overlay economize` shows what fills the overlay day after day")
    return out


# -- the monitor's summary (non-root learners read it from /run/liveos-tools/status.json) --

#: how old the published du summary may get before the monitor starts a new one
SUMMARY_MAX_AGE = 600.0
_summary: dict[str, Any] = {"doc": None, "busy": False}
_summary_lock = threading.Lock()


def summary_doc(rep: DuReport, *, taken_at: float) -> dict[str, Any]:
    doc = rep.to_json(depth=2, top=10)
    doc["taken_at"] = taken_at
    return doc


def cached_summary(
    *,
    max_age: float = SUMMARY_MAX_AGE,
    compute: Callable[[], DuReport] | None = None,
    now: float | None = None,
) -> dict[str, Any] | None:
    """The last du summary of the running system (None until the first is ready).

    du can take many seconds on a big overlay and the monitor publishes every few, so
    a stale summary is refreshed in a background thread while the old one is served.
    """
    now = time.time() if now is None else now
    with _summary_lock:
        doc: dict[str, Any] | None = _summary["doc"]
        stale = doc is None or now - float(doc.get("taken_at", 0)) > max_age
        if stale and not _summary["busy"]:
            _summary["busy"] = True
            job = compute or (lambda: du_medium(None))
            threading.Thread(target=_refresh, args=(job,), daemon=True).start()
    return doc


def _refresh(job: Callable[[], DuReport]) -> None:
    try:
        doc = summary_doc(job(), taken_at=time.time())
    except LiveOSError as err:
        doc = {"error": err.message, "hint": err.hint, "taken_at": time.time()}
    except Exception as exc:  # a bug must not kill the monitor's thread silently
        doc = {"error": f"internal: {exc.__class__.__name__}: {exc}", "taken_at": time.time()}
    with _summary_lock:
        _summary["doc"] = doc
        _summary["busy"] = False
