"""Publish the running system's overlay status for users who are not root.

Reading a live snapshot's usage needs root (`dmsetup status`), and the overlay file
is mode 0600. A small root service (`liveos-overlay monitor run`, installed as a
systemd unit by `liveos-overlay monitor install`) writes the status JSON of
`status.to_json` to a world-readable file under /run; the TUI and anyone else read
it from there. `report_from_json` turns that document back into a StatusReport.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from liveos_tools.errors import LiveOSError, TargetError
from liveos_tools.media import (
    HomeKind,
    ImageLayout,
    Medium,
    OverlayKind,
    Source,
    Volume,
)
from liveos_tools.tasks import refresh_status
from liveos_tools.tasks.status import (
    HomeStatus,
    Level,
    OverlayState,
    OverlayStatus,
    StatusReport,
)

STATUS_DIR = Path("/run/liveos-tools")
STATUS_PATH = STATUS_DIR / "status.json"
STATUS_MODE = 0o644
UNIT_NAME = "liveos-overlay-monitor.service"
UNIT_DIR = "etc/systemd/system"
WANTED_BY = "multi-user.target"
DEFAULT_INTERVAL = 5.0
#: A published status older than this many of the monitor's intervals is stale...
STALE_INTERVALS = 3
#: ...or older than this when the document does not say its interval.
STALE_SECONDS_UNKNOWN = 60.0


def unit_text(exe: str, interval: float = DEFAULT_INTERVAL) -> str:
    """The systemd unit that keeps the status file fresh."""
    return f"""\
[Unit]
Description=Publish the LiveOS overlay usage to {STATUS_PATH} for every user
Documentation=man:liveos-overlay(1)
ConditionPathExists=/run/initramfs/live

[Service]
Type=simple
ExecStart={exe} monitor run --interval {interval:g} --output {STATUS_PATH}
Restart=on-failure
RestartSec=10
Nice=10
ProtectSystem=strict
ReadWritePaths=/run/liveos-tools
RuntimeDirectory=liveos-tools
RuntimeDirectoryMode=0755
RuntimeDirectoryPreserve=yes

[Install]
WantedBy={WANTED_BY}
"""


def publish(doc: dict[str, Any], path: Path = STATUS_PATH) -> None:
    """Write `doc` as JSON to `path` atomically, mode 0644 (readers never see half a file)."""
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".status-", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, indent=None, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fchmod(f.fileno(), STATUS_MODE)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise TargetError(
            f"cannot write the status file {path}: {exc.strerror}",
            "run the monitor as root, or give --output a writable path",
        ) from None


def live_status_doc(livedir: str | None = None) -> dict[str, Any]:
    """The running system's status as JSON, with the time it was taken."""
    from liveos_tools.media import open_medium
    from liveos_tools.tasks.du import cached_summary
    from liveos_tools.tasks.status import build_status, to_json

    with open_medium(None, livedir=livedir) as medium:
        doc = to_json(build_status(medium))
    doc["published_at"] = time.time()
    # what fills the overlay (liveos-overlay du), refreshed in the background every 10 min
    doc["du"] = cached_summary()
    return doc


def error_doc(err: LiveOSError) -> dict[str, Any]:
    return {"error": err.message, "hint": err.hint, "published_at": time.time()}


def run_loop(
    *,
    interval: float,
    path: Path,
    once: bool = False,
    build: Callable[[], dict[str, Any]] = live_status_doc,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Publish `build()` every `interval` seconds; a failure is published too, then retried."""
    rounds = 0
    while True:
        try:
            doc = build()
        except LiveOSError as err:
            doc = error_doc(err)
        # Readers judge the age against it: older than STALE_INTERVALS of these is stale.
        doc.setdefault("interval", interval)
        publish(doc, path)
        rounds += 1
        if once:
            return rounds
        sleep(max(0.5, interval))


# --- install -----------------------------------------------------------------------------------


def install(root: Path, exe: str, *, interval: float = DEFAULT_INTERVAL) -> list[Path]:
    """Write the unit under root and enable it the way `systemctl enable` does.

    Returns the paths written. Enabling is a symlink in the target's .wants
    directory, so it also works for a stick's system mounted elsewhere (--root).
    """
    unit_dir = root / UNIT_DIR
    unit = unit_dir / UNIT_NAME
    wants = unit_dir / f"{WANTED_BY}.wants"
    link = wants / UNIT_NAME
    try:
        wants.mkdir(parents=True, exist_ok=True)
        tmp = unit.with_name(f".{UNIT_NAME}.tmp")
        tmp.write_text(unit_text(exe, interval))
        tmp.chmod(0o644)
        os.replace(tmp, unit)
        if link.is_symlink() or link.exists():
            link.unlink()
        # Relative to the root, as systemctl writes it, so it resolves on the stick too.
        link.symlink_to(Path("/") / UNIT_DIR / UNIT_NAME)
    except OSError as exc:
        raise TargetError(
            f"cannot install {UNIT_NAME} under {root}: {exc.strerror}",
            "run as root, or give --root a writable directory",
        ) from None
    return [unit, link]


def uninstall(root: Path) -> list[Path]:
    unit_dir = root / UNIT_DIR
    removed = []
    for p in (unit_dir / f"{WANTED_BY}.wants" / UNIT_NAME, unit_dir / UNIT_NAME):
        if p.is_symlink() or p.exists():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
            removed.append(p)
    return removed


# --- reading what the monitor published ----------------------------------------------------------


def read_published(path: Path = STATUS_PATH) -> dict[str, Any]:
    """The published document; raises TargetError if there is none or it is unreadable."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise TargetError(
            f"no published status at {path}",
            "as root, run: liveos-overlay monitor install (or monitor run)",
        ) from None
    except (OSError, ValueError) as exc:
        raise TargetError(f"cannot read the published status {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise TargetError(f"the published status {path} is not a JSON object")
    if "error" in doc:
        raise LiveOSError(f"the monitor reports: {doc['error']}", doc.get("hint"))
    return doc


def age_seconds(doc: dict[str, Any], now: float | None = None) -> float | None:
    at = doc.get("published_at")
    if not isinstance(at, int | float):
        return None
    return (time.time() if now is None else now) - float(at)


def stale_after(doc: dict[str, Any]) -> float:
    """Seconds after publication at which the document is stale (the monitor stopped)."""
    interval = doc.get("interval")
    if isinstance(interval, int | float) and not isinstance(interval, bool) and interval > 0:
        # run_loop sleeps at least 0.5 s between rounds.
        return STALE_INTERVALS * max(0.5, float(interval))
    return STALE_SECONDS_UNKNOWN


def is_stale(doc: dict[str, Any], now: float | None = None) -> bool:
    """Older than stale_after(doc); a document without published_at cannot be judged (False)."""
    age = age_seconds(doc, now)
    return age is not None and age > stale_after(doc)


def _path(value: Any) -> Path | None:
    return Path(value) if value else None


def report_from_json(doc: dict[str, Any]) -> StatusReport:
    """Rebuild a StatusReport from `status.to_json` output (the inverse, as far as it goes)."""
    try:
        m, h, s = doc["medium"], doc["home"], doc.get("swap") or {}
        volume = None
        if any(m.get(k) for k in ("device", "label", "uuid", "fstype")):
            volume = Volume(m.get("device"), m.get("label"), m.get("uuid"), m.get("fstype"))
        kind = OverlayKind(doc["kind"])
        medium = Medium(
            source=Source(m["source"]),
            target=m["target"],
            root=_path(m.get("root")),
            livedir=m.get("livedir") or "LiveOS",
            volume=volume,
            overlay_path=_path(doc.get("path")),
            overlay_kind=kind,
            image_layout=ImageLayout(m.get("image_layout") or "unknown"),
            squashfs_path=None,
            rootfs_path=None,
            home_path=_path(h.get("path")),
            home_kind=HomeKind(h["kind"]),
            swap_path=_path(s.get("path")),
            live_dm=m.get("live_dm"),
            boot_args=dict(m.get("boot_args") or {}),
        )
        overlay = OverlayStatus(
            kind=kind,
            path=doc.get("path"),
            state=OverlayState(doc["state"]),
            read_from=doc.get("read_from") or "none",
            used_bytes=int(doc["used_bytes"]),
            total_bytes=int(doc["total_bytes"]),
            valid=doc.get("valid"),
            chunk_sectors=doc.get("chunk_sectors"),
            exceptions=doc.get("exceptions"),
            sectors_allocated=doc.get("sectors_allocated"),
            total_sectors=doc.get("total_sectors"),
            metadata_sectors=doc.get("metadata_sectors"),
            problem=doc.get("problem"),
        )
        home = HomeStatus(
            h.get("path"), HomeKind(h["kind"]), h.get("size_bytes"), h.get("used_bytes")
        )
        return StatusReport(
            medium=medium,
            overlay=overlay,
            home=home,
            swap_bytes=s.get("size_bytes"),
            stick_free_bytes=m.get("free_bytes"),
            stick_total_bytes=m.get("total_bytes"),
            level=Level(doc["level"]),
            warnings=tuple(doc.get("warnings") or ()),
            refresh=refresh_status.from_json(doc.get("refresh")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise TargetError(
            f"the status document is not in the expected format ({exc.__class__.__name__}: {exc})",
            "is the monitor the same version as this program?",
        ) from None
