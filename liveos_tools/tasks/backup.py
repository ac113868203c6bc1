"""Backups of an overlay's bytes before a writing command changes them, and their restore.

A backup is one file, written whole before the overlay is touched:

    LIVEOS-TOOLS-BACKUP 1\\n
    <one line of JSON: what, where, sizes, checksums>\\n
    <the saved regions, back to back>

It is written under a temporary name, fsynced, renamed into place and its directory
fsynced, so a backup file that exists is complete. It records the overlay's name
(the label dracut matches), size, first 16 bytes (magic, valid, version, chunk size),
the sha256 of every saved region and of the store's header and exception table
(`table_digest`). The integrity record is proportional to what the command changes,
never a read of the whole overlay: on a 1 GiB overlay a whole-file sha256 took 35
times as long as the e2fsck it protected.

A repair also keeps an *undo store*: a device-mapper snapshot of the overlay itself,
so every chunk that e2fsck changes through the repair snapshot is first copied out by
the kernel (a persistent store, committed before the write proceeds). Restoring puts
those chunks back, then the saved regions, then cuts the file back to its old size,
and checks the exception table's digest: the overlay comes back byte for byte, since
every byte the repair changed is either in a saved region or in the undo store.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import os
import secrets
import signal
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from liveos_tools import mounts
from liveos_tools.errors import (
    AbortedError,
    CorruptError,
    InUseError,
    LiveOSError,
    TargetError,
    UsageError,
)
from liveos_tools.plan import Plan, Progress
from liveos_tools.tasks import leftovers as lf

if TYPE_CHECKING:
    from liveos_tools.media import Medium

MAGIC_LINE = b"LIVEOS-TOOLS-BACKUP 1\n"
SUFFIX = ".lobak"
UNDO_SUFFIX = ".undo"
DEFAULT_DIR = Path("/var/lib/liveos-tools/backups")
ENV_DIR = "LIVEOS_BACKUP_DIR"
#: Crash-safety tests arm this inside the process under test (tests/support/killable.py).
#: It is deliberately not read from the environment: no variable a user or a typo can
#: set makes a shipped command kill itself.
KILL_AT: str | None = None
_BLOCK = 1024 * 1024
RAM_FILESYSTEMS = ("tmpfs", "ramfs")


def kill_point(name: str) -> None:
    """Crash-safety tests kill the command at named points of its write order.

    KILL_AT=<point> sends SIGKILL (a power cut); <point>:INT sends SIGINT (Ctrl-C),
    which the command must answer by tearing down and restoring.
    """
    want = KILL_AT
    if want == name:
        os.kill(os.getpid(), signal.SIGKILL)
    elif want == f"{name}:INT":
        os.kill(os.getpid(), signal.SIGINT)


@dataclass(frozen=True)
class Region:
    offset: int
    length: int
    sha256: str


@dataclass(frozen=True)
class BackupRecord:
    op: str
    overlay: str
    label: str
    size_bytes: int
    head_hex: str  # the overlay's first 16 bytes before the change
    regions: tuple[Region, ...]
    payload_sha256: str
    overlay_sha256: str | None
    created: str
    run_id: str
    #: the undo store's file name (same directory as the backup), if the op keeps one.
    undo: str | None = None
    #: where a killed repair left its mounts and devices, so restore can clear them.
    workdir: str | None = None
    dm_prefix: str | None = None
    notes: tuple[str, ...] = field(default=())
    #: the target as the user gave it (an image, a device, a directory) and the overlay's
    #: path inside that medium: a temporary mount point is gone by the time of a restore.
    medium_target: str | None = None
    medium_source: str | None = None
    inner: str | None = None
    #: the state the operation left the overlay in (recorded once it finished): a restore
    #: checks it first, so it never writes old bytes over a store changed since.
    after_size: int | None = None
    after_regions: tuple[Region, ...] = ()
    after_sha256: str | None = None
    #: sha256 of the header chunk and exception table before the change (table_digest).
    table_sha256: str | None = None
    #: once finished: the table and the root filesystem's superblock chunk (seal_digest).
    after_digest: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["regions"] = [asdict(r) for r in self.regions]
        data["after_regions"] = [asdict(r) for r in self.after_regions]
        data["notes"] = list(self.notes)
        return data

    @staticmethod
    def from_json(data: dict[str, Any]) -> BackupRecord:
        try:
            regions = tuple(Region(**r) for r in data["regions"])
            fields = {k: v for k, v in data.items() if k in BackupRecord.__dataclass_fields__}
            fields["regions"] = regions
            fields["after_regions"] = tuple(Region(**r) for r in data.get("after_regions", ()))
            fields["notes"] = tuple(data.get("notes", ()))
            return BackupRecord(**fields)
        except (KeyError, TypeError) as exc:
            raise CorruptError(f"the backup's description is incomplete ({exc})") from None


@dataclass(frozen=True)
class Backup:
    path: Path
    record: BackupRecord

    @property
    def undo_path(self) -> Path | None:
        return self.path.parent / self.record.undo if self.record.undo else None


# --- where backups go ---------------------------------------------------------------------


def _same_filesystem(a: Path, b: Path) -> bool:
    with contextlib.suppress(OSError):
        return os.stat(a).st_dev == os.stat(b).st_dev
    return False


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def choose_dir(overlay: Path, explicit: str | Path | None = None) -> tuple[Path, list[str]]:
    """Where this command's backup goes, and notes for the plan.

    The user's choice wins, then $LIVEOS_BACKUP_DIR, then /var/lib/liveos-tools/backups
    as long as that is not on the stick being changed; else the stick's top directory.
    A directory in RAM (the usual case in a rescue shell) is used, with a warning.
    """
    notes: list[str] = []
    if explicit is not None:
        chosen = Path(explicit)
    elif os.environ.get(ENV_DIR):
        chosen = Path(os.environ[ENV_DIR])
    else:
        chosen = DEFAULT_DIR
        parent = _existing_parent(chosen)
        if _same_filesystem(parent, overlay.parent) or not os.access(parent, os.W_OK):
            chosen = overlay.parent.parent / "liveos-backups"
            notes.append(
                f"the backup goes onto the stick itself ({chosen}): no other writable place"
            )
    mount = mounts.mount_of(_existing_parent(chosen))
    if mount is not None and mount.fstype in RAM_FILESYSTEMS:
        notes.append(
            f"the backup directory {chosen} is in RAM ({mount.fstype}): copy the backup to "
            "another disk before you reboot, or give --backup-dir"
        )
    return chosen, notes


# --- writing --------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Origin(NamedTuple):
    """Where an overlay was found, as the user named it (see BackupRecord)."""

    target: str
    source: str
    inner: str | None

    @staticmethod
    def of(medium: Medium, overlay: Path) -> Origin:
        inner = None
        if medium.root is not None:
            with contextlib.suppress(ValueError):
                inner = str(overlay.relative_to(medium.root))
        return Origin(medium.target, medium.source.value, inner)

    def describe(self, overlay: Path) -> str:
        """The overlay as the user knows it: 'disk.img: LiveOS/overlay-...' for an
        image or device (whose mount point is temporary), else its path."""
        if self.source in ("image", "device") and self.inner:
            return f"{self.target}: {self.inner}"
        return str(overlay)


def _make_dirs(directory: Path) -> None:
    """mkdir -p, fsyncing each directory it creates and the one that holds it."""
    missing = []
    d = directory
    while not d.exists() and d != d.parent:
        missing.append(d)
        d = d.parent
    for new in reversed(missing):
        with contextlib.suppress(FileExistsError):
            new.mkdir()
        _fsync_dir(new)
        _fsync_dir(new.parent)


def _write_file(final: Path, record: BackupRecord, payload: bytes) -> None:
    """Write a backup under a temporary name, fsync it, rename it, fsync the directory."""
    tmp = final.with_name(final.name + ".part")
    with open(tmp, "wb") as out:
        out.write(MAGIC_LINE)
        out.write(json.dumps(record.to_json(), sort_keys=True).encode() + b"\n")
        out.write(payload)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def zeros_sha256(length: int) -> str:
    h = hashlib.sha256()
    block = bytes(min(_BLOCK, max(length, 0)))
    left = length
    while left > 0:
        h.update(block[: min(len(block), left)])
        left -= len(block)
    return h.hexdigest()


def seal(
    backup: Backup,
    *,
    size: int,
    regions: tuple[Region, ...] = (),
    digest: str | None = None,
) -> Backup:
    """Record in the backup the state the operation left the overlay in (atomically)."""
    rec = dataclasses.replace(
        backup.record, after_size=size, after_regions=regions, after_digest=digest
    )
    try:
        payload = read_backup(backup.path)[1]
        _write_file(backup.path, rec, payload)
    except OSError as exc:
        raise TargetError(
            f"cannot update the backup {backup.path}: {exc.strerror}",
            "the operation itself finished; a restore from this backup will not be able to "
            "check that the overlay is unchanged since",
        ) from None
    return Backup(backup.path, rec)


def changed_since(backup: Backup, overlay: Path) -> str | None:
    """Why the overlay is no longer as the operation left it, or None if it is (or if the
    backup does not say: an operation that did not finish, an older backup)."""
    rec = backup.record
    if rec.after_size is None:
        return None
    try:
        size = overlay.stat().st_size
        if size != rec.after_size:
            return f"it is {size} bytes, the {rec.op} left it at {rec.after_size}"
        with open(overlay, "rb") as f:
            for r in rec.after_regions:
                h = hashlib.sha256()
                f.seek(r.offset)
                left = r.length
                while left > 0:
                    block = f.read(min(_BLOCK, left))
                    if not block:
                        break
                    h.update(block)
                    left -= len(block)
                if h.hexdigest() != r.sha256:
                    return f"bytes {r.offset}..{r.offset + r.length} changed since the {rec.op}"
        if rec.after_sha256 is not None and file_sha256(overlay) != rec.after_sha256:
            return f"its contents changed since the {rec.op}"
        if rec.after_digest is not None and seal_digest(overlay) != rec.after_digest:
            return "its exception table or its root filesystem's superblock changed since"
    except OSError as exc:
        return f"it cannot be read: {exc.strerror}"
    return None


def changed_since_zero(path: Path, offset: int, length: int) -> bool:
    """True if `length` bytes of `path` at `offset` are not all zeros."""
    with open(path, "rb") as f:
        f.seek(offset)
        left = length
        while left > 0:
            block = f.read(min(_BLOCK, left))
            if not block:
                break
            if block.count(0) != len(block):
                return True
            left -= len(block)
    return False


def file_sha256(path: Path, length: int | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = length
        while left is None or left > 0:
            block = f.read(_BLOCK if left is None else min(_BLOCK, left))
            if not block:
                break
            h.update(block)
            if left is not None:
                left -= len(block)
    return h.hexdigest()


def table_digest(path: Path) -> str:
    """sha256 of a store's header chunk and its exception table, read as the kernel does
    (area by area from area 0, up to the first area that is not full). A file that is
    not a store (a new, all-zero one) is digested by its first 64 KiB: what a reset zeroes.
    Cost: one chunk per 256 data chunks, never the data."""
    return _table(path)[0]


def _table(path: Path) -> tuple[str, int | None, int]:
    """(table_digest, the COW chunk holding the origin's superblock or None, chunk size)."""
    from liveos_tools.cow import MAGIC, RESET_BYTES

    h = hashlib.sha256()
    first: int | None = None
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, 16, 0)
        fields = struct.unpack("<IIII", head) if len(head) == 16 else (0, 0, 0, 0)
        chunk = fields[3]
        if fields[0] != MAGIC or chunk <= 0 or chunk & (chunk - 1):
            h.update(os.pread(fd, RESET_BYTES, 0))
            return h.hexdigest(), None, RESET_BYTES
        cb = chunk * 512
        epa = cb // 16
        sb_chunk = 1024 // cb  # the ext superblock sits at byte 1024 of the origin
        h.update(os.pread(fd, cb, 0))
        area = 0
        while True:
            offset = (1 + (epa + 1) * area) * cb
            if offset >= size:
                break
            data = os.pread(fd, cb, offset)
            h.update(data)
            if len(data) == cb:
                # List operations, not a Python loop per entry: 256 entries per area.
                pairs = memoryview(data).cast("Q")
                olds, news = pairs[0::2].tolist(), pairs[1::2].tolist()
                if 0 in news:
                    olds = olds[: news.index(0)]  # the table ends at the first unused entry
                if sb_chunk in olds:
                    # The last entry for a chunk wins, as in the kernel.
                    first = news[len(olds) - 1 - olds[::-1].index(sb_chunk)]
            # Entries fill in order: an area is full iff its last entry is in use.
            if len(data) < cb or data[-8:] == bytes(8):
                break
            area += 1
    finally:
        os.close(fd)
    return h.hexdigest(), first, cb


def seal_digest(overlay: Path) -> str:
    """What a later restore checks to know the overlay is still as the operation left it:
    the exception table's digest and the chunk holding the root filesystem's superblock
    (byte 1024 of the origin). Whatever boots from the overlay after that writes one or the other:
    a new chunk changes the table, and ext4 rewrites its superblock at every read-write
    mount. Reads one chunk per 256, never the data."""
    digest, first, cb = _table(overlay)
    h = hashlib.sha256(digest.encode())
    if first is not None:
        fd = os.open(overlay, os.O_RDONLY | os.O_CLOEXEC)
        try:
            h.update(os.pread(fd, cb, first * cb))
        finally:
            os.close(fd)
    return h.hexdigest()


def new_run_id() -> str:
    return secrets.token_hex(4)


def backup_name(overlay: Path, op: str, run_id: str) -> str:
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{overlay.name}.{stamp}.{op}.{run_id}{SUFFIX}"


def write_backup(
    overlay: Path,
    op: str,
    regions: list[tuple[int, int]],
    directory: Path,
    *,
    run_id: str,
    whole_hash: bool = True,  # a table_digest (the name is kept for callers)
    undo_bytes: int | None = None,
    workdir: str | None = None,
    dm_prefix: str | None = None,
    notes: tuple[str, ...] = (),
    origin: Origin | None = None,
) -> Backup:
    """Save `regions` of the overlay (and make an empty undo store); durable on return."""
    try:
        _make_dirs(directory)
        size = overlay.stat().st_size
        saved: list[Region] = []
        chunks: list[bytes] = []
        with open(overlay, "rb") as f:
            head = f.read(16)
            for offset, length in regions:
                f.seek(offset)
                data = f.read(max(0, min(length, size - offset)))
                saved.append(Region(offset, len(data), hashlib.sha256(data).hexdigest()))
                chunks.append(data)
        payload = b"".join(chunks)
        name = backup_name(overlay, op, run_id)
        undo_name = name.removesuffix(SUFFIX) + UNDO_SUFFIX if undo_bytes else None
        record = BackupRecord(
            op=op,
            overlay=str(overlay.resolve()),
            label=overlay.name,
            size_bytes=size,
            head_hex=head.hex(),
            regions=tuple(saved),
            payload_sha256=hashlib.sha256(payload).hexdigest(),
            overlay_sha256=None,
            table_sha256=table_digest(overlay) if whole_hash else None,
            created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            run_id=run_id,
            undo=undo_name,
            workdir=workdir,
            dm_prefix=dm_prefix,
            notes=notes,
            medium_target=origin.target if origin else None,
            medium_source=origin.source if origin else None,
            inner=origin.inner if origin else None,
        )
        if undo_name and undo_bytes:
            # A zero header is a new store: the kernel initialises it on first use.
            undo = directory / undo_name
            with open(undo, "wb") as u:
                u.truncate(undo_bytes)
                os.fsync(u.fileno())
        final = directory / name
        _write_file(final, record, payload)
    except OSError as exc:
        raise TargetError(
            f"cannot write the backup in {directory}: {exc.strerror}",
            "nothing was changed; give --backup-dir on a disk with free space",
        ) from None
    return Backup(final, record)


# --- reading and restoring ------------------------------------------------------------------


def read_backup(path: str | Path) -> tuple[Backup, bytes]:
    """Read a backup file and verify every checksum in it."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{p}: no such backup file", "backups end in .lobak") from None
    except OSError as exc:
        raise TargetError(f"{p}: {exc.strerror}") from None
    if not data.startswith(MAGIC_LINE):
        raise CorruptError(f"{p} is not a liveos-tools backup", "backups end in .lobak")
    line_end = data.find(b"\n", len(MAGIC_LINE))
    if line_end < 0:
        raise CorruptError(f"{p}: the backup is truncated", "it cannot be used")
    try:
        meta = json.loads(data[len(MAGIC_LINE) : line_end])
    except ValueError:
        raise CorruptError(f"{p}: the backup's description is damaged") from None
    record = BackupRecord.from_json(meta)
    payload = data[line_end + 1 :]
    if hashlib.sha256(payload).hexdigest() != record.payload_sha256:
        raise CorruptError(
            f"{p}: the backup's checksum does not match: it is damaged",
            "nothing was changed; use another copy of the backup",
        )
    pos = 0
    for region in record.regions:
        part = payload[pos : pos + region.length]
        if len(part) != region.length or hashlib.sha256(part).hexdigest() != region.sha256:
            raise CorruptError(f"{p}: region at {region.offset} is damaged")
        pos += region.length
    return Backup(p, record), payload


def check_belongs(backup: Backup, overlay: Path) -> None:
    """Refuse to restore a backup onto an overlay it was not taken from."""
    rec = backup.record
    if overlay.name != rec.label:
        raise UsageError(
            f"the backup belongs to {rec.label}, not to {overlay.name}",
            f"point at the overlay the backup was made from ({rec.overlay})",
        )
    try:
        size = overlay.stat().st_size
        with open(overlay, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise TargetError(f"{overlay}: {exc.strerror}") from None
    old = bytes.fromhex(rec.head_hex)
    # A repair flips valid and a reset zeroes the header; magic and chunk size stay.
    same_store = head[:4] == old[:4] and head[8:16] == old[8:16]
    zeroed = not any(head)
    if not (same_store or zeroed):
        raise UsageError(
            f"{overlay} does not look like the overlay this backup was taken from "
            f"(its header reads {head.hex()}, the backup's {old.hex()})",
            "check that you picked the right backup and the right stick",
        )
    if size < rec.size_bytes:
        raise UsageError(
            f"{overlay} is smaller ({size} bytes) than when the backup was taken "
            f"({rec.size_bytes} bytes)",
            "it was shrunk or replaced since; this backup cannot bring it back",
        )


def restore(backup: Backup, payload: bytes, overlay: Path) -> bool:
    """Write the backup back; return True if its checksums prove it exact (the saved
    regions and the undo store hold every byte the operation changed; the exception
    table's digest, and for older backups the whole file's sha256, is checked)."""
    from liveos_tools.cow import CowStore

    rec = backup.record
    undo = backup.undo_path
    try:
        fd = os.open(overlay, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise TargetError(f"{overlay}: {exc.strerror}") from None
    try:
        if undo is not None and undo.exists():
            with CowStore(undo) as store:
                chunk = store.geometry().chunk_bytes
                # The kernel copied out each overlay chunk before its first change.
                for old, new in store.exceptions():
                    data = store._pread(chunk, new * chunk)
                    if old * chunk < rec.size_bytes:
                        os.pwrite(fd, data[: rec.size_bytes - old * chunk], old * chunk)
        pos = 0
        for region in rec.regions:
            os.pwrite(fd, payload[pos : pos + region.length], region.offset)
            pos += region.length
        os.ftruncate(fd, rec.size_bytes)
        os.fsync(fd)
    except OSError as exc:
        raise TargetError(
            f"restoring {overlay} failed: {exc.strerror}",
            "the backup is unchanged: fix the cause and run repair --restore again",
        ) from None
    finally:
        os.close(fd)
    if rec.overlay_sha256 is None and rec.table_sha256 is None:
        return False
    if rec.table_sha256 is not None and table_digest(overlay) != rec.table_sha256:
        raise CorruptError(
            f"{overlay} was restored, but its exception table differs from the original's",
            "it was changed after the backup in ways the backup does not cover "
            "(was the stick booted since?)",
        )
    if rec.overlay_sha256 is not None and file_sha256(overlay) != rec.overlay_sha256:
        raise CorruptError(
            f"{overlay} was restored, but its checksum differs from the original's",
            "it was changed after the backup in ways the backup does not cover "
            "(was the stick booted since?)",
        )
    return True


# --- in use? ----------------------------------------------------------------------------------


def loop_users(path: Path) -> list[tuple[str, list[str]]]:
    """Loop devices backed by `path`, each with the dm devices holding it (from sysfs).

    Without losetup (or when it fails) nobody can tell whether the overlay is in use,
    so that is an error (exit 7 / 8), never an empty answer.
    """
    from liveos_tools.run import require
    from liveos_tools.tools import losetup

    require("losetup")
    try:
        found = losetup.find_by_file(path)
    except OSError as exc:
        raise TargetError(f"{path}: {exc.strerror}", "check the path to the overlay") from None
    out = []
    for dev in found:
        holders = Path("/sys/block") / Path(dev.name).name / "holders"
        names = sorted(h.name for h in holders.iterdir()) if holders.is_dir() else []
        out.append((dev.name, names))
    return out


def journal_dirs(path: Path, chosen: Path | None = None) -> list[Path]:
    """Where journals of interrupted runs on `path` may be: beside their backups."""
    dirs = [chosen] if chosen is not None else []
    if os.environ.get(ENV_DIR):
        dirs.append(Path(os.environ[ENV_DIR]))
    dirs += [DEFAULT_DIR, path.parent.parent / "liveos-backups", path.parent]
    return dirs


def foreign_users(
    path: Path, journals: list[lf.Journal]
) -> tuple[list[tuple[str, list[str]]], bool]:
    """The loop devices on `path` that are NOT leftovers of `journals`, and whether any
    loop device on it is such a leftover."""
    users = loop_users(path)
    own_loops, own_dms = lf.holders_of(journals)
    foreign = [
        (loop, h) for loop, h in users if loop not in own_loops or any(x not in own_dms for x in h)
    ]
    return foreign, len(foreign) < len(users)


def refuse_in_use(path: Path, doing: str, *, clearing: list[lf.Journal] | None = None) -> None:
    """Refuse a file in use. Leftovers of runs in `clearing` are not a use (the caller
    clears them); leftovers of any other interrupted run are named, with what clears them."""
    if clearing is None and not loop_users(path):
        return  # the common case: nothing attached, no journals to read
    journals = lf.find(path, journal_dirs(path))
    foreign, _ = foreign_users(path, journals)
    if foreign:
        raise in_use_error(path, doing, foreign)
    refuse_leftovers(path, doing, journals, clearing)


def refuse_leftovers(
    path: Path,
    doing: str,
    journals: list[lf.Journal] | None = None,
    clearing: list[lf.Journal] | None = None,
) -> None:
    """Refuse while an interrupted run's leftovers hold `path` (other than `clearing`'s),
    naming that run, its backup, and the command that clears them."""
    if journals is None:
        if not loop_users(path):
            return
        journals = lf.find(path, journal_dirs(path))
    clear_ids = {j.run_id for j in clearing or []}
    for j in journals:
        if j.run_id not in clear_ids and lf.present(j):
            undo = f", or undo it: liveos-overlay repair --restore {j.backup}" if j.backup else ""
            raise InUseError(
                f"{path.name} is held by what {j.describe()} left behind "
                f"({', '.join(x.describe() for x in lf.present(j))}); it cannot be {doing} now",
                f"run {j.command} to clear them and finish it{undo}",
            )


def in_use_error(path: Path, doing: str, users: list[tuple[str, list[str]]]) -> InUseError:
    """Someone else's use: the loop devices, the dm devices on them, and the processes."""
    parts = []
    for loop, holders in users:
        named = [f"{h} ({n})" if (n := _dm_name(h)) else h for h in holders]
        parts.append(loop + (f" (held by {', '.join(named)})" if named else ""))
    procs = holding_processes(
        path, {Path(loop).name for loop, _ in users} | {h for _, hs in users for h in hs}
    )
    by = f"; in use by {', '.join(procs)}" if procs else ""
    return InUseError(
        f"{path.name} is in use: attached to {', '.join(parts)}{by}; it cannot be {doing} now",
        "shut down the live system that uses it and run this from another system, "
        "or release it (dmsetup remove, losetup -d) first",
    )


def _dm_name(kernel_name: str) -> str | None:
    with contextlib.suppress(OSError):
        return (Path("/sys/block") / kernel_name / "dm" / "name").read_text().strip() or None
    return None


def holding_processes(path: Path, devices: set[str]) -> list[str]:
    """'PID 1234 (nautilus)' for each process holding `path` open, one of `devices`
    (kernel names: loop2, dm-0) open, or a file or its cwd under where one is mounted."""
    try:
        import psutil
    except ImportError:
        return []
    majmins = set()
    for dev in devices:
        with contextlib.suppress(OSError, ValueError):
            major, minor = (Path("/sys/block") / dev / "dev").read_text().strip().split(":")
            majmins.add((int(major), int(minor)))
    points = [m.mountpoint.rstrip("/") + "/" for m in mounts.mounts() if m.majmin in majmins]
    nodes = {f"/dev/{d}" for d in devices}
    target = str(path.resolve())
    found = []
    for proc in psutil.process_iter(["pid", "name"]):
        if proc.pid == os.getpid():
            continue
        try:
            opened = [f.path for f in proc.open_files()]
            with contextlib.suppress(OSError):
                for fd in os.scandir(f"/proc/{proc.pid}/fd"):
                    with contextlib.suppress(OSError):
                        opened.append(os.path.realpath(fd.path))
            opened.append(proc.cwd().rstrip("/") + "/")
        except (psutil.Error, OSError):
            continue
        if any(p == target or p in nodes or p.startswith(tuple(points)) for p in opened):
            found.append(f"PID {proc.pid} ({proc.info['name']})")
    return found


def readonly_mount(path: Path) -> str | None:
    """Where `path`'s filesystem is mounted read-only, or None if it is writable.

    os.access(W_OK) says yes on a read-only mount, so ask the mount table and statvfs.
    """
    probe = _existing_parent(path)
    mount = mounts.mount_of(probe)
    if mount is not None and mount.readonly:
        return mount.mountpoint
    try:
        flags = os.statvfs(probe).f_flag
    except OSError:
        return None
    if flags & os.ST_RDONLY:
        return mount.mountpoint if mount is not None else str(probe)
    return None


def refuse_readonly(path: Path) -> None:
    where = readonly_mount(path)
    if where is not None:
        raise InUseError(
            f"the stick is mounted read-only at {where}: {path.name} cannot be changed",
            f"remount it read-write (mount -o remount,rw {where}) and try again",
        )


def refuse_unreadable_image(medium: Medium, doing: str) -> None:
    """A squashfs.img whose layout could not be read is told apart from an unsupported
    layout: a missing unsquashfs is exit 7, a damaged image exit 10, before anything
    is written."""
    from liveos_tools.media import ImageLayout
    from liveos_tools.run import require

    if medium.image_layout is not ImageLayout.UNKNOWN or medium.squashfs_path is None:
        return
    require("unsquashfs")
    from liveos_tools.tools import squashfs

    try:
        squashfs.find_paths(medium.squashfs_path, squashfs.NESTED_NAMES)
    except LiveOSError as err:
        raise CorruptError(
            f"the live image {medium.squashfs_path} cannot be read ({err.message}): "
            f"{doing} needs it as the base of the overlay",
            "nothing was changed; the stick's squashfs.img is damaged: copy the overlay "
            "off the stick, put a good squashfs.img of the same release back, then run "
            "this again",
        ) from None


def preflight(path: Path, doing: str) -> None:
    """Right before the first write: still not in use, still writable."""
    refuse_in_use(path, doing)
    refuse_readonly(path)


def translate_oserror(exc: OSError, path: Path, state: str) -> LiveOSError:
    """A stray OSError met while changing `path`, as an error with a hint (never exit 70)."""
    import errno

    if exc.errno == errno.EROFS:
        where = readonly_mount(path) or str(path.parent)
        return InUseError(
            f"the stick is mounted read-only at {where}: {exc.strerror}",
            f"{state}; remount it read-write (mount -o remount,rw {where}) and try again",
        )
    if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        from liveos_tools.errors import NoSpaceError

        return NoSpaceError(
            f"{path.name}: {exc.strerror}", f"{state}; free space on the stick and try again"
        )
    name = exc.filename if isinstance(exc.filename, str) else str(path)
    return TargetError(f"{name}: {exc.strerror}", state)


@dataclass
class SafePlan(Plan):
    """A Plan whose interruption or stray OSError ends in an error that says what state
    the overlay is in (and what to do), instead of a bare 'interrupted' or exit 70."""

    overlay: Path | None = None
    #: what the overlay may look like if the plan stops after it started writing.
    partial_state: str = "the overlay may be partly changed"
    partial_hint: str = "run the command again, or liveos-overlay repair --restore BACKUP"
    #: steps from this index on change the overlay even without a ByteRange.
    writes_from: int = 1 << 30

    def execute(self, progress: Progress | None = None) -> None:
        started = False
        try:
            for i, step in enumerate(self.steps):
                if progress:
                    progress(i, len(self.steps), step.summary)
                started = started or bool(step.writes) or i >= self.writes_from
                if step.action is not None:
                    step.action()
            if progress:
                progress(len(self.steps), len(self.steps), "done")
        except KeyboardInterrupt:
            if not started:
                raise AbortedError(
                    "interrupted: the overlay was not changed", "run the command again"
                ) from None
            raise AbortedError(f"interrupted: {self.partial_state}", self.partial_hint) from None
        except OSError as exc:
            state = (
                f"{self.partial_state} ({self.partial_hint})"
                if started
                else "the overlay was not changed"
            )
            raise translate_oserror(exc, self.overlay or Path(self.target), state) from None
