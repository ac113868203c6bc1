"""`liveos-overlay economize`: what keeps filling the overlay, and the settings that stop it.

The consumers are the ones the Sugar Labs LiveOS page names: logs and the journal,
package caches, NetworkManager's state, the audit log, abrt's spool, and root's home.
The costs come from du (chunks the overlay holds for files under each path). `--apply`
(the running live system, or `--root DIR` for a tree standing in for /) installs drop-in
configuration: journald's volatile storage and tmpfs mount units; each file it writes
starts with MARKER and is listed in a manifest, so `--undo` removes exactly those.
Nothing takes effect before the next boot: mounting tmpfs over a directory in use would
hide what is open there now.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from liveos_tools.errors import TargetError, UsageError
from liveos_tools.plan import ByteRange, Plan

MARKER = "# installed by liveos-overlay economize; remove with: liveos-overlay economize --undo"
MANIFEST = Path("var/lib/liveos-tools/economize.json")
UNIT_DIR = Path("etc/systemd/system")
WANTS = UNIT_DIR / "local-fs.target.wants"
JOURNALD_DROPIN = Path("etc/systemd/journald.conf.d/90-liveos-economize.conf")


@dataclass(frozen=True)
class Consumer:
    path: str
    what: str
    remedy: str
    #: a tmpfs mount unit for this path (mode), or None
    tmpfs_mode: str | None = None
    journald: bool = False


CONSUMERS = (
    Consumer(
        "/var/log/journal",
        "the systemd journal",
        "keep the journal in RAM (journald Storage=volatile)",
        journald=True,
    ),
    Consumer(
        "/var/log/audit", "the audit log", "keep the audit log in RAM (tmpfs)", tmpfs_mode="0700"
    ),
    Consumer("/var/cache/dnf", "dnf's package cache", "keep it in RAM (tmpfs)", "0755"),
    Consumer("/var/cache/PackageKit", "PackageKit's cache", "keep it in RAM (tmpfs)", "0755"),
    Consumer(
        "/var/lib/NetworkManager",
        "NetworkManager's timestamps and leases, rewritten on every connection",
        "keep them in RAM (tmpfs)",
        "0755",
    ),
    Consumer("/var/spool/abrt", "abrt's crash reports", "keep them in RAM (tmpfs)", "0755"),
    Consumer(
        "/var/log",
        "other logs",
        "delete old logs (journalctl --vacuum-size, logrotate); they are kept by the overlay "
        "even after deletion until `compact`",
    ),
    Consumer(
        "/root",
        "root's home (not in home.img)",
        "move files to /home on home.img (`liveos-overlay home create` makes one)",
    ),
    Consumer(
        "/home",
        "home directories stored in the overlay (no home.img)",
        "keep homes in a home.img: `liveos-overlay home create`",
    ),
)


def unit_name(path: str) -> str:
    """systemd-escape --path for the plain paths above."""
    return path.strip("/").replace("-", "\\x2d").replace("/", "-") + ".mount"


def unit_text(c: Consumer) -> str:
    return (
        f"{MARKER}\n[Unit]\nDescription=Keep {c.path} in RAM, not in the overlay\n"
        "DefaultDependencies=no\nConflicts=umount.target\nBefore=local-fs.target umount.target\n"
        f"\n[Mount]\nWhat=tmpfs\nWhere={c.path}\nType=tmpfs\n"
        f"Options=mode={c.tmpfs_mode},size=20%\n\n[Install]\nWantedBy=local-fs.target\n"
    )


JOURNALD_TEXT = f"{MARKER}\n[Journal]\nStorage=volatile\nRuntimeMaxUse=32M\n"


def costs(files: dict[str, int], chunk_bytes: int) -> list[dict[str, Any]]:
    """Bytes per consumer; a file counts for the most specific consumer path only."""
    totals = {c.path: 0 for c in CONSUMERS}
    by_len = sorted(CONSUMERS, key=lambda c: -len(c.path))
    for path, n in files.items():
        for c in by_len:
            if path == c.path or path.startswith(c.path + "/"):
                totals[c.path] += n * chunk_bytes
                break
    return [
        {"path": c.path, "what": c.what, "bytes": totals[c.path], "remedy": c.remedy}
        for c in CONSUMERS
    ]


# -- apply / undo ------------------------------------------------------------------------------


def _writes(root: Path) -> list[tuple[Path, str | None]]:
    """(file, content) to write; content None is a symlink to the unit (the enablement)."""
    out: list[tuple[Path, str | None]] = [(root / JOURNALD_DROPIN, JOURNALD_TEXT)]
    for c in CONSUMERS:
        if c.tmpfs_mode:
            name = unit_name(c.path)
            out.append((root / UNIT_DIR / name, unit_text(c)))
            out.append((root / WANTS / name, None))
    return out


def _ours(path: Path) -> bool:
    if path.is_symlink():
        return os.readlink(path).startswith("../") and (path.parent.parent / path.name).is_file()
    try:
        with open(path) as f:
            return f.readline().rstrip("\n") == MARKER
    except OSError:
        return False


def plan_apply(root: Path) -> Plan:
    plan = Plan("economize: install drop-in configuration", str(root))
    for path, content in _writes(root):
        if (path.exists() or path.is_symlink()) and not _ours(path):
            raise UsageError(
                f"{path} exists and was not written by economize", "move it away first"
            )
        if content is None:
            plan.add(
                f"enable it: symlink {path} -> ../{path.name}",
                partial(_symlink, path),
            )
        else:
            plan.add(
                f"write {path}",
                partial(_write, path, content),
                writes=[ByteRange(str(path), 0, len(content.encode()), "drop-in configuration")],
            )
    manifest = root / MANIFEST
    plan.add(f"record what was written in {manifest}", lambda: _record(root))
    plan.notes.append("takes effect at the next boot; `economize --undo` removes it all")
    return plan


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    print(f"wrote {path}", file=sys.stderr)


def _symlink(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path.unlink()
    os.symlink(f"../{path.name}", path)
    print(f"wrote {path} -> ../{path.name}", file=sys.stderr)


def _record(root: Path) -> None:
    files = [str(p.relative_to(root)) for p, _ in _writes(root)]
    _write(root / MANIFEST, json.dumps({"files": files}, indent=2) + "\n")


def plan_undo(root: Path) -> Plan:
    manifest = root / MANIFEST
    try:
        files = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError):
        raise TargetError(
            f"nothing to undo: {manifest} is missing or unreadable",
            "economize --apply was not run on this system",
        ) from None
    plan = Plan("economize: remove drop-in configuration", str(root))
    for rel in files:
        path = root / rel
        if path.is_symlink() or path.exists():
            if not _ours(path):
                plan.notes.append(f"{path} was changed since: left as it is")
                continue
            plan.add(f"delete {path}", partial(_remove, path))
    plan.add(f"delete {manifest}", lambda: _remove(manifest))
    plan.notes.append("takes effect at the next boot")
    return plan


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    print(f"deleted {path}", file=sys.stderr)


# -- the command -------------------------------------------------------------------------------


def run_cli(args: argparse.Namespace) -> int:
    from liveos_tools.cli.common import confirm, progress_printer, show_plan

    if args.apply or args.undo:
        if args.apply and args.undo:
            raise UsageError("--apply and --undo together", "choose one")
        root = Path(args.root)
        if str(root) == "/":
            _require_live(args)
        if not root.is_dir():
            raise TargetError(f"{root}: no such directory")
        plan = plan_apply(root) if args.apply else plan_undo(root)
        show_plan(plan)
        if args.dry_run:
            print("dry run: nothing was changed", file=sys.stderr)
            return 0
        confirm(plan, yes=args.yes)
        plan.execute(progress_printer())
        return 0
    from liveos_tools.tasks import du

    rep = du.du_medium(args.target, livedir=args.livedir)
    items = costs(dict(rep.files), rep.chunk_bytes)
    if args.json:
        print(json.dumps({"schema": "liveos-tools/economize/1", "consumers": items}, indent=2))
        return 0
    from liveos_tools.units import format_size

    for it in sorted(items, key=lambda x: -int(x["bytes"])):
        print(f"{format_size(int(it['bytes'])):>10}  {it['path']}: {it['what']}")
        print(f"{'':>10}  -> {it['remedy']}")
    back = rep.reclaimable_chunks * rep.chunk_bytes
    print(f"\nreclaimable now: {format_size(back)} (`liveos-overlay compact`, stick not booted)")
    print("`liveos-overlay economize --apply` on the live system installs the RAM remedies")
    return 0


def _require_live(args: argparse.Namespace) -> None:
    if args.target is not None:
        raise UsageError(
            "--apply and --undo change the running live system only",
            "boot the stick and run it there (or give --root DIR for a tree standing in for /)",
        )
    if os.geteuid() != 0:
        raise TargetError("--apply and --undo write under /etc: run as root", "use sudo")
    if not Path("/run/initramfs/live").exists() and not Path("/dev/mapper/live-rw").exists():
        raise TargetError(
            "this is not a running live system (no /run/initramfs/live, no live-rw)",
            "boot the stick and run it there",
        )
