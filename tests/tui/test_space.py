"""The Space screen on a FixtureBackend: bars, navigation, advice, and Compact's flow."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tests.tui.conftest import fixture_sticks
from tests.tui.screen_text import screen_text
from tests.tui.test_app import SIZE, make_app, select, settle

# isort: split
from liveos_tools_tui.backend import Action, ActionParams
from liveos_tools_tui.dialogs.confirm import ConfirmDialog
from liveos_tools_tui.fake import FixtureBackend
from liveos_tools_tui.screens.space import SpaceScreen, bar, entries

pytestmark = pytest.mark.timeout(60)
MiB = 1 << 20

DOC = {
    "schema": "liveos-tools/du/1",
    "data_bytes": 300 * MiB,
    "files_bytes": 90 * MiB,
    "metadata_bytes": 10 * MiB,
    "reclaimable_bytes": 200 * MiB,
    "reclaimable": {"deleted": 199 * MiB, "unchanged": 1 * MiB},
    "directories": [
        {"path": "/", "bytes": 90 * MiB},
        {"path": "/var", "bytes": 60 * MiB},
        {"path": "/home", "bytes": 30 * MiB},
        {"path": "/var/log", "bytes": 50 * MiB},
        {"path": "/var/log/journal", "bytes": 40 * MiB},
        {"path": "/var/cache", "bytes": 10 * MiB},
    ],
    "top_files": [
        {"path": "/var/log/journal/system.journal", "bytes": 40 * MiB},
        {"path": "/home/notes.txt", "bytes": 30 * MiB},
    ],
    "warnings": [],
}


def test_entries_and_bars() -> None:
    assert [e[0] for e in entries(DOC, "/")] == ["var/", "home/"]
    assert entries(DOC, "/var") == [
        ("log/", "/var/log", 50 * MiB, True),
        ("cache/", "/var/cache", 10 * MiB, True),
    ]
    assert entries(DOC, "/home") == [("notes.txt", "/home/notes.txt", 30 * MiB, False)]
    assert bar(1, 4, 8) == "██░░░░░░" and bar(0, 0, 4) == "░░░░"


async def test_space_screen_navigates_and_offers_compact() -> None:
    (stick,) = fixture_sticks("02")
    backend = FixtureBackend([dataclasses.replace(stick, space=DOC)])
    app = make_app(backend)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        await select(app, pilot, "/dev/sdb1")
        await pilot.press("u")
        await settle(app, pilot)
        assert isinstance(app.screen, SpaceScreen)
        await settle(app, pilot)
        text = screen_text(app)
        assert "reclaimable" in text and "200 MiB" in text
        assert "var/" in text and "home/" in text
        assert "/var/log/journal" in text and "Storage=volatile" in text  # the advice
        await pilot.press("enter")  # into var/, the largest
        await pilot.pause()
        assert app.screen.cwd == "/var"
        assert "log/" in screen_text(app) and "cache/" in screen_text(app)
        await pilot.press("backspace")
        await pilot.pause()
        assert app.screen.cwd == "/"
        await pilot.press("c")
        await settle(app, pilot)
        assert isinstance(app.screen, ConfirmDialog), screen_text(app)
        assert f"{Action.COMPACT.label}: " in screen_text(app)
        await pilot.press("y")
        await settle(app, pilot)
        assert backend.executed == [("/dev/sdb1", Action.COMPACT, ActionParams())]


async def test_space_screen_says_when_there_is_no_summary() -> None:
    backend = FixtureBackend(fixture_sticks("02"))
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await select(app, pilot, "/dev/sdb1")
        await pilot.press("u")
        await settle(app, pilot)
        await settle(app, pilot)
        assert "du: " in screen_text(app) and "no du summary" in screen_text(app)


def test_real_backend_serves_the_monitors_summary_to_a_learner(tmp_path: Path) -> None:
    from liveos_tools_tui.backend import Stick, StickOrigin
    from liveos_tools_tui.real import RealBackend

    from liveos_tools.errors import LiveOSError

    status = tmp_path / "status.json"
    live = Stick("live", None, "this system", StickOrigin.LIVE)
    backend = RealBackend(scan=False, live=True, status_file=status, is_root=False)
    status.write_text(json.dumps({"published_at": 1.0, "du": {**DOC, "taken_at": 1.0}}))
    assert backend.space(live)["reclaimable_bytes"] == 200 * MiB
    status.write_text(json.dumps({"published_at": 1.0, "du": None}))
    with pytest.raises(LiveOSError, match="not published a du summary yet"):
        backend.space(live)
    status.write_text(json.dumps({"published_at": 1.0, "du": {"error": "boom", "hint": "h"}}))
    with pytest.raises(LiveOSError, match="boom"):
        backend.space(live)
