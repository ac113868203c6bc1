"""`liveos-overlay refresh` and `rollback`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

TARGET_HELP = "the stick's mount point, its device or partition, or a disk image"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", nargs="?", metavar="TARGET", help=TARGET_HELP)
    p.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask before changing things")
    p.add_argument("--livedir", metavar="DIR", help="LiveOS directory name (rd.live.dir)")


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "refresh",
        help="fold the overlay into a new squashfs.img and start a fresh overlay",
        description="Merge the live image and its overlay, check and compress the result into "
        "a new squashfs.img, and switch the stick to it with a fresh, empty overlay of the "
        "same size. The old image and overlay stay bootable ('Previous image' entry) until "
        "`rollback --drop-previous`. home.img and swap.img are not touched. A re-run "
        "finishes an interrupted refresh.",
    )
    _common(p)
    p.add_argument(
        "--workdir",
        metavar="DIR",
        help="where the merged image is built (default /var/tmp; needs room for it)",
    )
    p.add_argument("--compress", metavar="COMP", help="compressor (default: the old image's)")
    p.add_argument(
        "--no-keep-previous",
        action="store_true",
        help="delete the old image and overlay once the new pair is in place",
    )
    p.set_defaults(handler="liveos_tools.cli.refresh:run_refresh")

    p = sub.add_parser(
        "update",
        help="move the stick to a new release's image and kernel, keeping home.img",
        description="Copy a new release's squashfs.img, kernel and initrd (from its ISO or a "
        "directory) onto the stick and switch to them with a fresh overlay; the old image, "
        "its overlay (the changes made on it) and its kernel stay bootable as the previous "
        "image until `rollback --drop-previous`. home.img and swap.img are kept.",
    )
    p.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="SOURCE",
        help="the new release: an .iso or a directory holding LiveOS/",
    )
    _common(p)
    p.add_argument(
        "--no-keep-previous",
        action="store_true",
        help="delete the old release once the new one is in place",
    )
    p.set_defaults(handler="liveos_tools.cli.refresh:run_update")

    p = sub.add_parser(
        "rollback",
        help="boot the previous image again (the current one becomes the previous)",
        description="Make the image kept by refresh the default again, with its own overlay; "
        "the current pair is kept as the previous one. Also finishes or undoes an interrupted "
        "refresh. --drop-previous deletes the kept image instead, freeing its space.",
    )
    _common(p)
    p.add_argument(
        "--drop-previous", action="store_true", help="delete the kept previous image and entry"
    )
    p.set_defaults(handler="liveos_tools.cli.refresh:run_rollback")


def byte_meter(label: str) -> Callable[[int, int], None]:
    """Progress on stderr: bytes done, rate and ETA, at most twice a second."""
    import sys
    import time

    from liveos_tools.units import format_size

    start = time.monotonic()
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] < 0.5 and done < total:
            return
        last[0] = now
        rate = done / max(now - start, 1e-6)
        eta = (total - done) / rate if rate > 0 else 0.0
        line = (
            f"  {label}: {format_size(done)} / {format_size(total)}, "
            f"{format_size(int(rate))}/s, ETA {int(eta) // 60}:{int(eta) % 60:02d}"
        )
        end = "\n" if done >= total or not sys.stderr.isatty() else ""
        print("\r" + line if sys.stderr.isatty() else line, end=end, file=sys.stderr, flush=True)

    return report


def run_refresh(args: argparse.Namespace) -> int:
    from liveos_tools.cli.maintain import _drive, _say
    from liveos_tools.tasks import refresh

    plan = _drive(
        args,
        lambda m: refresh.plan_refresh(
            m,
            workdir=args.workdir,
            compress=args.compress,
            keep_previous=not args.no_keep_previous,
            meter=byte_meter,
        ),
        ask=True,
        question="Refresh the stick now?",
    )
    if plan is not None:
        _say(f"refreshed: {plan.target} boots the new image with an empty overlay")
    return 0


def run_update(args: argparse.Namespace) -> int:
    from liveos_tools.cli.maintain import _drive, _say
    from liveos_tools.tasks import update

    plan = _drive(
        args,
        lambda m: update.plan_update(
            m, source=args.source, keep_previous=not args.no_keep_previous, meter=byte_meter
        ),
        ask=True,
        question="Update the stick now?",
    )
    if plan is not None:
        _say(f"updated: {plan.target} boots the new release with an empty overlay")
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    from liveos_tools.cli.maintain import _drive, _say
    from liveos_tools.tasks import refresh
    from liveos_tools.units import format_size

    plan = _drive(
        args,
        lambda m: refresh.plan_rollback(m, drop_previous=args.drop_previous),
        ask=True,
        question="Go ahead?",
    )
    if plan is not None:
        freed = getattr(plan, "freed", 0)
        _say(f"{plan.title}: done" + (f", {format_size(freed)} freed" if freed else ""))
    return 0
