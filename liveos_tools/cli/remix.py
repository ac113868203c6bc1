"""`liveos-overlay remix`: a customised stick into a new bootable ISO."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from liveos_tools.tasks.remix import RemixResult


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "remix",
        help="make a new bootable ISO from a customised stick, private data left out",
        description="Merge the stick's image and its overlay into a new, fsck-clean root with "
        "free blocks zeroed, leave out private data (machine identity, Wi-Fi passwords, SSH "
        "host keys, logs, shell histories, root's home, caches, liveuser's password), and "
        "write a bootable hybrid ISO (BIOS isolinux, EFI, dd-able) with an implanted md5. The "
        "stick is only read. Exit codes: 4 not a LiveOS stick, 5 overlay in use, 6 no room, "
        "7 a program is missing, 9 interrupted, 10 corrupt overlay (repair it first).",
    )
    p.add_argument(
        "target",
        nargs="?",
        metavar="TARGET",
        help="the stick: its mount point, device or disk image",
    )
    p.add_argument("-o", "--output", required=True, metavar="NEW.iso", help="the ISO to write")
    p.add_argument(
        "--label",
        help="the ISO's volume label (at most 32 characters; default: the stick's or --base-iso's)",
    )
    p.add_argument(
        "--base-iso",
        metavar="ORIGINAL.iso",
        help="take the boot files (kernel, initrd, EFI) from this ISO",
    )
    p.add_argument(
        "--workdir",
        metavar="DIR",
        help="where the scratch image and squashfs go (default: by the ISO)",
    )
    p.add_argument(
        "--seclude",
        action="append",
        default=[],
        metavar="PATH",
        help="also leave out PATH (in the live root, globs allowed); repeatable",
    )
    p.add_argument(
        "--keep",
        action="append",
        default=[],
        metavar="PATH",
        help="keep PATH though the default list leaves it out; repeatable",
    )
    p.add_argument(
        "--no-seclude",
        action="store_true",
        help="leave nothing out (the ISO carries the stick's private data)",
    )
    p.add_argument(
        "--clone",
        action="store_true",
        help="put the stick's home.img into the ISO as LiveOS/home.img",
    )
    p.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="PATH",
        help="copy PATH from the stick's top folder into the ISO; repeatable",
    )
    p.add_argument("--livedir", metavar="DIR", help="LiveOS directory name (rd.live.dir)")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("--dry-run", action="store_true", help="print the plan and write nothing")
    p.add_argument("-y", "--yes", action="store_true", help="replace an existing output unasked")
    p.set_defaults(handler="liveos_tools.cli.remix:run")


class _Bytes:
    """Per stage progress lines: bytes, rate, ETA (liveos_tools.writer.copy.Progress)."""

    def __init__(self) -> None:
        from liveos_tools.writer.copy import Progress

        self.names = {"merge": "merging", "squashfs": "squashfs", "iso": "ISO"}
        self._cls = Progress
        self._stage = ""
        self._p: Progress | None = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self._stage or self._p is None:
            self.finish()
            self._stage = stage
            self._p = self._cls(self.names.get(stage, stage), total)
        self._p.total = max(total, 1)
        if done > self._p.done:
            self._p.update(done - self._p.done)
        if done >= total:
            self.finish()

    def finish(self) -> None:
        if self._p is not None:
            self._p.finish()
            self._p = None


def _print_result(result: RemixResult, as_json: bool) -> None:
    import sys

    if as_json:
        import json

        data = {
            "output": str(result.output),
            "label": result.label,
            "size_bytes": result.size_bytes,
            "md5": result.md5,
            "left_out": [
                {
                    "path": x.path,
                    "action": x.action.value,
                    "files": x.files,
                    "bytes": x.bytes,
                    "why": x.why,
                }
                for x in result.left_out
            ],
            "warnings": result.warnings,
        }
        print(json.dumps(data, indent=2))
        return
    from liveos_tools.units import format_size

    if result.left_out:
        print("left out of the ISO:")
        for x in result.left_out:
            print(f"  {x.line()}")
    else:
        print("left out of the ISO: nothing")
    print(
        f"wrote {result.output} ({format_size(result.size_bytes)}, label {result.label!r}, "
        f"md5 {result.md5})"
    )
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from liveos_tools.cli.common import confirm, progress_printer, show_plan
    from liveos_tools.tasks.remix import RemixOptions, prepared

    opts = RemixOptions(
        output=Path(args.output),
        label=args.label,
        base_iso=Path(args.base_iso) if args.base_iso else None,
        workdir=Path(args.workdir) if args.workdir else None,
        seclude=tuple(args.seclude),
        keep=tuple(args.keep),
        no_seclude=args.no_seclude,
        clone=args.clone,
        include=tuple(args.include),
    )
    bytes_progress = _Bytes()
    with prepared(args.target, opts, livedir=args.livedir, progress=bytes_progress) as (
        remix,
        plan,
    ):
        show_plan(plan)
        if args.dry_run:
            print("dry run: nothing was written", file=sys.stderr)
            return 0
        if plan.destructive:
            confirm(plan, yes=args.yes)
        try:
            result = remix.execute(plan, progress_printer())
        finally:
            bytes_progress.finish()
    _print_result(result, args.json)
    return 0
