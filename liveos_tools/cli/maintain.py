"""`liveos-overlay repair`, `grow` and `reset`: plan, show, confirm, execute.

A stick image or device is first opened read-only: every check and the plan run
against that, so a refusal, a dry run or a "no" leaves the image byte-identical
(a read-write mount alone would change its superblock). Only once the user agreed
is it reopened read-write and the plan built again and executed.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from liveos_tools.media import Medium
    from liveos_tools.plan import Plan

TARGET_HELP = (
    "a stick's mount point, a block device, a disk image, an overlay file, "
    "or nothing for the running live system"
)


def _common(p: argparse.ArgumentParser) -> None:
    # The same options as cli/common.py: add_write_options, without importing it at start.
    p.add_argument("target", nargs="?", metavar="TARGET", help=TARGET_HELP)
    p.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask before changing things")
    p.add_argument("--livedir", metavar="DIR", help="LiveOS directory name (rd.live.dir)")
    p.add_argument(
        "--backup-dir",
        metavar="DIR",
        help="where backups go (default $LIVEOS_BACKUP_DIR or /var/lib/liveos-tools/backups)",
    )


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "repair",
        help="bring back an invalid or full overlay (backup, fsck, verify)",
        description="Repair a device-mapper overlay marked invalid or full: back it up, set it "
        "valid again, grow it if it is full, and fsck the root filesystem through it. Run it "
        "with the stick NOT booted. --restore BACKUP puts a backup back.",
    )
    _common(p)
    p.add_argument("--restore", metavar="BACKUP", help="put this backup (.lobak) back")
    p.add_argument(
        "--force",
        action="store_true",
        help="with --restore: restore even if the overlay changed since the operation "
        "(what it overwrites is backed up first)",
    )
    p.add_argument(
        "--grow-by", metavar="SIZE", help="grow the overlay by SIZE first (default: if full)"
    )
    p.set_defaults(handler="liveos_tools.cli.maintain:run_repair")

    p = sub.add_parser(
        "grow",
        help="make the overlay larger (also on a running live system)",
        description="Extend a device-mapper overlay with zeros. Works offline and on the "
        "running live system (the snapshot sees the new space at once).",
    )
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--by", metavar="SIZE", help="add SIZE (e.g. 512M, 1G)")
    size.add_argument("--to", metavar="SIZE", help="grow to SIZE in total")
    _common(p)
    p.set_defaults(handler="liveos_tools.cli.maintain:run_grow")

    p = sub.add_parser(
        "reset",
        help="empty the overlay: every change stored on the stick is gone",
        description="Empty the overlay the way rd.live.overlay.reset does (a dm overlay's "
        "first 64 KiB are zeroed, after a backup). Every change stored on the stick is lost.",
    )
    _common(p)
    p.set_defaults(handler="liveos_tools.cli.maintain:run_reset")


def _say(text: str) -> None:
    import sys

    print(text, file=sys.stderr, flush=True)


def _drive(
    args: argparse.Namespace,
    make: Callable[[Medium], Plan],
    *,
    ask: bool,
    question: str = "Go ahead?",
    target: str | None = None,
    livedir: str | None = None,
    before_asking: Callable[[Plan], None] | None = None,
) -> Plan | None:
    """Plan on a read-only view, show, confirm, then execute on a writable one.

    `before_asking` raises what stops the plan from running here (repair without
    device-mapper), so the user is not asked for nothing."""
    from liveos_tools.cli.common import confirm, show_plan
    from liveos_tools.staged import Staged, medium_view

    target = target if target is not None else args.target
    livedir = livedir if livedir is not None else args.livedir
    with Staged(medium_view(target, make, livedir=livedir)) as staged:
        plan = staged.plan
        show_plan(plan)
        if args.dry_run:
            _say("dry run: nothing was changed")
            return None
        if before_asking is not None:
            before_asking(plan)
        if ask or plan.destructive:
            confirm(plan, yes=args.yes, question=question)
        return staged.carry_out(_execute)


def _execute(plan: Plan) -> None:
    from liveos_tools.cli.common import progress_printer

    before = len(plan.notes)
    try:
        plan.execute(progress_printer())
    finally:
        for note in plan.notes[before:]:
            _say(note)


def _size(text: str | None) -> int | None:
    from liveos_tools.units import parse_size

    return None if text is None else parse_size(text)


def run_repair(args: argparse.Namespace) -> int:
    from liveos_tools.tasks import repair

    if args.restore:
        return _run_restore(args)
    grow_by = _size(args.grow_by)
    plan = _drive(
        args,
        lambda m: repair.plan_repair(m, grow_by=grow_by, backup_dir=args.backup_dir),
        ask=True,
        question="Repair the overlay now?",
        before_asking=lambda p: p.ready() if isinstance(p, repair.RepairPlan) else None,
    )
    if plan is not None and isinstance(plan, repair.RepairPlan) and plan.session:
        s = plan.session
        for line in s.fsck_results:
            _say(line)
        if s.result is not None:
            r = s.result
            _say(
                f"repaired: {s.overlay.name} is valid, {r.used_fraction * 100:.1f}% used "
                f"({r.sectors_allocated}/{r.total_sectors} {r.metadata_sectors})"
            )
        if s.backup is not None:
            _say(f"backup kept: {s.backup.path} (undo: liveos-overlay repair --restore ...)")
    return 0


def _run_restore(args: argparse.Namespace) -> int:
    """Plan the restore on a read-only view of the medium, ask, then write."""
    from pathlib import Path

    from liveos_tools.cli.common import confirm, show_plan
    from liveos_tools.tasks import backup as bk
    from liveos_tools.tasks import repair

    def make(medium: Medium | None) -> Plan:
        return repair.plan_restore(
            args.restore, medium, force=args.force, backup_dir=args.backup_dir
        )

    target, livedir = args.target, args.livedir
    if target is None:
        rec = bk.read_backup(args.restore)[0].record
        if rec.medium_source in ("image", "device") and rec.medium_target:
            # The overlay was reached through a temporary mount: open the image or
            # device the user named then, and find the overlay inside it again.
            target = rec.medium_target
            if livedir is None and rec.inner:
                livedir = str(Path(rec.inner).parent)
    if target is None:
        plan = make(None)
        show_plan(plan)
        if args.dry_run:
            _say("dry run: nothing was changed")
            return 0
        confirm(plan, yes=args.yes, question="Restore the backup now?")
        _execute(plan)
        return 0
    _drive(
        args,
        make,
        ask=True,
        question="Restore the backup now?",
        target=target,
        livedir=livedir,
    )
    return 0


def run_grow(args: argparse.Namespace) -> int:
    from liveos_tools.tasks import grow

    to_bytes, by_bytes = _size(args.to), _size(args.by)
    plan = _drive(
        args,
        lambda m: grow.plan_grow(
            m, to_bytes=to_bytes, by_bytes=by_bytes, backup_dir=args.backup_dir
        ),
        ask=False,
    )
    if plan is not None and plan.steps:
        _say(f"grown: {plan.target}")
    return 0


def run_reset(args: argparse.Namespace) -> int:
    from liveos_tools.tasks import reset

    plan = _drive(
        args,
        lambda m: reset.plan_reset(m, backup_dir=args.backup_dir),
        ask=True,
        question="Every change stored on the stick will be gone. Reset the overlay?",
    )
    if plan is not None:
        _say(f"reset: {plan.target} is empty; the next boot starts from the original image")
    return 0
