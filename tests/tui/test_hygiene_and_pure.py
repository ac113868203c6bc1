"""The library never imports textual; pure helpers of the TUI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from liveos_tools.media import boot_args_from_config
from liveos_tools.units import MiB
from tests.tui.bootstrap import pythonpath

# isort: split
from liveos_tools_tui import discovery
from liveos_tools_tui.backend import Action, ActionParams, Stick, StickOrigin
from liveos_tools_tui.history import History, format_duration
from liveos_tools_tui.real import command_for, size_arg

REPO = Path(__file__).resolve().parents[2]


def test_library_cli_and_monitor_never_import_textual() -> None:
    code = (
        "import sys, pkgutil, importlib, liveos_tools\n"
        "for m in pkgutil.walk_packages(liveos_tools.__path__, 'liveos_tools.'):\n"
        "    importlib.import_module(m.name)\n"
        "import liveos_tools.cli.main as main\n"
        "main.build_parser()\n"
        "try:\n"
        "    main.main(['tui', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted({k.split('.')[0] for k in sys.modules} & {'textual', 'liveos_tools_tui'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": pythonpath(), "PATH": "/usr/bin:/bin"},
    ).stdout.strip()
    assert out.splitlines()[-1] == "[]"


def test_tui_backend_modules_do_not_need_textual() -> None:
    # backend, present, history, real, fake are plain Python: only the widgets need textual.
    code = (
        "import sys\n"
        "import liveos_tools_tui.backend, liveos_tools_tui.present, liveos_tools_tui.history\n"
        "import liveos_tools_tui.real, liveos_tools_tui.fake\n"
        "print('textual' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": pythonpath(), "PATH": "/usr/bin:/bin"},
    ).stdout.strip()
    assert out == "False"


def test_history_rate_and_time_left() -> None:
    h = History()
    assert h.seconds_left(100 * MiB) is None
    for i in range(5):
        h.add(100.0 + 5 * i, 10 * MiB + i * MiB // 2)  # 0.1 MiB/s
    assert h.rate() == pytest.approx(MiB / 10)
    assert h.seconds_left(100 * MiB) == pytest.approx((100 - 12) * 10)
    flat = History()
    flat.add(0, 5)
    flat.add(60, 5)
    assert flat.rate() == 0 and flat.seconds_left(10) is None
    short = History()
    short.add(0, 1)
    short.add(5, 2)
    assert short.rate() is None  # under 10 s: not enough to judge
    assert [format_duration(s) for s in (30, 600, 5400, 3 * 86400)] == [
        "30 s",
        "10 min",
        "1.5 h",
        "3.0 days",
    ]


def test_udev_candidates() -> None:
    usb = {"node": "/dev/sdb1", "ID_FS_USAGE": "filesystem", "ID_FS_TYPE": "vfat", "ID_BUS": "usb"}
    assert discovery.is_candidate(usb)
    assert discovery.is_candidate({**usb, "ID_BUS": "ata", "removable": "1"})
    assert not discovery.is_candidate({**usb, "ID_BUS": "ata", "removable": "0"})
    assert not discovery.is_candidate({**usb, "ID_FS_TYPE": "iso9660"})
    assert not discovery.is_candidate({**usb, "ID_FS_USAGE": "crypto"})
    assert discovery.title_of({**usb, "ID_FS_LABEL": "SOAS"}) == "SOAS /dev/sdb1 (vfat)"


def test_boot_args_from_grub_config() -> None:
    cfg = (
        "set default=0\n"
        "menuentry 'Start' {\n"
        "  linux /images/pxeboot/vmlinuz root=live:UUID=ab-12 rd.live.image rw quiet "
        "rd.live.overlay=UUID=ab-12\n"
        "}\n"
    )
    assert boot_args_from_config(cfg) == {
        "root": "live:UUID=ab-12",
        "rd.live.image": "1",
        "rd.live.overlay": "UUID=ab-12",
    }
    assert boot_args_from_config("linux /vmlinuz root=/dev/sda1\n") == {}


def test_privileged_command_lines_match_the_cli() -> None:
    from liveos_tools.cli.main import build_parser

    stick = Stick("/dev/sdb1", "/dev/sdb1", "SOAS", StickOrigin.PLUGGED)
    other = Stick("/dev/sdc1", "/dev/sdc1", "B", StickOrigin.PLUGGED)
    live = Stick("live", None, "live", StickOrigin.LIVE)
    grow = ActionParams(by_bytes=512 * MiB)
    cases = {
        (live, Action.GROW, grow): ["grow", "--by", "512M", "--yes"],
        (stick, Action.REPAIR, ActionParams()): ["repair", "/dev/sdb1", "--yes"],
        (stick, Action.RESET, ActionParams()): ["reset", "/dev/sdb1", "--yes"],
        (stick, Action.GROW_HOME, grow): ["home", "resize", "/dev/sdb1", "--by", "512M", "--yes"],
        (stick, Action.COPY_HOME, ActionParams(dest=other, delete_existing=True)): [
            "home",
            "copy",
            "/dev/sdb1",
            "/dev/sdc1",
            "--delete-home",
            "--yes",
        ],
    }
    parser = build_parser()
    for (s, action, params), expected in cases.items():
        argv = command_for(s, action, params)
        assert argv == expected
        # Each one is a command line the real CLI accepts.
        args = parser.parse_args(argv)
        assert args.yes is True
    assert size_arg(3 * MiB + 1) == f"{3 * MiB + 1}b"
