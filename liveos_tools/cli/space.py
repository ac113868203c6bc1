"""`liveos-overlay du`, `compact` and `economize`: where the overlay went, and taking it back."""

from __future__ import annotations

import argparse
from typing import Any

TARGET_HELP = (
    "a stick's mount point, a block device, a disk image, an overlay file, "
    "or nothing for the running live system"
)


def _target(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", nargs="?", metavar="TARGET", help=TARGET_HELP)
    p.add_argument("--livedir", metavar="DIR", help="LiveOS directory name (rd.live.dir)")


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "du",
        help="which files and directories fill the overlay, and what is reclaimable",
        description="Attribute every chunk of a device-mapper overlay to a file (by "
        "directory), filesystem metadata, or reclaimable space (chunks of deleted files, "
        "chunks equal to the base). Never writes.",
    )
    _target(p)
    p.add_argument("--json", action="store_true", help="print only JSON on stdout")
    p.add_argument("--depth", type=int, default=3, metavar="N", help="directory depth (3)")
    p.add_argument("--top", type=int, default=10, metavar="N", help="how many to list (10)")
    p.add_argument(
        "--exact",
        action="store_true",
        help="compare every chunk with the base (reads the whole overlay; slower)",
    )
    p.set_defaults(handler="liveos_tools.cli.space:run_du")

    p = sub.add_parser(
        "compact",
        help="rewrite the overlay without its reclaimable chunks (stick not booted)",
        description="Rewrite a device-mapper overlay keeping only the chunks that are in use "
        "and differ from the base. The new store is built beside the old one, verified, then "
        "switched in; the old one is kept as NAME.before-compact until you delete it. "
        "--restore puts it back.",
    )
    _target(p)
    p.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask before changing things")
    p.add_argument("--restore", action="store_true", help="undo the last compact")
    p.add_argument(
        "--force", action="store_true", help="with --restore: even if the overlay was used since"
    )
    p.set_defaults(handler="liveos_tools.cli.space:run_compact")

    p = sub.add_parser(
        "economize",
        help="what keeps filling the overlay, and settings that stop it",
        description="Advice drawn from du for the usual consumers (logs, the journal, "
        "package caches, NetworkManager, audit, abrt, root's home). --apply (on the running "
        "live system) installs drop-in configuration; --undo removes it.",
    )
    _target(p)
    p.add_argument("--json", action="store_true", help="print only JSON on stdout")
    p.add_argument("--apply", action="store_true", help="install the remedies (live system)")
    p.add_argument("--undo", action="store_true", help="remove what --apply installed")
    p.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask before changing things")
    p.add_argument(
        "--root",
        metavar="DIR",
        default="/",
        help="with --apply/--undo: the root to install into (default /; for tests)",
    )
    p.set_defaults(handler="liveos_tools.cli.space:run_economize")


def _progress(what: str) -> Any:
    import sys
    import time

    start = time.monotonic()
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if sys.stderr.isatty() and (now - last[0] > 0.5 or done == total):
            last[0] = now
            print(f"\r{what}: {done}/{total} chunks, {now - start:.0f} s", end="", file=sys.stderr)
            if done == total:
                print(file=sys.stderr)

    return report


def run_du(args: argparse.Namespace) -> int:
    import json

    from liveos_tools.tasks import du

    rep = du.du_medium(
        args.target, livedir=args.livedir, progress=_progress("reading"), exact=args.exact
    )
    du.check_sum(rep)
    if args.json:
        print(json.dumps(rep.to_json(depth=args.depth, top=args.top), indent=2))
    else:
        print(du.render_text(rep, depth=args.depth, top=args.top))
    return 0


def run_compact(args: argparse.Namespace) -> int:
    import sys

    from liveos_tools.cli.maintain import _drive
    from liveos_tools.tasks import compact

    if args.restore:
        _drive(args, lambda m: compact.plan_restore(m, force=args.force), ask=True)
        return 0
    plan = _drive(
        args,
        lambda m: compact.plan_compact(m, progress=_progress("reading")),
        ask=True,
        question="Compact the overlay?",
    )
    if plan is not None:
        for note in plan.notes:
            if note.startswith("keeps "):
                print(f"done: {note}", file=sys.stderr)
    return 0


def run_economize(args: argparse.Namespace) -> int:
    from liveos_tools.tasks import economize

    return int(economize.run_cli(args))
