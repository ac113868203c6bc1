"""Backups of an overlay's bytes before a writing command changes them, and their restore.

A backup is one file, written whole before the overlay is touched:

    LIVEOS-TOOLS-BACKUP 1\\n
    <one line of JSON: what, where, sizes, checksums>\\n
    <the saved regions, back to back>

It is written under a temporary name, fsynced, renamed into place and its directory
fsynced, so a backup file that exists is complete. It records the overlay's name
(the label dracut matches), size, first 16 bytes (magic, valid, version, chunk size)
and the sha256 of every saved region and of the whole overlay before the change.

A repair also keeps an *undo store*: a device-mapper snapshot of the overlay itself,
so every chunk that e2fsck changes through the repair snapshot is first copied out by
the kernel (a persistent store, committed before the write proceeds). Restoring puts
those chunks back, then the saved regions, then cuts the file back to its old size,
and checks the whole-file sha256: the overlay comes back byte for byte.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import secrets
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from liveos_tools import mounts
from liveos_tools.errors import CorruptError, InUseError, LiveOSError, TargetError, UsageError

MAGIC_LINE = b"LIVEOS-TOOLS-BACKUP 1\n"
SUFFIX = ".lobak"
UNDO_SUFFIX = ".undo"
DEFAULT_DIR = Path("/var/lib/liveos-tools/backups")
ENV_DIR = "LIVEOS_BACKUP_DIR"
#: Test hook: SIGKILL this process at the named checkpoint (see kill_point).
ENV_KILL_AT = "LIVEOS_TEST_KILL_AT"
_BLOCK = 1024 * 1024
RAM_FILESYSTEMS = ("tmpfs", "ramfs")


def kill_point(name: str) -> None:
    """Crash-safety tests kill the command at named points of its write order.

    LIVEOS_TEST_KILL_AT=<point> sends SIGKILL (a power cut); <point>:INT sends SIGINT
    (Ctrl-C), which the command must answer by tearing down and restoring.
    """
    want = os.environ.get(ENV_KILL_AT)
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

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["regions"] = [asdict(r) for r in self.regions]
        data["notes"] = list(self.notes)
        return data

    @staticmethod
    def from_json(data: dict[str, Any]) -> BackupRecord:
        try:
            regions = tuple(Region(**r) for r in data["regions"])
            fields = {k: v for k, v in data.items() if k in BackupRecord.__dataclass_fields__}
            fields["regions"] = regions
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
    whole_hash: bool = True,
    undo_bytes: int | None = None,
    workdir: str | None = None,
    dm_prefix: str | None = None,
    notes: tuple[str, ...] = (),
) -> Backup:
    """Save `regions` of the overlay (and make an empty undo store); durable on return."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
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
            overlay_sha256=file_sha256(overlay) if whole_hash else None,
            created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            run_id=run_id,
            undo=undo_name,
            workdir=workdir,
            dm_prefix=dm_prefix,
            notes=notes,
        )
        if undo_name and undo_bytes:
            # A zero header is a new store: the kernel initialises it on first use.
            undo = directory / undo_name
            with open(undo, "wb") as u:
                u.truncate(undo_bytes)
                os.fsync(u.fileno())
        final = directory / name
        tmp = directory / (name + ".part")
        with open(tmp, "wb") as out:
            out.write(MAGIC_LINE)
            out.write(json.dumps(record.to_json(), sort_keys=True).encode() + b"\n")
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, final)
        _fsync_dir(directory)
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
    """Write the backup back; return True if the whole-file checksum proves it exact."""
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
    if rec.overlay_sha256 is None:
        return False
    if file_sha256(overlay) != rec.overlay_sha256:
        raise CorruptError(
            f"{overlay} was restored, but its checksum differs from the original's",
            "it was changed after the backup in ways the backup does not cover "
            "(was the stick booted since?)",
        )
    return True


def find_backups(directory: Path, overlay_name: str | None = None) -> list[Path]:
    if not directory.is_dir():
        return []
    found = sorted(directory.glob(f"{overlay_name or '*'}.*{SUFFIX}"))
    return found


def describe_restore(backup: Backup) -> list[str]:
    rec = backup.record
    lines = [f"backup of {rec.label} taken {rec.created} before {rec.op}"]
    if backup.undo_path is not None:
        lines.append(f"undo store {backup.undo_path}")
    return lines


# --- in use? ----------------------------------------------------------------------------------


def loop_users(path: Path) -> list[tuple[str, list[str]]]:
    """Loop devices backed by `path`, each with the dm devices holding it (from sysfs)."""
    from liveos_tools.run import which
    from liveos_tools.tools import losetup

    if not which("losetup"):
        return []
    try:
        found = losetup.find_by_file(path)
    except LiveOSError:
        return []
    out = []
    for dev in found:
        holders = Path("/sys/block") / Path(dev.name).name / "holders"
        names = sorted(h.name for h in holders.iterdir()) if holders.is_dir() else []
        out.append((dev.name, names))
    return out


def refuse_in_use(path: Path, doing: str) -> None:
    users = loop_users(path)
    if not users:
        return
    where = ", ".join(f"{loop}" + (f" (held by {', '.join(h)})" if h else "") for loop, h in users)
    raise InUseError(
        f"{path.name} is in use: attached to {where}; it cannot be {doing} now",
        "shut down the live system that uses it and run this from another system, "
        "or release it (dmsetup remove, losetup -d) first",
    )
