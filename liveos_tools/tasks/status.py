"""`liveos-overlay status`: how full is the overlay, and is it healthy?

A running live system is read through the kernel (`dmsetup status live-rw`);
everything else is read offline from the files. The report is plain data: the CLI
renders it as text or JSON, the TUI draws it.
"""

from __future__ import annotations

import contextlib
import os
from enum import Enum
from pathlib import Path
from typing import Any, NamedTuple

from liveos_tools.cow import SECTOR, read_store
from liveos_tools.errors import ExitCode, LiveOSError
from liveos_tools.media import HomeKind, ImageLayout, Medium, OverlayKind, Source
from liveos_tools.tasks.refresh_status import RefreshState, read_state
from liveos_tools.units import format_size
from liveos_tools.which import which

WARN_FRACTION = 0.80
CRITICAL_FRACTION = 0.95


class OverlayState(Enum):
    NEW = "new"
    VALID = "valid"
    FULL = "full"
    OVERFLOW = "overflow"
    INVALID = "invalid"
    MERGE_FAILED = "merge-failed"
    CORRUPT = "corrupt"
    UNKNOWN = "unknown"
    NONE = "none"  # no persistent overlay at all


BROKEN_STATES = {
    OverlayState.FULL,
    OverlayState.OVERFLOW,
    OverlayState.INVALID,
    OverlayState.MERGE_FAILED,
    OverlayState.CORRUPT,
}


class Level(Enum):
    OK = "ok"
    FILLING = "filling"
    CRITICAL = "critical"
    BROKEN = "broken"


class OverlayStatus(NamedTuple):
    kind: OverlayKind
    path: str | None
    state: OverlayState
    read_from: str  # "kernel", "file", "filesystem", "directory" or "none"
    used_bytes: int
    total_bytes: int
    valid: bool | None = None
    chunk_sectors: int | None = None
    exceptions: int | None = None
    sectors_allocated: int | None = None
    total_sectors: int | None = None
    metadata_sectors: int | None = None
    problem: str | None = None

    @property
    def used_fraction(self) -> float:
        # A truncated store's table points past its end: it is corrupt, and "1062%" would
        # only confuse. The raw sectors stay in the report.
        return min(1.0, self.used_bytes / self.total_bytes) if self.total_bytes else 0.0


class HomeStatus(NamedTuple):
    path: str | None
    kind: HomeKind
    size_bytes: int | None = None
    used_bytes: int | None = None


class StatusReport(NamedTuple):
    medium: Medium
    overlay: OverlayStatus
    home: HomeStatus
    swap_bytes: int | None
    stick_free_bytes: int | None
    stick_total_bytes: int | None
    level: Level
    warnings: tuple[str, ...]
    #: a kept previous image, an interrupted refresh/rollback (read when the status is taken)
    refresh: RefreshState = RefreshState(None, None, None)

    @property
    def exit_code(self) -> ExitCode:
        if self.level is Level.BROKEN:
            return ExitCode.BROKEN
        if self.level in (Level.FILLING, Level.CRITICAL):
            return ExitCode.WARNING
        return ExitCode.OK


# --- reading -------------------------------------------------------------------------------


def _from_store_file(path: Path, *, full: bool = False) -> OverlayStatus:
    report = read_store(path, full=full)
    state = OverlayState(report.state.value)
    return OverlayStatus(
        kind=OverlayKind.DM,
        path=str(path),
        state=state,
        read_from="file",
        used_bytes=report.used_bytes,
        total_bytes=report.total_bytes,
        valid=report.valid,
        chunk_sectors=report.chunk_sectors,
        exceptions=report.exceptions,
        sectors_allocated=report.sectors_allocated,
        total_sectors=report.total_sectors,
        metadata_sectors=report.metadata_sectors,
        problem=report.problem,
    )


def _from_kernel(dm_name: str, path: Path | None) -> OverlayStatus:
    from liveos_tools.tools import dmsetup

    (line,) = dmsetup.status(dm_name)
    table = dmsetup.table(dm_name)[0].snapshot
    snap = line.snapshot
    if snap is None or table is None:
        raise LiveOSError(f"{dm_name} is not a snapshot (it is {line.target})")
    chunk = table.chunk_sectors
    kernel_state = {
        dmsetup.SnapshotState.OVERFLOW: OverlayState.OVERFLOW,
        dmsetup.SnapshotState.INVALID: OverlayState.INVALID,
        dmsetup.SnapshotState.MERGE_FAILED: OverlayState.MERGE_FAILED,
        dmsetup.SnapshotState.UNKNOWN: OverlayState.UNKNOWN,
    }.get(snap.state)
    if snap.sectors_allocated is None or snap.total_sectors is None:
        # No numbers from the kernel: the file still has them.
        if path is not None and os.access(path, os.R_OK):
            offline = _from_store_file(path)
            return offline._replace(state=kernel_state or offline.state, read_from="kernel+file")
        return OverlayStatus(
            kind=OverlayKind.DM,
            path=str(path) if path else None,
            state=kernel_state or OverlayState.UNKNOWN,
            read_from="kernel",
            used_bytes=0,
            total_bytes=0,
            chunk_sectors=chunk,
        )
    alloc, total, meta = snap.sectors_allocated, snap.total_sectors, snap.metadata_sectors or 0
    full = total < (alloc // chunk + 1) * chunk
    return OverlayStatus(
        kind=OverlayKind.DM,
        path=str(path) if path else None,
        state=OverlayState.FULL if full else OverlayState.VALID,
        read_from="kernel",
        used_bytes=alloc * SECTOR,
        total_bytes=total * SECTOR,
        valid=True,
        chunk_sectors=chunk,
        exceptions=(alloc - meta) // chunk,
        sectors_allocated=alloc,
        total_sectors=total,
        metadata_sectors=meta,
    )


def _tree_bytes(path: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def read_overlay(medium: Medium, free_bytes: int | None, *, full: bool = False) -> OverlayStatus:
    path = medium.overlay_path
    if medium.live_dm and medium.overlay_kind in (OverlayKind.DM, OverlayKind.NONE):
        return _from_kernel(medium.live_dm, path)
    if path is None or medium.overlay_kind is OverlayKind.NONE:
        return OverlayStatus(OverlayKind.NONE, None, OverlayState.NONE, "none", 0, 0)
    if medium.overlay_kind is OverlayKind.DM:
        return _from_store_file(path, full=full)
    if medium.overlay_kind is OverlayKind.OVERLAYFS_IMAGE:
        from liveos_tools.tools import e2fs

        use = e2fs.usage(path)
        return OverlayStatus(
            OverlayKind.OVERLAYFS_IMAGE,
            str(path),
            OverlayState.VALID,
            "filesystem",
            use.used_bytes,
            use.total_bytes,
        )
    # An OverlayFS directory can grow until the stick is full.
    used = _tree_bytes(path)
    return OverlayStatus(
        OverlayKind.OVERLAYFS_DIR,
        str(path),
        OverlayState.VALID,
        "directory",
        used,
        used + (free_bytes or 0),
    )


def read_home(medium: Medium) -> HomeStatus:
    path = medium.home_path
    if path is None:
        return HomeStatus(None, medium.home_kind)
    size = path.stat().st_size
    used = None
    if medium.home_kind is HomeKind.PLAIN:
        from liveos_tools.tools import e2fs

        with contextlib.suppress(LiveOSError):
            used = e2fs.usage(path).used_bytes
    return HomeStatus(str(path), medium.home_kind, size, used)


def _level(overlay: OverlayStatus) -> Level:
    if overlay.state in BROKEN_STATES:
        return Level.BROKEN
    if overlay.used_fraction >= CRITICAL_FRACTION:
        return Level.CRITICAL
    if overlay.used_fraction >= WARN_FRACTION:
        return Level.FILLING
    return Level.OK


def _warnings(medium: Medium, overlay: OverlayStatus, level: Level) -> list[str]:
    out = []
    pct = f"{overlay.used_fraction * 100:.0f}%"
    s = overlay.state
    if s is OverlayState.INVALID:
        out.append(
            "the overlay is marked invalid: the stick will not boot with it. "
            "Bring it back with: liveos-overlay repair"
        )
    elif s in (OverlayState.FULL, OverlayState.OVERFLOW):
        out.append(
            "the overlay is full: the live system can no longer save changes. "
            "Bring it back with: liveos-overlay repair (it grows the overlay)"
        )
    elif s is OverlayState.CORRUPT:
        out.append(f"the overlay is damaged: {overlay.problem}")
    elif s is OverlayState.MERGE_FAILED:
        out.append("merging the overlay into the image failed; see the kernel log")
    elif level is Level.CRITICAL:
        out.append(
            f"the overlay is {pct} full and will overflow soon. "
            "Grow it now: liveos-overlay grow --by 512M"
        )
    elif level is Level.FILLING:
        out.append(
            f"the overlay is {pct} full. Make room: liveos-overlay grow --by 512M, "
            "or back up your files and liveos-overlay reset"
        )
    if overlay.state is OverlayState.NONE and medium.root is not None:
        out.append("no persistent overlay: changes are lost at shutdown")
    if medium.image_layout is ImageLayout.UNKNOWN and medium.squashfs_path is not None:
        if which("unsquashfs"):
            out.append(
                f"{medium.squashfs_path.name} could not be read: the live image may be "
                "damaged, and the stick may not boot (rewrite it with liveos-iso-to-disk)"
            )
        else:
            out.append(
                "unsquashfs is not installed: the image layout is unknown "
                "(apt-get install squashfs-tools)"
            )
    problem = medium.overlay_name_problem
    if problem:
        out.append(f"dracut will not find the overlay at boot: {problem}")
    if medium.other_overlays:
        names = ", ".join(p.name for p in medium.other_overlays)
        out.append(f"other overlay files on the stick are not used: {names}")
    out.extend(_leftovers(medium))
    return out


def _leftovers(medium: Medium) -> list[str]:
    """Mappings an interrupted repair (or home/swap command) left, and what clears them."""
    from liveos_tools.tasks import leftovers

    files = [p for p in (medium.overlay_path, medium.home_path) if p is not None]
    dirs = [p.parent.parent / "liveos-backups" for p in files[:1]]
    dirs += [Path("/var/lib/liveos-tools/backups"), *(p.parent for p in files[1:])]
    if os.environ.get("LIVEOS_BACKUP_DIR"):
        dirs.append(Path(os.environ["LIVEOS_BACKUP_DIR"]))
    return leftovers.status_lines(files, dirs)


def build_status(medium: Medium, *, full: bool = False) -> StatusReport:
    free = total = None
    if medium.root is not None:
        with contextlib.suppress(OSError):
            st = os.statvfs(medium.root)
            free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    overlay = read_overlay(medium, free, full=full)
    level = _level(overlay)
    swap = medium.swap_path.stat().st_size if medium.swap_path else None
    return StatusReport(
        medium=medium,
        overlay=overlay,
        home=read_home(medium),
        swap_bytes=swap,
        stick_free_bytes=free,
        stick_total_bytes=total,
        level=level,
        warnings=tuple(_warnings(medium, overlay, level)),
        refresh=read_state(medium),
    )


# --- output ---------------------------------------------------------------------------------


def to_json(report: StatusReport) -> dict[str, Any]:
    """The --json document: the overlay's keys at the top, the rest in sub-objects."""
    o, m = report.overlay, report.medium
    return {
        "state": o.state.value,
        "level": report.level.value,
        "kind": o.kind.value,
        "path": o.path,
        "read_from": o.read_from,
        "valid": o.valid,
        "chunk_sectors": o.chunk_sectors,
        "exceptions": o.exceptions,
        "sectors_allocated": o.sectors_allocated,
        "total_sectors": o.total_sectors,
        "metadata_sectors": o.metadata_sectors,
        "used_bytes": o.used_bytes,
        "total_bytes": o.total_bytes,
        "used_percent": round(o.used_fraction * 100, 2),
        "problem": o.problem,
        "name_matches": None
        if m.overlay_name_problem is None and m.volume is None
        else m.overlay_name_problem is None,
        "expected_name": m.expected_overlay_name,
        "medium": {
            "source": m.source.value,
            "target": m.target,
            "root": str(m.root) if m.root else None,
            "livedir": m.livedir,
            "device": m.volume.device if m.volume else None,
            "label": m.volume.label if m.volume else None,
            "uuid": m.volume.uuid if m.volume else None,
            "fstype": m.volume.fstype if m.volume else None,
            "image_layout": m.image_layout.value,
            "live_dm": m.live_dm,
            "free_bytes": report.stick_free_bytes,
            "total_bytes": report.stick_total_bytes,
            "boot_args": dict(m.boot_args),
        },
        "home": {
            "path": report.home.path,
            "kind": report.home.kind.value,
            "size_bytes": report.home.size_bytes,
            "used_bytes": report.home.used_bytes,
        },
        "swap": {
            "path": str(m.swap_path) if m.swap_path else None,
            "size_bytes": report.swap_bytes,
        },
        "refresh": report.refresh.to_json(),
        "warnings": list(report.warnings),
        "exit_code": int(report.exit_code),
    }


def usage_bar(fraction: float, width: int = 30) -> str:
    filled = min(width, max(0, round(fraction * width)))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


def render_text(report: StatusReport, *, damage_as_error: bool = False) -> str:
    """The report as text; with `damage_as_error` the caller prints the overlay's damage
    as its error line, so it is not repeated as a warning."""
    o, m = report.overlay, report.medium
    lines = []
    # Devices and images are mounted in a temporary place: name what the user gave.
    temp_mount = m.source in (Source.DEVICE, Source.IMAGE)
    where = str(m.root) if m.root and not temp_mount else m.target
    if m.volume:
        ident = " ".join(
            f"{k}={v}" for k, v in (("LABEL", m.volume.label), ("UUID", m.volume.uuid)) if v
        )
        extra = ", ".join(x for x in (m.volume.fstype, m.volume.device) if x)
        where = f"{where}  ({ident}{'; ' + extra if extra else ''})"
    lines.append(f"LiveOS   {where}")
    if o.kind is OverlayKind.NONE:
        lines.append("Overlay  none")
    elif o.state is OverlayState.CORRUPT and o.used_bytes > o.total_bytes:
        # The table points past the store's end: any figure from it would be nonsense
        # ("3906250.0 MiB of 16.0 MiB"); the warning below says what is damaged.
        lines.append(f"Overlay  usage unknown, {_mib(o.total_bytes)}  state: corrupt")
    else:
        lines.append(
            f"Overlay  {usage_bar(o.used_fraction)} {o.used_fraction * 100:5.1f}%  "
            f"{_mib(o.used_bytes)} of {_mib(o.total_bytes)} used  state: {o.state.value}"
        )
        detail = [o.kind.value]
        if o.chunk_sectors:
            detail.append(f"chunk {format_size(o.chunk_sectors * SECTOR)}")
        if o.exceptions is not None:
            detail.append(f"{o.exceptions} chunks changed")
        detail.append(f"read from {o.read_from}")
        name = Path(o.path).name if o.path else "?"
        lines.append(f"         {name} ({', '.join(detail)})")
    h = report.home
    if h.kind is HomeKind.ABSENT:
        lines.append("Home     no home.img")
    else:
        size = _mib(h.size_bytes) if h.size_bytes is not None else "?"
        used = f", {_mib(h.used_bytes)} used" if h.used_bytes is not None else ""
        lines.append(f"Home     home.img  {h.kind.value}, {size}{used}")
    if report.swap_bytes is not None:
        lines.append(f"Swap     swap.img  {_mib(report.swap_bytes)}")
    if report.stick_free_bytes is not None and report.stick_total_bytes is not None:
        lines.append(
            f"Stick    {_mib(report.stick_free_bytes)} free of {_mib(report.stick_total_bytes)}"
        )
    lines.extend(report.refresh.lines(m.target))
    lines.append(f"Health   {report.level.value}")
    damage = f"the overlay is damaged: {o.problem}" if damage_as_error and o.problem else None
    lines.extend(f"warning: {w}" for w in report.warnings if w != damage)
    return "\n".join(lines)
