"""dmsetup: thin wrappers, and pure parsers for its status, table and info output."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from liveos_tools.errors import CorruptError, ToolError
from liveos_tools.run import run


class SnapshotState(Enum):
    """What a snapshot or snapshot-merge target reports, in the kernel's check order."""

    INVALID = "Invalid"
    MERGE_FAILED = "Merge failed"
    OVERFLOW = "Overflow"
    ACTIVE = "active"  # the numeric form: allocated/total metadata
    UNKNOWN = "Unknown"


@dataclass(frozen=True)
class SnapshotStatus:
    state: SnapshotState
    sectors_allocated: int | None = None
    total_sectors: int | None = None
    metadata_sectors: int | None = None


@dataclass(frozen=True)
class TargetStatus:
    start: int
    length: int
    target: str
    params: str
    snapshot: SnapshotStatus | None = None


@dataclass(frozen=True)
class DevRef:
    """A device in a table: `major:minor` or a path, as dmsetup prints it."""

    text: str

    @property
    def majmin(self) -> tuple[int, int] | None:
        m = re.fullmatch(r"(\d+):(\d+)", self.text)
        return (int(m.group(1)), int(m.group(2))) if m else None


@dataclass(frozen=True)
class SnapshotTable:
    origin: DevRef
    cow: DevRef
    persistent: bool
    overflow: bool  # the `O` flag: a full store overflows instead of invalidating
    chunk_sectors: int
    features: tuple[str, ...] = ()


@dataclass(frozen=True)
class LinearTable:
    device: DevRef
    offset: int


@dataclass(frozen=True)
class TableLine:
    start: int
    length: int
    target: str
    args: tuple[str, ...]
    snapshot: SnapshotTable | None = None
    linear: LinearTable | None = None


@dataclass(frozen=True)
class DmInfo:
    name: str
    major: int
    minor: int
    suspended: bool
    readonly: bool
    open_count: int
    uuid: str

    @property
    def node(self) -> str:
        return f"/dev/dm-{self.minor}"


SNAPSHOT_TARGETS = ("snapshot", "snapshot-merge")

_NUMS = re.compile(r"^(\d+)/(\d+) (\d+)$")


def parse_snapshot_params(params: str) -> SnapshotStatus:
    text = params.strip()
    if text == "Invalid":
        return SnapshotStatus(SnapshotState.INVALID)
    if text == "Merge failed":
        return SnapshotStatus(SnapshotState.MERGE_FAILED)
    if text == "Overflow":
        return SnapshotStatus(SnapshotState.OVERFLOW)
    if text == "Unknown":
        return SnapshotStatus(SnapshotState.UNKNOWN)
    m = _NUMS.match(text)
    if m:
        alloc, total, meta = (int(g) for g in m.groups())
        return SnapshotStatus(SnapshotState.ACTIVE, alloc, total, meta)
    raise CorruptError(f"unrecognised snapshot status {text!r}")


def _split_line(line: str, what: str) -> tuple[int, int, str, str]:
    parts = line.strip().split(maxsplit=3)
    if len(parts) < 3 or not parts[0].isdigit() or not parts[1].isdigit():
        raise CorruptError(f"unrecognised dmsetup {what} line {line.strip()!r}")
    params = parts[3] if len(parts) == 4 else ""
    return int(parts[0]), int(parts[1]), parts[2], params


def parse_status_line(line: str) -> TargetStatus:
    start, length, target, params = _split_line(line, "status")
    snap = parse_snapshot_params(params) if target in SNAPSHOT_TARGETS else None
    return TargetStatus(start, length, target, params, snap)


def parse_status(text: str) -> list[TargetStatus]:
    """Parse `dmsetup status NAME` (one line per target)."""
    return [parse_status_line(line) for line in text.splitlines() if line.strip()]


def _parse_snapshot_args(args: Sequence[str]) -> SnapshotTable:
    if len(args) < 4 or not args[3].isdigit():
        raise CorruptError(f"unrecognised snapshot table arguments {' '.join(args)!r}")
    flag = args[2].upper()
    if flag not in ("P", "PO", "N"):
        raise CorruptError(f"unrecognised snapshot persistence flag {args[2]!r}")
    return SnapshotTable(
        origin=DevRef(args[0]),
        cow=DevRef(args[1]),
        persistent=flag.startswith("P"),
        overflow=flag == "PO",
        chunk_sectors=int(args[3]),
        features=tuple(args[5:]) if len(args) > 4 else (),
    )


def parse_table_line(line: str) -> TableLine:
    start, length, target, params = _split_line(line, "table")
    args = tuple(params.split())
    snapshot = linear = None
    if target in SNAPSHOT_TARGETS:
        snapshot = _parse_snapshot_args(args)
    elif target == "linear":
        if len(args) != 2 or not args[1].isdigit():
            raise CorruptError(f"unrecognised linear table line {line.strip()!r}")
        linear = LinearTable(DevRef(args[0]), int(args[1]))
    return TableLine(start, length, target, args, snapshot, linear)


def parse_table(text: str) -> list[TableLine]:
    return [parse_table_line(line) for line in text.splitlines() if line.strip()]


def parse_named(text: str) -> dict[str, list[str]]:
    """Split `dmsetup status` / `dmsetup table` for all devices into name -> lines."""
    out: dict[str, list[str]] = {}
    if text.strip() == "No devices found":
        return out
    for line in text.splitlines():
        if not line.strip():
            continue
        name, sep, rest = line.partition(": ")
        if not sep:
            raise CorruptError(f"unrecognised dmsetup line {line!r}")
        out.setdefault(name, []).append(rest)
    return out


_INFO_FIELDS = "name,major,minor,attr,open,uuid"


def parse_info(text: str) -> DmInfo:
    """Parse `dmsetup info -c --noheadings --separator ; -o name,major,minor,attr,open,uuid`."""
    fields = text.strip().split(";")
    if len(fields) != 6 or not all(f.isdigit() for f in (fields[1], fields[2], fields[4])):
        raise CorruptError(f"unrecognised dmsetup info line {text.strip()!r}")
    attr = fields[3]
    return DmInfo(
        name=fields[0],
        major=int(fields[1]),
        minor=int(fields[2]),
        suspended="s" in attr,
        readonly="r" in attr,
        open_count=int(fields[4]),
        uuid=fields[5],
    )


# --- commands -------------------------------------------------------------------------


def create(name: str, table: str | Sequence[str], *, readonly: bool = False) -> DmInfo:
    text = table if isinstance(table, str) else "\n".join(table)
    argv = ["dmsetup", "create", name]
    if readonly:
        argv.append("--readonly")
    run(argv, input=text.rstrip("\n") + "\n")
    # With no udev (rescue shells, guests) nothing makes /dev/mapper/NAME; ask for it.
    run(["dmsetup", "mknodes", name], check=False)
    return info(name)


def remove(name: str, *, retry: bool = True) -> None:
    argv = ["dmsetup", "remove"]
    if retry:
        argv.append("--retry")
    run([*argv, name])


def status(name: str) -> list[TargetStatus]:
    return parse_status(run(["dmsetup", "status", name]).stdout)


def table_text(name: str) -> str:
    """The device's table as dmsetup prints it (for showing to a user)."""
    return run(["dmsetup", "table", name]).stdout


def table(name: str) -> list[TableLine]:
    return parse_table(table_text(name))


def info(name: str) -> DmInfo:
    out = run(
        ["dmsetup", "info", "-c", "--noheadings", "--separator", ";", "-o", _INFO_FIELDS, name]
    ).stdout
    return parse_info(out)


def exists(name: str) -> bool:
    try:
        info(name)
    except ToolError:
        return False
    return True


def mknodes(name: str | None = None) -> None:
    run(["dmsetup", "mknodes", *([name] if name else [])])


def suspend(name: str) -> None:
    run(["dmsetup", "suspend", name])


def resume(name: str) -> None:
    run(["dmsetup", "resume", name])


def reload(name: str, table: str | Sequence[str]) -> None:
    text = table if isinstance(table, str) else "\n".join(table)
    run(["dmsetup", "reload", name], input=text.rstrip("\n") + "\n")


def snapshot_table_line(
    length_sectors: int, origin: str, cow: str, *, chunk_sectors: int = 8, overflow: bool = True
) -> str:
    """The table dracut uses for live-rw: `0 <len> snapshot <origin> <cow> PO 8`."""
    return f"0 {length_sectors} snapshot {origin} {cow} {'PO' if overflow else 'P'} {chunk_sectors}"
