"""`liveos-overlay home create|resize|copy|check` and `liveos-overlay swap create|remove`."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import contextlib
    from pathlib import Path

    from liveos_tools.plan import Plan

TARGET_HELP = (
    "the stick's mount point (the folder holding LiveOS/), its LiveOS folder, a block device "
    "or disk image of the stick, or a home.img file itself"
)


def _write_options(p: argparse.ArgumentParser) -> None:
    from liveos_tools.cli.common import add_write_options

    add_write_options(p)
    p.add_argument("--livedir", metavar="DIR", help="LiveOS directory name (rd.live.dir)")


def _passphrase_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--passphrase-file",
        metavar="FILE",
        help="read the LUKS passphrase from FILE, or from standard input with - (one "
        "trailing newline is dropped); otherwise it is asked on the terminal",
    )


def register(sub: argparse._SubParsersAction[Any]) -> None:
    home = sub.add_parser(
        "home",
        help="create, resize, copy and check LiveOS/home.img",
        description="Manage LiveOS/home.img, the persistent /home of a live stick "
        "(plain ext4 or LUKS-encrypted). " + TARGET_HELP[0].upper() + TARGET_HELP[1:] + ".",
    )
    hsub = home.add_subparsers(dest="home_command", metavar="ACTION", required=True)

    p = hsub.add_parser("create", help="make a new home.img (LUKS-encrypted by default)")
    p.add_argument("target", metavar="TARGET", help=TARGET_HELP)
    p.add_argument("--size", required=True, metavar="SIZE", help="e.g. 2G or 512M (bare: MiB)")
    p.add_argument("--fs", default="ext4", choices=("ext4", "ext3", "ext2"), dest="fstype")
    enc = p.add_mutually_exclusive_group()
    enc.add_argument("--encrypt", dest="encrypt", action="store_true", default=True)
    enc.add_argument("--no-encrypt", "--unencrypted", dest="encrypt", action="store_false")
    p.add_argument("--delete-home", action="store_true", help="replace an existing home.img")
    _passphrase_option(p)
    _write_options(p)
    p.set_defaults(handler="liveos_tools.cli.home:run_create")

    p = hsub.add_parser("resize", help="grow or shrink home.img and the filesystem in it")
    p.add_argument("target", metavar="TARGET", help=TARGET_HELP)
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--to", metavar="SIZE", help="the new size of home.img")
    size.add_argument(
        "--by",
        metavar="[+|-]SIZE",
        help="grow by SIZE, or shrink with a minus: --by=-512M (with '=')",
    )
    _passphrase_option(p)
    _write_options(p)
    p.set_defaults(handler="liveos_tools.cli.home:run_resize")

    p = hsub.add_parser(
        "copy",
        help="copy home.img: stick to stick, stick to a backup file, backup file to stick",
        description="Copy home.img, verified by SHA-256 and fsynced; an interrupted copy leaves "
        "the old file or nothing. A destination named home.img (or a stick) is preallocated; "
        "any other file name is a sparse backup.",
    )
    p.add_argument("source", metavar="SOURCE", help=TARGET_HELP)
    p.add_argument("dest", metavar="DEST", help="a stick (as TARGET) or a backup file name")
    p.add_argument("--delete-home", action="store_true", help="replace an existing DEST")
    _write_options(p)
    p.set_defaults(handler="liveos_tools.cli.home:run_copy")

    p = hsub.add_parser("check", help="e2fsck -n (through LUKS), usage and filesystem state")
    p.add_argument("target", metavar="TARGET", help=TARGET_HELP)
    p.add_argument("--json", action="store_true", help="print only JSON on stdout")
    p.add_argument("--livedir", metavar="DIR", help="LiveOS directory name (rd.live.dir)")
    _passphrase_option(p)
    p.set_defaults(handler="liveos_tools.cli.home:run_check")

    swap = sub.add_parser("swap", help="create or remove LiveOS/swap.img")
    ssub = swap.add_subparsers(dest="swap_command", metavar="ACTION", required=True)
    p = ssub.add_parser("create", help="make LiveOS/swap.img (zero-filled, mkswap)")
    p.add_argument("target", metavar="TARGET", help=TARGET_HELP.replace("home.img", "swap.img"))
    p.add_argument("--size", required=True, metavar="SIZE")
    _write_options(p)
    p.set_defaults(handler="liveos_tools.cli.home:run_swap_create")
    p = ssub.add_parser("remove", help="delete LiveOS/swap.img")
    p.add_argument("target", metavar="TARGET", help=TARGET_HELP.replace("home.img", "swap.img"))
    _write_options(p)
    p.set_defaults(handler="liveos_tools.cli.home:run_swap_remove")


# --- resolving TARGET -------------------------------------------------------------------------


def _open_file(
    stack: contextlib.ExitStack, target: str, livedir: str | None, name: str, *, writable: bool
) -> Path:
    """The path of LiveOS/<name> for TARGET (it need not exist yet)."""
    import inspect
    import os
    import stat
    from pathlib import Path

    from liveos_tools.errors import TargetError
    from liveos_tools.media import DEFAULT_LIVEDIR, open_medium

    ldir = livedir or DEFAULT_LIVEDIR
    path = Path(target)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if path.parent.is_dir():
            return path  # a file to create
        raise TargetError(f"{target}: no such file or directory", "check the path") from None
    if stat.S_ISDIR(st.st_mode):
        if (path / ldir).is_dir():
            return path / ldir / name
        if path.name == ldir or (path / "squashfs.img").exists() or any(path.glob("overlay-*")):
            return path / name
        raise TargetError(
            f"no {ldir} folder in {target}",
            "point at the stick's mount point (the folder that holds LiveOS/)",
        )
    if stat.S_ISREG(st.st_mode) and not _is_disk_image(path):
        return path
    if stat.S_ISBLK(st.st_mode) or stat.S_ISREG(st.st_mode):
        kwargs: dict[str, Any] = {}
        if "writable" in inspect.signature(open_medium).parameters:
            kwargs["writable"] = writable
        elif writable:
            raise TargetError(
                f"{target} is a device or disk image: mount it first",
                "give the folder where the stick is mounted",
            )
        medium = stack.enter_context(open_medium(target, livedir=livedir, **kwargs))
        if medium.livedir_path is None:
            raise TargetError(f"{target} has no {ldir} folder")
        return medium.livedir_path / name
    raise TargetError(f"{target} is not a directory, a block device or a file")


def _is_disk_image(path: Path) -> bool:
    """A partitioned stick image (MBR/GPT signature), not a home.img or a backup of one."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    return len(head) == 512 and head[510:512] == b"\x55\xaa" and head[:6] != b"LUKS\xba\xbe"


# --- passphrases --------------------------------------------------------------------------------


def _read_passphrase_file(name: str) -> bytes:
    import sys

    from liveos_tools.errors import UsageError

    try:
        if name == "-":
            # For a caller that pipes it in (the TUI through pkexec): never on argv.
            data = sys.stdin.buffer.read()
        else:
            with open(name, "rb") as f:
                data = f.read()
    except OSError as exc:
        raise UsageError(f"{name}: cannot read the passphrase file ({exc.strerror})") from None
    # `echo secret > file` adds a newline nobody types at the boot prompt.
    data = data[:-1] if data.endswith(b"\n") else data
    if not data:
        raise UsageError(f"{name}: the passphrase file is empty")
    return data


def _ask(twice: bool) -> bytes:
    import getpass
    import sys

    from liveos_tools.errors import AbortedError, UsageError

    if not sys.stdin.isatty():
        raise UsageError(
            "the LUKS passphrase is needed, and there is no terminal to ask on",
            "give --passphrase-file FILE",
        )
    try:
        first = getpass.getpass("Passphrase for home.img: ")
        if twice and getpass.getpass("The same again: ") != first:
            raise UsageError("the two passphrases differ", "nothing was changed; try again")
    except EOFError:
        raise AbortedError("no passphrase given", "nothing was changed") from None
    if not first:
        raise UsageError("the passphrase is empty")
    return first.encode()


def _passphrase(args: argparse.Namespace, *, twice: bool = False) -> bytes:
    if args.passphrase_file:
        return _read_passphrase_file(args.passphrase_file)
    return _ask(twice)


# --- running a plan -----------------------------------------------------------------------------


def _carry_out(args: argparse.Namespace, plan: Plan, *, ask: bool) -> int:
    import json
    import sys

    from liveos_tools.cli.common import confirm, progress_printer, show_plan

    if args.dry_run:
        show_plan(plan)
        if getattr(args, "json", False):
            print(json.dumps(plan.to_json(), indent=2))
        return 0
    if not plan.steps:
        for note in plan.notes:
            print(f"note: {note}", file=sys.stderr)
        return 0
    if ask or plan.destructive:
        show_plan(plan)
        confirm(plan, yes=args.yes)
    plan.execute(progress_printer())
    print(f"done: {plan.title}", file=sys.stderr)
    return 0


def run_create(args: argparse.Namespace) -> int:
    import contextlib

    from liveos_tools.tasks import home
    from liveos_tools.units import parse_size

    size = parse_size(args.size)
    with contextlib.ExitStack() as stack:
        path = _open_file(stack, args.target, args.livedir, home.HOME_NAME, writable=True)
        passphrase = None
        if args.encrypt:
            # Refuse an existing home.img before asking for a passphrase.
            home.plan_create(
                path,
                size=size,
                fstype=args.fstype,
                encrypt=False,
                delete_existing=args.delete_home,
            )
            from liveos_tools.tools import cryptsetup

            cryptsetup.require_dm_crypt()
            passphrase = _passphrase(args, twice=True)
        plan = home.plan_create(
            path,
            size=size,
            fstype=args.fstype,
            encrypt=args.encrypt,
            passphrase=passphrase,
            delete_existing=args.delete_home,
        )
        return _carry_out(args, plan, ask=False)


def _signed_size(text: str) -> int:
    from liveos_tools.units import parse_size

    stripped = text.strip()
    if stripped.startswith("-"):
        return -parse_size(stripped[1:])
    return parse_size(stripped.removeprefix("+"))


def _luks_passphrase(args: argparse.Namespace, path: Path) -> bytes | None:
    from liveos_tools.media import HomeKind
    from liveos_tools.tasks import home

    return _passphrase(args) if home.kind_of(path) is HomeKind.LUKS else None


def run_resize(args: argparse.Namespace) -> int:
    import contextlib

    from liveos_tools.tasks import home
    from liveos_tools.units import parse_size

    to = parse_size(args.to) if args.to is not None else None
    by = _signed_size(args.by) if args.by is not None else None
    with contextlib.ExitStack() as stack:
        path = _open_file(stack, args.target, args.livedir, home.HOME_NAME, writable=True)
        plan = home.plan_resize(
            path, to_bytes=to, by_bytes=by, passphrase=_luks_passphrase(args, path)
        )
        return _carry_out(args, plan, ask=True)


def run_copy(args: argparse.Namespace) -> int:
    import contextlib

    from liveos_tools.tasks import home

    with contextlib.ExitStack() as stack:
        source = _open_file(stack, args.source, args.livedir, home.HOME_NAME, writable=False)
        dest = _open_file(stack, args.dest, args.livedir, home.HOME_NAME, writable=True)
        plan = home.plan_copy(source, dest, delete_existing=args.delete_home)
        return _carry_out(args, plan, ask=False)


def run_check(args: argparse.Namespace) -> int:
    import contextlib
    import json
    import sys

    from liveos_tools.errors import ExitCode
    from liveos_tools.tasks import home

    with contextlib.ExitStack() as stack:
        path = _open_file(stack, args.target, args.livedir, home.HOME_NAME, writable=False)
        if args.passphrase_file or (sys.stdin.isatty() and home.kind_of(path).value == "luks"):
            passphrase = _luks_passphrase(args, path)
        else:
            passphrase = None
        report = home.check(path, passphrase)
    if args.json:
        print(json.dumps(check_to_json(report), indent=2))
    else:
        print(render_check(report))
    if report.fsck_clean is False:
        print(f"error: the filesystem in {report.path} has errors", file=sys.stderr)
        print("hint: back it up (home copy), then repair it with e2fsck -f", file=sys.stderr)
        return int(ExitCode.CORRUPT)
    return int(ExitCode.OK)


def check_to_json(report: Any) -> dict[str, Any]:
    from dataclasses import asdict

    data = asdict(report)
    data["kind"] = report.kind.value
    data["problems"] = list(report.problems)
    return data


def render_check(report: Any) -> str:
    from liveos_tools.units import format_size

    kind = "LUKS" + str(report.luks_version) if report.encrypted else "plain"
    lines = [f"home.img  {report.path}", f"Kind      {kind}, {format_size(report.size_bytes)}"]
    if report.fs_bytes is not None:
        used = format_size(report.used_bytes or 0)
        lines.append(
            f"Files     {used} used of {format_size(report.fs_bytes)}, "
            f"label {report.label or '(none)'}, state {report.state}"
        )
    if report.fsck_code is not None:
        verdict = "clean" if report.fsck_clean else f"errors (e2fsck exit {report.fsck_code})"
        lines.append(f"e2fsck -n {verdict}")
        lines.extend(f"          {p}" for p in report.problems)
    if report.note:
        lines.append(f"note: {report.note}")
    return "\n".join(lines)


def run_swap_create(args: argparse.Namespace) -> int:
    import contextlib

    from liveos_tools.tasks import swap
    from liveos_tools.units import parse_size

    size = parse_size(args.size)
    with contextlib.ExitStack() as stack:
        path = _open_file(stack, args.target, args.livedir, swap.SWAP_NAME, writable=True)
        return _carry_out(args, swap.plan_create(path, size), ask=False)


def run_swap_remove(args: argparse.Namespace) -> int:
    import contextlib

    from liveos_tools.tasks import swap

    with contextlib.ExitStack() as stack:
        path = _open_file(stack, args.target, args.livedir, swap.SWAP_NAME, writable=True)
        return _carry_out(args, swap.plan_remove(path), ask=False)
