"""The Remix action (i): choose the output, see the plan, confirm, progress, done; on the
fixture backend, and on a real stick image through RealBackend (root, loop devices)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.tui.conftest import fixture_sticks
from tests.tui.screen_text import screen_text
from tests.tui.test_app import SIZE, make_app, select, settle

# isort: split
from liveos_tools_tui.app import LiveOSApp
from liveos_tools_tui.backend import Action, ActionParams, Stick, StickOrigin
from liveos_tools_tui.dialogs.confirm import ConfirmDialog
from liveos_tools_tui.dialogs.message import MessageDialog
from liveos_tools_tui.dialogs.remix import RemixDialog
from liveos_tools_tui.fake import FixtureBackend
from liveos_tools_tui.real import RealBackend, command_for
from liveos_tools_tui.remix import StageReporter

pytestmark = pytest.mark.timeout(300)


async def test_remix_asks_for_the_output_then_shows_the_plan(tmp_path: Path) -> None:
    backend = FixtureBackend(fixture_sticks("02"))
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await select(app, pilot, "/dev/sdb1")
        await pilot.press("i")
        await settle(app, pilot)
        assert isinstance(app.screen, RemixDialog)
        box = app.screen.query_one("#output")
        box.value = str(tmp_path / "class.iso")  # type: ignore[attr-defined]
        await pilot.press("enter")
        await settle(app, pilot)
        assert isinstance(app.screen, ConfirmDialog), screen_text(app)
        assert "Remix into a new ISO: " in screen_text(app)
        await pilot.press("y")
        await settle(app, pilot)
        params = ActionParams(output=str(tmp_path / "class.iso"), label=None, clone=False)
        assert backend.executed == [("/dev/sdb1", Action.REMIX, params)]
        assert app.last_outcome == "done"


async def test_remix_dialog_cancel_changes_nothing() -> None:
    backend = FixtureBackend(fixture_sticks("02"))
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await select(app, pilot, "/dev/sdb1")
        await pilot.press("i")
        await settle(app, pilot)
        await pilot.press("escape")
        await settle(app, pilot)
        assert backend.prepared == [] and app.last_outcome == "cancelled"


def test_the_privileged_route_runs_the_same_command() -> None:
    stick = Stick("/dev/sdb1", "/dev/sdb1", "stick", StickOrigin.PLUGGED)
    params = ActionParams(output="/srv/class.iso", label="CLASS", clone=True)
    assert command_for(stick, Action.REMIX, params) == [
        "remix",
        "/dev/sdb1",
        "-o",
        "/srv/class.iso",
        "--label",
        "CLASS",
        "--clone",
        "--yes",
    ]


def test_stage_reporter_shows_bytes_rate_and_eta() -> None:
    now = [100.0]
    seen: list[tuple[int, int, str]] = []
    rep = StageReporter(clock=lambda: now[0])
    rep.progress = lambda i, n, s: seen.append((i, n, s))
    rep.on_step(4, 7, "make squashfs.img")
    rep.on_bytes("squashfs", 0, 100 << 20)
    now[0] = 110.0
    rep.on_bytes("squashfs", 50 << 20, 100 << 20)
    now[0] = 110.1
    rep.on_bytes("squashfs", 51 << 20, 100 << 20)  # within 0.5 s: not redrawn
    assert seen[-1] == (4, 7, "make squashfs.img\nsquashfs: 50 MiB / 100 MiB, 5 MiB/s, ETA 10 s")
    assert len(seen) == 3


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for loop devices")
async def test_remix_a_real_stick_from_the_ui(tmp_path: Path) -> None:
    from tests.root.test_remix_cli import build_stick

    image = build_stick(tmp_path)
    out = tmp_path / "out" / "class.iso"
    out.parent.mkdir()
    backend = RealBackend([str(image)], scan=False, live=False, is_root=True)
    app = LiveOSApp(backend, refresh=0, watch=False)
    async with app.run_test(size=(100, 30)) as pilot:
        for _ in range(200):
            await pilot.pause(0.05)
            card = app.card_for(str(image))
            if card is not None and (card.report or card.error):
                break
        await pilot.press("i")
        for _ in range(200):
            await pilot.pause(0.05)
            if isinstance(app.screen, RemixDialog):
                break
        app.screen.query_one("#output").value = str(out)  # type: ignore[attr-defined]
        await pilot.press("enter")
        for _ in range(2400):
            await pilot.pause(0.05)
            if isinstance(app.screen, (ConfirmDialog, MessageDialog)):
                break
        assert isinstance(app.screen, ConfirmDialog), screen_text(app)
        shown = app.screen.plan.render()
        assert "leave out private data" in shown and "write the ISO" in shown
        await pilot.press("y")
        for _ in range(4800):
            await pilot.pause(0.05)
            if isinstance(app.screen, MessageDialog):
                break
        assert app.last_outcome == "done", screen_text(app)
    assert out.stat().st_size > 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["class.iso"]
