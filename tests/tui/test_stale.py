"""A user who is not root sees the monitor's published status, and when it is stale."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Sparkline

from liveos_tools.cli import monitor as monitor_cli
from liveos_tools.tasks import monitor
from tests.tui.conftest import STICKS_DIR
from tests.tui.screen_text import screen_text
from tests.tui.test_app import make_app, settle

# isort: split
from liveos_tools_tui.real import RealBackend

pytestmark = pytest.mark.timeout(60)
SIZE = (80, 24)
PUBLISHED = 1_700_000_000.0
STALE_LINE = "status from 5 min ago: is liveos-overlay-monitor running?"


def live_doc(**extra: Any) -> dict[str, Any]:
    (path,) = STICKS_DIR.glob("01-*.json")
    doc: dict[str, Any] = json.loads(path.read_text())["status"]
    return {**doc, "published_at": PUBLISHED, **extra}


def test_stale_after_is_three_intervals_or_a_minute() -> None:
    assert monitor.stale_after({"interval": 5}) == 15
    assert monitor.stale_after({"interval": 0.1}) == 1.5  # the loop sleeps 0.5 s at least
    for unknown in ({}, {"interval": None}, {"interval": "5"}, {"interval": 0}, {"interval": True}):
        assert monitor.stale_after(unknown) == 60
    doc = {"published_at": PUBLISHED, "interval": 5}
    assert not monitor.is_stale(doc, PUBLISHED + 15)
    assert monitor.is_stale(doc, PUBLISHED + 15.1)
    assert not monitor.is_stale({"published_at": PUBLISHED}, PUBLISHED + 59)
    assert monitor.is_stale({"published_at": PUBLISHED}, PUBLISHED + 61)
    assert not monitor.is_stale({}, PUBLISHED + 10_000)  # no time in it: cannot tell


def test_run_loop_publishes_its_interval(tmp_path: Path) -> None:
    out = tmp_path / "status.json"
    monitor.run_loop(interval=7, path=out, once=True, build=lambda: {"a": 1})
    assert json.loads(out.read_text()) == {"a": 1, "interval": 7}


def test_monitor_show_says_stale(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "status.json"
    monitor.publish(live_doc(interval=5, published_at=0.0), out)
    assert monitor_cli.show_cmd(argparse.Namespace(output=str(out))) == 0
    err = capsys.readouterr().err
    assert "(stale: older than 15 s; is liveos-overlay-monitor.service running?)" in err


def backend_on(path: Path, now: list[float]) -> RealBackend:
    return RealBackend(
        scan=False, live=True, is_root=False, status_file=path, wall_clock=lambda: now[0]
    )


async def test_card_turns_stale_when_the_monitor_stops(tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    monitor.publish(live_doc(interval=5), status)
    now = [PUBLISHED + 4]
    app = make_app(backend_on(status, now))  # type: ignore[arg-type]
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        card = app.card_for("live")
        assert card is not None
        assert card.badge_text == "healthy" and card.has_class("level-ok")
        assert "[ healthy ]" in screen_text(app)
        assert "status from" not in screen_text(app)
        assert len(card.history.samples) == 1

        # Five minutes on, the same file: the monitor has stopped.
        now[0] = PUBLISHED + 300
        app.refresh_all()
        await settle(app, pilot)
        text = screen_text(app)
        assert card.badge_text == "stale" and card.has_class("level-stale")
        assert "[ stale ]" in text
        assert STALE_LINE in text
        assert "29.3%  600.0 / 2048.0 MiB" in text  # the last numbers, still shown
        assert "time left: not known" in text
        assert len(card.history.samples) == 1  # old numbers are not a trend
        assert not card.query_one(Sparkline).display

        # The monitor runs again: fresh, and the warning goes.
        monitor.publish(live_doc(interval=5, published_at=PUBLISHED + 301), status)
        now[0] = PUBLISHED + 302
        app.refresh_all()
        await settle(app, pilot)
        assert card.badge_text == "healthy" and card.has_class("level-ok")
        assert STALE_LINE not in screen_text(app)
        assert len(card.history.samples) == 2


async def test_unknown_interval_is_stale_after_a_minute(tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    monitor.publish(live_doc(), status)  # an older monitor: no "interval"
    now = [PUBLISHED + 59]
    app = make_app(backend_on(status, now))  # type: ignore[arg-type]
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        card = app.card_for("live")
        assert card is not None and card.badge_text == "healthy"
        now[0] = PUBLISHED + 61
        app.refresh_all()
        await settle(app, pilot)
        assert card.badge_text == "stale"
        assert "status from 1 min ago: is liveos-overlay-monitor running?" in screen_text(app)


async def test_stale_from_the_first_read_draws_no_history(tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    monitor.publish(live_doc(interval=5), status)
    app = make_app(backend_on(status, [PUBLISHED + 300]))  # type: ignore[arg-type]
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        card = app.card_for("live")
        assert card is not None and card.badge_text == "stale"
        assert not card.history.samples
        assert not card.query_one(Sparkline).display
        assert "▁" not in screen_text(app)
