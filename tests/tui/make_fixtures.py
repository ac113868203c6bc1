"""Write the fixture sticks of tests/tui/fixtures/sticks/ (run once; the JSON is committed).

Each fixture is a `liveos-overlay status --json` document, as the monitor publishes
it, passed through the library's own level and warnings logic so the documents
say what `status` would say for that state.

    .venv/bin/python -m tests.tui.make_fixtures
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from liveos_tools.tasks import status
from liveos_tools.tasks.monitor import report_from_json

OUT = Path(__file__).parent / "fixtures" / "sticks"
MiB = 1024 * 1024
UUID = "2f1c-77aa"


def doc(
    *,
    state: str,
    used_mib: float,
    total_mib: int,
    label: str = "SOAS",
    device: str = "/dev/sdb1",
    source: str = "device",
    live: bool = False,
    kind: str = "dm-snapshot",
    overlay_name: str | None = None,
    home: tuple[str, int | None, int | None] = ("plain", 512, 120),
    free_mib: int = 1200,
    valid: bool | None = True,
    problem: str | None = None,
) -> dict[str, Any]:
    chunk = 8
    total_sectors = total_mib * MiB // 512
    alloc = int(used_mib * MiB) // 512 // chunk * chunk
    root = "/run/initramfs/live" if live else "/media/SOAS"
    name = overlay_name or f"overlay-{label}-{UUID}"
    has_overlay = kind != "none"
    hkind, hsize, hused = home
    return {
        "state": state,
        "level": "ok",
        "kind": kind,
        "path": f"{root}/LiveOS/{name}" if has_overlay else None,
        "read_from": ("kernel" if live else "file") if has_overlay else "none",
        "valid": valid if has_overlay else None,
        "chunk_sectors": chunk if kind == "dm-snapshot" else None,
        "exceptions": max(0, alloc - 16) // chunk if kind == "dm-snapshot" else None,
        "sectors_allocated": alloc if kind == "dm-snapshot" else None,
        "total_sectors": total_sectors if kind == "dm-snapshot" else None,
        "metadata_sectors": 16 if kind == "dm-snapshot" else None,
        "used_bytes": alloc * 512 if has_overlay else 0,
        "total_bytes": total_sectors * 512 if has_overlay else 0,
        "problem": problem,
        "medium": {
            "source": "live" if live else source,
            "target": "live" if live else device,
            "root": root,
            "livedir": "LiveOS",
            "device": device,
            "label": label,
            "uuid": UUID,
            "fstype": "ext4",
            "image_layout": "nested",
            "live_dm": "live-rw" if live else None,
            "free_bytes": free_mib * MiB,
            "total_bytes": 7600 * MiB,
            "boot_args": {
                "root": f"live:UUID={UUID}",
                "rd.live.image": "1",
                "rd.live.overlay": f"UUID={UUID}",
            }
            if live
            else {},
        },
        "home": {
            "path": f"{root}/LiveOS/home.img" if hkind != "absent" else None,
            "kind": hkind,
            "size_bytes": hsize * MiB if hsize is not None else None,
            "used_bytes": hused * MiB if hused is not None else None,
        },
        "swap": {"path": None, "size_bytes": None},
        "warnings": [],
        "exit_code": 0,
    }


def canonical(d: dict[str, Any]) -> dict[str, Any]:
    """Let the library decide level and warnings, as `status` would."""
    report = report_from_json(d)
    level = status._level(report.overlay)
    warnings = tuple(status._warnings(report.medium, report.overlay, level))
    return status.to_json(report._replace(level=level, warnings=warnings))


DETAILS_LIVE = {
    "dm_table": "0 4194304 snapshot 7:1 7:2 PO 8",
    "boot_args": {"root": f"live:UUID={UUID}", "rd.live.image": "1"},
    "boot_files": ["EFI/BOOT/grub.cfg"],
}
DETAILS_STICK = {
    "dm_table": None,
    "boot_args": {"root": f"live:UUID={UUID}", "rd.live.overlay": f"UUID={UUID}", "rw": "1"},
    "boot_files": ["EFI/BOOT/grub.cfg", "syslinux/syslinux.cfg"],
}

FIXTURES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "01-live-healthy": (
        {
            "key": "live",
            "target": None,
            "title": "This computer's live system",
            "origin": "running system",
        },
        doc(state="valid", used_mib=600, total_mib=2048, live=True, home=("luks", 1024, None)),
    ),
    "02-filling": (
        {"key": "/dev/sdb1", "title": "SOAS /dev/sdb1 (ext4)", "origin": "plugged in"},
        doc(state="valid", used_mib=1760, total_mib=2048),
    ),
    "03-critical": (
        {"key": "/dev/sdc1", "title": "SOAS2 /dev/sdc1 (ext4)", "origin": "plugged in"},
        doc(state="valid", used_mib=1000, total_mib=1024, label="SOAS2", device="/dev/sdc1"),
    ),
    "04-overflow": (
        {"key": "/dev/sdd1", "title": "CLASS4 /dev/sdd1 (ext4)", "origin": "plugged in"},
        doc(state="overflow", used_mib=1024, total_mib=1024, label="CLASS4", device="/dev/sdd1"),
    ),
    "05-invalid": (
        {"key": "/dev/sde1", "title": "CLASS5 /dev/sde1 (ext4)", "origin": "plugged in"},
        doc(
            state="invalid",
            used_mib=1024,
            total_mib=1024,
            label="CLASS5",
            device="/dev/sde1",
            valid=False,
        ),
    ),
    "06-corrupt": (
        {"key": "/srv/sticks/bad.img", "title": "bad.img", "origin": "command line"},
        doc(
            state="corrupt",
            used_mib=0,
            total_mib=512,
            label="BAD",
            device="/dev/loop7p1",
            source="image",
            problem="bad magic 0x00000bad (not a snapshot store)",
            valid=None,
        ),
    ),
    "07-new": (
        {"key": "/dev/sdf1", "title": "FRESH /dev/sdf1 (ext4)", "origin": "plugged in"},
        doc(state="new", used_mib=0, total_mib=1024, label="FRESH", device="/dev/sdf1", valid=None),
    ),
    "08-full-misnamed": (
        {"key": "/dev/sdg1", "title": "OLD /dev/sdg1 (ext4)", "origin": "plugged in"},
        doc(
            state="full",
            used_mib=256,
            total_mib=256,
            label="OLD",
            device="/dev/sdg1",
            overlay_name="overlay-OTHER-1234-5678",
            home=("absent", None, None),
        ),
    ),
    "09-no-overlay": (
        {"key": "/dev/sdh1", "title": "PLAIN /dev/sdh1 (ext4)", "origin": "plugged in"},
        doc(state="none", used_mib=0, total_mib=0, label="PLAIN", device="/dev/sdh1", kind="none"),
    ),
}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, (stick, d) in FIXTURES.items():
        details = DETAILS_LIVE if stick["key"] == "live" else DETAILS_STICK
        body = {"stick": stick, "status": canonical(d), "details": details}
        (OUT / f"{name}.json").write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
    unreadable = {
        "stick": {"key": "/dev/sdi1", "title": "LOCKED /dev/sdi1 (ext4)", "origin": "plugged in"},
        "error": {
            "message": "reading the device /dev/sdi1 needs root",
            "hint": "run the command with sudo",
        },
    }
    (OUT / "10-unreadable.json").write_text(json.dumps(unreadable, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
