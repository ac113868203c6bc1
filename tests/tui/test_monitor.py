"""The monitor: publishes the status JSON atomically, 0644; the unit file; reading it back."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from liveos_tools.errors import LiveOSError, TargetError
from liveos_tools.tasks import monitor
from liveos_tools.tasks.status import to_json
from tests.tui.conftest import STICKS_DIR

REPO = Path(__file__).resolve().parents[2]


def fixture_doc(name: str) -> dict[str, object]:
    (path,) = STICKS_DIR.glob(f"{name}-*.json")
    doc: dict[str, object] = json.loads(path.read_text())["status"]
    return doc


@pytest.mark.parametrize("name", ["01", "02", "04", "05", "06", "07", "08", "09"])
def test_report_from_json_round_trips_to_json(name: str) -> None:
    doc = fixture_doc(name)
    assert to_json(monitor.report_from_json(doc)) == doc


def test_report_from_json_refuses_a_foreign_document() -> None:
    with pytest.raises(TargetError, match="not in the expected format"):
        monitor.report_from_json({"state": "valid"})


def test_publish_is_atomic_and_world_readable(tmp_path: Path) -> None:
    out = tmp_path / "run" / "status.json"
    old_umask = os.umask(0o077)  # the 0644 must not depend on the caller's umask
    try:
        monitor.publish({"a": 1}, out)
        monitor.publish({"a": 2}, out)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert json.loads(out.read_text()) == {"a": 2}
    assert sorted(p.name for p in out.parent.iterdir()) == ["status.json"]  # no temp left


def test_run_loop_publishes_each_round_and_errors_too(tmp_path: Path) -> None:
    out = tmp_path / "status.json"
    docs = iter([fixture_doc("02")])
    seen: list[dict[str, object]] = []

    def build() -> dict[str, object]:
        try:
            return next(docs)
        except StopIteration:
            raise LiveOSError("no running live system here", "give a TARGET") from None

    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        seen.append(json.loads(out.read_text()))
        sleeps.append(seconds)
        if len(sleeps) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        monitor.run_loop(interval=5, path=out, build=build, sleep=sleep)
    assert seen[0]["state"] == "valid" and seen[0]["level"] == "filling"
    assert seen[1]["error"] == "no running live system here"
    assert sleeps == [5, 5]
    with pytest.raises(LiveOSError, match="the monitor reports: no running live system"):
        monitor.read_published(out)


def test_read_published_missing_says_how_to_start_the_monitor(tmp_path: Path) -> None:
    with pytest.raises(TargetError) as err:
        monitor.read_published(tmp_path / "none.json")
    assert err.value.hint is not None and "monitor install" in err.value.hint


def test_install_with_root_writes_and_enables_the_unit(tmp_path: Path) -> None:
    written = monitor.install(tmp_path, "/usr/bin/liveos-overlay", interval=10)
    unit = tmp_path / "etc/systemd/system/liveos-overlay-monitor.service"
    link = tmp_path / "etc/systemd/system/multi-user.target.wants/liveos-overlay-monitor.service"
    assert written == [unit, link]
    text = unit.read_text()
    assert (
        "ExecStart=/usr/bin/liveos-overlay monitor run --interval 10 "
        "--output /run/liveos-tools/status.json"
    ) in text
    assert "WantedBy=multi-user.target" in text
    assert os.readlink(link) == "/etc/systemd/system/liveos-overlay-monitor.service"
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    monitor.install(tmp_path, "/usr/bin/liveos-overlay")  # again: replaces, no error
    assert monitor.uninstall(tmp_path) == [link, unit]
    assert not unit.exists() and not link.is_symlink()


def test_cli_monitor_install_and_run_once(tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "liveos_tools.cli.main", "monitor"]
    done = subprocess.run(
        [*cli, "install", "--root", str(tmp_path), "--exe", "/opt/x/liveos-overlay"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    unit = tmp_path / "etc/systemd/system/liveos-overlay-monitor.service"
    assert "ExecStart=/opt/x/liveos-overlay monitor run" in unit.read_text()
    # On this host there is no running live system: the monitor publishes that error.
    out = tmp_path / "status.json"
    done = subprocess.run(
        [*cli, "run", "--once", "--output", str(out)], capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(out.read_text())
    assert doc["error"].startswith("no running live system here")
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
