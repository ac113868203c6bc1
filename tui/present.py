"""Words and numbers the cards show, as pure functions over a StatusReport.

State is always in words (the badge), so the app reads right without colour; the
colour class follows the same thresholds as `liveos-overlay status`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from liveos_tools.media import HomeKind, OverlayKind
from liveos_tools.tasks.status import Level, OverlayState, StatusReport
from liveos_tools.units import MiB

if TYPE_CHECKING:
    from .backend import Details

BADGES = {
    OverlayState.NEW: "new",
    OverlayState.FULL: "full",
    OverlayState.OVERFLOW: "Overflow",
    OverlayState.INVALID: "Invalid",
    OverlayState.MERGE_FAILED: "merge failed",
    OverlayState.CORRUPT: "corrupt",
    OverlayState.UNKNOWN: "unknown",
    OverlayState.NONE: "no overlay",
}
LEVEL_BADGES = {
    Level.OK: "healthy",
    Level.FILLING: "filling",
    Level.CRITICAL: "critical",
    Level.BROKEN: "broken",
}


def badge(report: StatusReport) -> str:
    """The state in one word: healthy, filling, critical, Overflow, Invalid, corrupt, new..."""
    state = report.overlay.state
    if state in BADGES:
        return BADGES[state]
    return LEVEL_BADGES[report.level]


def level_class(report: StatusReport) -> str:
    """CSS class for colour: level-ok, level-filling, level-critical, level-broken, level-none."""
    if report.overlay.state in (OverlayState.NEW, OverlayState.NONE, OverlayState.UNKNOWN):
        return "level-none"
    return f"level-{report.level.value}"


def mib(n: int | None) -> str:
    return "?" if n is None else f"{n / MiB:.1f}"


def bar(fraction: float, width: int) -> str:
    filled = min(width, max(0, round(fraction * width)))
    return "█" * filled + "░" * (width - filled)


def overlay_line(report: StatusReport) -> str:
    o = report.overlay
    if o.kind is OverlayKind.NONE:
        return "no persistent overlay: changes are lost at shutdown"
    if o.total_bytes == 0:
        return f"{o.kind.value}, usage not known"
    pct = o.used_fraction * 100
    return f"{pct:5.1f}%  {mib(o.used_bytes)} / {mib(o.total_bytes)} MiB  ({o.kind.value})"


def home_line(report: StatusReport) -> str:
    h = report.home
    if h.kind is HomeKind.ABSENT:
        return "no home.img"
    size = f"{mib(h.size_bytes)} MiB" if h.size_bytes is not None else "size unknown"
    used = f", {mib(h.used_bytes)} MiB used" if h.used_bytes is not None else ""
    return f"home.img  {h.kind.value}, {size}{used}"


def stick_line(report: StatusReport) -> str:
    free, total = report.stick_free_bytes, report.stick_total_bytes
    if free is None or total is None:
        return "free space not known"
    return f"{mib(free)} MiB free of {mib(total)} MiB"


def is_live(report: StatusReport) -> bool:
    return report.medium.live_dm is not None


def chunk_text(report: StatusReport) -> str:
    c = report.overlay.chunk_sectors
    return "-" if c is None else f"{c} sectors ({c * 512 // 1024} KiB)"


def name_match_text(report: StatusReport) -> str:
    m = report.medium
    problem = m.overlay_name_problem
    if problem:
        return f"NO: {problem}"
    if m.volume is None or m.expected_overlay_name is None:
        return "not known (the partition's label and UUID were not read)"
    if m.overlay_path is None:
        return f"no overlay (dracut would look for {m.expected_overlay_name})"
    return f"yes ({m.expected_overlay_name})"


def details_rows(report: StatusReport, details: Details | None) -> list[tuple[str, str]]:
    """Label/value rows of the details view."""
    o, m = report.overlay, report.medium
    dm_table = details.dm_table if details else None
    rows = [
        ("State", f"{badge(report)} (overlay {o.state.value}, level {report.level.value})"),
        ("Overlay kind", o.kind.value),
        ("Overlay file", m.shown_path(o.path) if o.path else "-"),
        ("Read from", o.read_from),
        ("Used", f"{mib(o.used_bytes)} of {mib(o.total_bytes)} MiB"),
        ("Chunk size", chunk_text(report)),
        ("Exceptions", "-" if o.exceptions is None else str(o.exceptions)),
        (
            "Sectors",
            "-"
            if o.sectors_allocated is None
            else f"{o.sectors_allocated}/{o.total_sectors} {o.metadata_sectors}",
        ),
        ("Header valid", "-" if o.valid is None else ("yes" if o.valid else "NO")),
        ("Name matches", name_match_text(report)),
        ("dm table", dm_table or ("-" if m.live_dm is None else "not readable")),
        ("Image layout", m.image_layout.value),
        ("Home", home_line(report)),
        ("Swap", "none" if report.swap_bytes is None else f"{mib(report.swap_bytes)} MiB"),
        ("Stick", stick_line(report)),
    ]
    if m.volume is not None:
        v = m.volume
        rows.append(("Partition", f"{v.device or '-'} LABEL={v.label} UUID={v.uuid} ({v.fstype})"))
    if o.problem:
        rows.append(("Problem", o.problem))
    if m.boot_args:
        rows.append(("Booted with", _args(m.boot_args)))
    if details is None:
        rows.append(("Boot arguments", "reading..."))
    else:
        where = f" (in {', '.join(details.boot_files)})" if details.boot_files else ""
        rows.append(("Boot arguments", (_args(details.boot_args) or "none found") + where))
    return rows


def _args(args: Mapping[str, str]) -> str:
    return " ".join(k if v == "1" else f"{k}={v}" for k, v in sorted(args.items()))
