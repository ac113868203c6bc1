"""`liveos-overlay monitor`: publish the live overlay's status for users who are not root."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "monitor",
        help="publish the live overlay's status to a world-readable file (runs as root)",
        description="Reading a live snapshot's usage needs root. The monitor runs as root "
        "and writes the status JSON to /run/liveos-tools/status.json (mode 0644), where "
        "the TUI and other users read it.",
    )
    msub = p.add_subparsers(dest="monitor_command", metavar="ACTION", required=True)

    r = msub.add_parser("run", help="publish the status now and every --interval seconds")
    r.add_argument("--interval", type=float, default=5.0, metavar="SECONDS")
    r.add_argument("--once", action="store_true", help="publish once and exit")
    r.add_argument("--output", metavar="PATH", help="where to write (default: %(default)s)")
    r.add_argument("--livedir", metavar="DIR", help="LiveOS directory name (rd.live.dir)")
    r.set_defaults(handler="liveos_tools.cli.monitor:run_cmd")

    i = msub.add_parser(
        "install", help="install and enable the systemd unit liveos-overlay-monitor.service"
    )
    i.add_argument("--root", metavar="DIR", default="/", help="system root (default: /)")
    i.add_argument("--interval", type=float, default=5.0, metavar="SECONDS")
    i.add_argument(
        "--exe", metavar="PATH", help="the liveos-overlay to run (default: this one's path)"
    )
    i.add_argument("--no-start", action="store_true", help="do not start it now")
    i.set_defaults(handler="liveos_tools.cli.monitor:install_cmd")

    u = msub.add_parser("uninstall", help="remove the systemd unit")
    u.add_argument("--root", metavar="DIR", default="/", help="system root (default: /)")
    u.set_defaults(handler="liveos_tools.cli.monitor:uninstall_cmd")

    s = msub.add_parser("show", help="print the published status JSON and its age")
    s.add_argument("--output", metavar="PATH", help="the status file to read")
    s.set_defaults(handler="liveos_tools.cli.monitor:show_cmd")


def run_cmd(args: argparse.Namespace) -> int:
    import contextlib
    import sys
    from pathlib import Path

    from liveos_tools.tasks import monitor

    path = Path(args.output) if args.output else monitor.STATUS_PATH
    if not args.once:
        print(f"publishing to {path} every {args.interval:g} s", file=sys.stderr, flush=True)
    # Ctrl-C ends a run in a terminal cleanly; systemd stops it with SIGTERM.
    with contextlib.suppress(KeyboardInterrupt):
        monitor.run_loop(
            interval=args.interval,
            path=path,
            once=args.once,
            build=lambda: monitor.live_status_doc(args.livedir),
        )
    return 0


def _exe() -> str:
    import os
    import shutil
    import sys

    found = shutil.which("liveos-overlay")
    if found:
        return os.path.abspath(found)
    return f"{sys.executable} -m liveos_tools.cli.main"


def install_cmd(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from liveos_tools.tasks import monitor

    root = Path(args.root)
    written = monitor.install(root, args.exe or _exe(), interval=args.interval)
    for p in written:
        print(f"wrote {p}", file=sys.stderr)
    if root.resolve() == Path("/") and not args.no_start:
        from liveos_tools.tools import systemctl

        if systemctl.available():
            systemctl.daemon_reload()
            systemctl.start(monitor.UNIT_NAME)
            print(f"started {monitor.UNIT_NAME}", file=sys.stderr)
        else:
            print("systemctl not found: the unit starts at next boot", file=sys.stderr)
    return 0


def uninstall_cmd(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from liveos_tools.tasks import monitor

    root = Path(args.root)
    if root.resolve() == Path("/"):
        from liveos_tools.tools import systemctl

        if systemctl.available():
            systemctl.stop(monitor.UNIT_NAME)
    for p in monitor.uninstall(root):
        print(f"removed {p}", file=sys.stderr)
    return 0


def show_cmd(args: argparse.Namespace) -> int:
    import json
    import sys
    from pathlib import Path

    from liveos_tools.tasks import monitor

    doc = monitor.read_published(Path(args.output) if args.output else monitor.STATUS_PATH)
    age = monitor.age_seconds(doc)
    if age is not None:
        stale = ""
        if monitor.is_stale(doc):
            stale = (
                f" (stale: older than {monitor.stale_after(doc):.0f} s;"
                f" is {monitor.UNIT_NAME} running?)"
            )
        print(f"published {age:.0f} s ago{stale}", file=sys.stderr)
    print(json.dumps(doc, indent=2))
    return int(doc.get("exit_code", 0))
