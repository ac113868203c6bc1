"""`liveos-overlay home create|resize|copy|check` and `liveos-overlay swap create|remove`."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import contextlib
    from collections.abc import Callable
    from pathlib import Path

    from liveos_tools.plan import Plan

TARGET_HELP = (
    "the stick's mount point (the folder holding LiveOS/), its LiveOS folder, a block device "
    "or disk image of the stick (partitioned or a bare filesystem: a file with a LiveOS "
    "folder inside is a stick), or a home.img file itself. A path that does not exist is "
    "refused, except one named home.img in an existing folder for create"
)

#: (where a stick image or device was mounted, how to show it: "IMAGE:")
Names = list[tuple[str, str]]


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
    stack: contextlib.ExitStack,
    target: str,
    livedir: str | None,
    name: str,
    *,
    writable: bool,
    mode: str = "existing",
) -> tuple[Path, Names]:
    """The path of LiveOS/<name> for TARGET, and how to show it (media.open_livedir_file)."""
    from liveos_tools.media import open_livedir_file

    path, medium = open_livedir_file(
        stack,
        target,
        livedir,
        name,
        writable=writable,
        mode=mode,
        is_file_itself=_is_home_image,
    )
    if medium is None or medium.root is None:
        return path, []
    return path, [(str(medium.root), f"{target}:")]


def _is_home_image(path: Path) -> bool:
    from liveos_tools.media import HomeKind
    from liveos_tools.tasks import home

    return home.kind_of(path) in (HomeKind.LUKS, HomeKind.PLAIN)


def _sub(text: str, names: Names) -> str:
    for root, shown in names:
        text = text.replace(root + "/", shown + "/").replace(root, shown)
    return text


def _shown(plan: Plan, names: Names) -> Plan:
    """The plan as the user should read it: a temporary mount point shown as IMAGE:/..."""
    from liveos_tools.plan import ByteRange, Plan, Step

    if not names:
        return plan
    return Plan(
        _sub(plan.title, names),
        _sub(plan.target, names),
        steps=[
            Step(
                _sub(st.summary, names),
                tuple(tuple(_sub(a, names) for a in argv) for argv in st.commands),
                tuple(
                    ByteRange(_sub(w.path, names), w.offset, w.length, _sub(w.what, names))
                    for w in st.writes
                ),
            )
            for st in plan.steps
        ],
        destroys=[_sub(d, names) for d in plan.destroys],
        notes=[_sub(n, names) for n in plan.notes],
    )


class _translated:
    """Errors name the user's image, not where it was mounted for a moment."""

    def __init__(self, names: Names) -> None:
        self.names = names

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        from liveos_tools.errors import LiveOSError

        if self.names and isinstance(exc, LiveOSError):
            exc.message = _sub(exc.message, self.names)
            exc.hint = _sub(exc.hint, self.names) if exc.hint else exc.hint
            exc.args = (exc.message, *exc.args[1:])


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


def _resolver(
    args: argparse.Namespace, specs: list[tuple[str, str, str, bool]]
) -> Callable[[contextlib.ExitStack, bool], tuple[list[Path], Names, bool]]:
    """specs: (target, file name, mode, may_write) for each TARGET of the command."""

    def resolve(stack: contextlib.ExitStack, writable: bool) -> tuple[list[Path], Names, bool]:
        paths: list[Path] = []
        names: Names = []
        for target, name, mode, may_write in specs:
            path, shown = _open_file(
                stack, target, args.livedir, name, writable=writable and may_write, mode=mode
            )
            paths.append(path)
            names += shown
        return paths, names, any(may_write for *_, may_write in specs) and bool(names)

    return resolve


def _carry_out(
    args: argparse.Namespace,
    resolve: Callable[[contextlib.ExitStack, bool], tuple[list[Path], Names, bool]],
    make: Callable[[list[Path], bool], Plan],
    *,
    ask: bool,
) -> int:
    """Plan on a read-only view (a stick image or device is mounted read-only), show it,
    confirm; only then reopen it read-write, plan again and execute. So --dry-run, a
    refusal or a "no" leaves an image byte-identical. make(paths, final) builds the plan;
    final is False for the first, read-only, pass."""
    import json
    import sys

    from liveos_tools.cli.common import confirm, progress_printer, show_plan
    from liveos_tools.staged import Staged

    def execute(plan: Plan, names: Names) -> None:
        report = progress_printer()
        plan.execute(lambda i, n, summary: report(i, n, _sub(summary, names)))
        print(f"done: {_sub(plan.title, names)}", file=sys.stderr)

    names: Names = []

    def view(stack: contextlib.ExitStack, writable: bool) -> tuple[Plan, bool]:
        paths, found, reopen = resolve(stack, writable)
        names[:] = found
        with _translated(names):
            return make(paths, writable or (not reopen and not args.dry_run)), reopen

    with Staged(view) as staged, _translated(names):
        plan = staged.plan
        shown = _shown(plan, names)
        if args.dry_run:
            show_plan(shown)
            if getattr(args, "json", False):
                print(json.dumps(shown.to_json(), indent=2))
            print("dry run: nothing was changed", file=sys.stderr)
            return 0
        if not plan.steps:
            for note in shown.notes:
                print(f"note: {note}", file=sys.stderr)
            return 0
        if ask or plan.destructive:
            show_plan(shown)
            confirm(shown, yes=args.yes)
        staged.carry_out(lambda final: execute(final, names))
    return 0


def run_create(args: argparse.Namespace) -> int:
    from liveos_tools.tasks import home
    from liveos_tools.units import parse_size

    size = parse_size(args.size)
    key: list[bytes] = []

    def make(paths: list[Path], final: bool) -> Plan:
        def plan(passphrase: bytes | None, dry: bool) -> Plan:
            return home.plan_create(
                paths[0],
                size=size,
                fstype=args.fstype,
                encrypt=args.encrypt,
                passphrase=passphrase,
                delete_existing=args.delete_home,
                dry_run=dry,
            )

        if not args.encrypt:
            return plan(None, False)
        if not key:
            # Every refusal (an existing home.img, the size, a missing program) first.
            shown = plan(None, True)
            if args.dry_run:
                return shown
            from liveos_tools.tools import cryptsetup

            cryptsetup.require_dm_crypt()
            key.append(_passphrase(args, twice=True))
        return plan(key[0], False)

    resolve = _resolver(args, [(args.target, home.HOME_NAME, "create", True)])
    return _carry_out(args, resolve, make, ask=False)


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
    from liveos_tools.tasks import home
    from liveos_tools.units import parse_size

    to = parse_size(args.to) if args.to is not None else None
    by = _signed_size(args.by) if args.by is not None else None
    key: list[bytes | None] = []

    def make(paths: list[Path], final: bool) -> Plan:
        if not key:
            key.append(_luks_passphrase(args, paths[0]))
        return home.plan_resize(paths[0], to_bytes=to, by_bytes=by, passphrase=key[0])

    resolve = _resolver(args, [(args.target, home.HOME_NAME, "existing", True)])
    return _carry_out(args, resolve, make, ask=True)


def run_copy(args: argparse.Namespace) -> int:
    from liveos_tools.tasks import home

    def make(paths: list[Path], final: bool) -> Plan:
        return home.plan_copy(paths[0], paths[1], delete_existing=args.delete_home)

    resolve = _resolver(
        args,
        [
            (args.source, home.HOME_NAME, "existing", False),
            (args.dest, home.HOME_NAME, "dest", True),
        ],
    )
    return _carry_out(args, resolve, make, ask=False)


def run_check(args: argparse.Namespace) -> int:
    import contextlib
    import json
    import sys
    from dataclasses import replace

    from liveos_tools.errors import ExitCode
    from liveos_tools.tasks import home

    with contextlib.ExitStack() as stack:
        path, names = _open_file(stack, args.target, args.livedir, home.HOME_NAME, writable=False)
        if args.passphrase_file or (sys.stdin.isatty() and home.kind_of(path).value == "luks"):
            passphrase = _luks_passphrase(args, path)
        else:
            passphrase = None
        with _translated(names):
            report = home.check(path, passphrase)
        report = replace(report, path=_sub(report.path, names))
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
    from liveos_tools.tasks import swap
    from liveos_tools.units import parse_size

    size = parse_size(args.size)
    resolve = _resolver(args, [(args.target, swap.SWAP_NAME, "create", True)])
    return _carry_out(
        args, resolve, lambda paths, final: swap.plan_create(paths[0], size), ask=False
    )


def run_swap_remove(args: argparse.Namespace) -> int:
    from liveos_tools.tasks import swap

    resolve = _resolver(args, [(args.target, swap.SWAP_NAME, "existing", True)])
    return _carry_out(args, resolve, lambda paths, final: swap.plan_remove(paths[0]), ask=False)
