"""The Refresh (f) and Roll back (b) actions: plan shown, confirmed, carried out; on the
fixture backend, and on a real stick image through RealBackend (root, loop devices)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.root.test_refresh import LABEL, OVERLAY, UUID, build_stick_tree, sh
from tests.tui.conftest import fixture_sticks
from tests.tui.screen_text import screen_text
from tests.tui.test_app import SIZE, make_app, select, settle

# isort: split
from liveos_tools_tui.app import LiveOSApp
from liveos_tools_tui.backend import Action, ActionParams
from liveos_tools_tui.dialogs.confirm import ConfirmDialog
from liveos_tools_tui.dialogs.message import MessageDialog
from liveos_tools_tui.fake import FixtureBackend
from liveos_tools_tui.real import RealBackend, command_for

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize(("key", "action"), [("f", Action.REFRESH), ("b", Action.ROLLBACK)])
async def test_refresh_and_rollback_keys_show_the_plan_then_run(key: str, action: Action) -> None:
    backend = FixtureBackend(fixture_sticks("02"))
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await select(app, pilot, "/dev/sdb1")
        await pilot.press(key)
        await settle(app, pilot)
        assert isinstance(app.screen, ConfirmDialog)
        assert f"{action.label}: " in screen_text(app)
        await pilot.press("y")
        await settle(app, pilot)
        assert backend.executed == [("/dev/sdb1", action, ActionParams())]
        assert app.last_outcome == "done"


def test_the_privileged_route_runs_the_same_command() -> None:
    from liveos_tools_tui.backend import Stick, StickOrigin

    stick = Stick("/dev/sdb1", "/dev/sdb1", "stick", StickOrigin.PLUGGED)
    assert command_for(stick, Action.REFRESH, ActionParams()) == ["refresh", "/dev/sdb1", "--yes"]
    assert command_for(stick, Action.ROLLBACK, ActionParams()) == [
        "rollback",
        "/dev/sdb1",
        "--yes",
    ]


async def _run(app: LiveOSApp, pilot: object, key: str) -> str:
    await pilot.press(key)  # type: ignore[attr-defined]
    for _ in range(2400):
        await pilot.pause(0.05)  # type: ignore[attr-defined]
        if isinstance(app.screen, (ConfirmDialog, MessageDialog)):
            break
    assert isinstance(app.screen, ConfirmDialog), screen_text(app)
    shown = app.screen.plan.render()
    await pilot.press("y")  # type: ignore[attr-defined]
    for _ in range(2400):
        await pilot.pause(0.05)  # type: ignore[attr-defined]
        if isinstance(app.screen, MessageDialog):
            break
    assert app.last_outcome == "done", screen_text(app)
    await pilot.press("enter")  # type: ignore[attr-defined]
    return shown


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for loop devices")
async def test_refresh_and_rollback_a_real_stick_from_the_ui(tmp_path: Path) -> None:
    tree, _ = build_stick_tree(tmp_path)
    image = tmp_path / "stick.img"
    sh("mkfs.ext4", "-q", "-F", "-L", LABEL, "-U", UUID, "-d", tree, image, "160M")
    backend = RealBackend([str(image)], scan=False, live=False, is_root=True)
    app = LiveOSApp(backend, refresh=0, watch=False)
    async with app.run_test(size=(80, 24)) as pilot:
        for _ in range(200):
            await pilot.pause(0.05)
            card = app.card_for(str(image))
            if card is not None and (card.report or card.error):
                break
        shown = await _run(app, pilot, "f")
        assert "rename the old squashfs.img, then its overlay, into LiveOS/previous/" in shown
        listing = sh("debugfs", "-R", "ls -l /LiveOS/previous", image)
        assert OVERLAY in listing and "squashfs.img" in listing
        shown = await _run(app, pilot, "b")
        assert "roll back to the previous image" in shown
    out = subprocess.run(
        ["debugfs", "-R", "cat /syslinux/extlinux.conf", str(image)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "label liveos-previous" in out  # the refreshed image is now the previous one
