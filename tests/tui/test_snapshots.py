"""Snapshot tests (pytest-textual-snapshot): the main screen, details, a confirm dialog.

Rendered from fixture sticks only, with no clock and no temporary paths, so they are
the same on every machine. Update after a deliberate change of the look:
    .venv/bin/python -m pytest tests/tui/test_snapshots.py --snapshot-update
"""

from __future__ import annotations

from typing import Any

import pytest
from textual.pilot import Pilot

from tests.tui.conftest import fixture_sticks

# isort: split
from liveos_tools_tui.app import LiveOSApp
from liveos_tools_tui.fake import FixtureBackend

pytestmark = pytest.mark.timeout(120)
SIZE = (80, 24)


def app_with(*names: str) -> LiveOSApp:
    return LiveOSApp(FixtureBackend(fixture_sticks(*names)), refresh=0, clock=lambda: 0.0)


async def settled(pilot: Pilot[Any]) -> None:
    app = pilot.app
    for _ in range(3):
        busy = [w for w in app.workers if w.group != "action" and not w.is_finished]
        if busy:
            await app.workers.wait_for_complete(busy)
        await pilot.pause()


def test_main_screen_healthy_filling_critical(snap_compare: Any) -> None:
    assert snap_compare(app_with("01", "02", "03"), terminal_size=SIZE, run_before=settled)


def test_main_screen_broken_states(snap_compare: Any) -> None:
    assert snap_compare(app_with("04", "05", "06"), terminal_size=SIZE, run_before=settled)


def test_main_screen_new_misnamed_none_unreadable(snap_compare: Any) -> None:
    assert snap_compare(
        app_with("07", "08", "09", "10"), terminal_size=(80, 30), run_before=settled
    )


def test_details_view(snap_compare: Any) -> None:
    async def open_details(pilot: Pilot[Any]) -> None:
        await settled(pilot)
        await pilot.press("enter")
        await settled(pilot)

    assert snap_compare(app_with("08"), terminal_size=SIZE, run_before=open_details)


def test_confirm_reset_dialog(snap_compare: Any) -> None:
    async def ask_reset(pilot: Pilot[Any]) -> None:
        await settled(pilot)
        await pilot.press("x")
        await settled(pilot)

    assert snap_compare(app_with("02"), terminal_size=SIZE, run_before=ask_reset)


def test_help_screen(snap_compare: Any) -> None:
    async def help_(pilot: Pilot[Any]) -> None:
        await settled(pilot)
        await pilot.press("question_mark")
        await pilot.pause()

    assert snap_compare(app_with("02"), terminal_size=SIZE, run_before=help_)
