"""Pilot tests of the app on a FixtureBackend: every state, every action's paths."""

from __future__ import annotations

import asyncio
import copy

import pytest
from textual.pilot import Pilot
from textual.widgets import Input, ProgressBar, Sparkline

from liveos_tools.errors import NoSpaceError
from liveos_tools.units import MiB
from tests.tui.conftest import fixture_sticks
from tests.tui.screen_text import screen_text

# isort: split
from liveos_tools_tui.app import LiveOSApp
from liveos_tools_tui.backend import Action, ActionParams
from liveos_tools_tui.dialogs.confirm import ConfirmDialog
from liveos_tools_tui.dialogs.message import MessageDialog
from liveos_tools_tui.dialogs.params import ParamsDialog
from liveos_tools_tui.dialogs.progress import ProgressDialog
from liveos_tools_tui.fake import FixtureBackend
from liveos_tools_tui.screens.details import DetailsScreen
from liveos_tools_tui.screens.help import HelpScreen
from liveos_tools_tui.widgets.stick_card import StickCard

SIZE = (80, 24)
pytestmark = pytest.mark.timeout(60)


def make_app(backend: FixtureBackend, clock: list[float] | None = None) -> LiveOSApp:
    now = clock if clock is not None else [1000.0]
    return LiveOSApp(backend, refresh=0, watch=True, clock=lambda: now[0])


async def settle(app: LiveOSApp, pilot: Pilot[int]) -> None:
    """Let background reads and plans finish (not the action flow: it waits on dialogs)."""
    for _ in range(3):
        # Not an empty list: wait_for_complete([]) waits for every worker.
        busy = [w for w in app.workers if w.group != "action" and not w.is_finished]
        if busy:
            await app.workers.wait_for_complete(busy)
        await pilot.pause()


async def select(app: LiveOSApp, pilot: Pilot[int], key: str) -> StickCard:
    card = app.card_for(key)
    assert card is not None
    card.focus()
    await pilot.pause()
    return card


EXPECTED_BADGES = {
    "live": ("healthy", "level-ok"),
    "/dev/sdb1": ("filling", "level-filling"),
    "/dev/sdc1": ("critical", "level-critical"),
    "/dev/sdd1": ("Overflow", "level-broken"),
    "/dev/sde1": ("Invalid", "level-broken"),
    "/srv/sticks/bad.img": ("corrupt", "level-broken"),
    "/dev/sdf1": ("new", "level-none"),
    "/dev/sdg1": ("full", "level-broken"),
    "/dev/sdh1": ("no overlay", "level-none"),
    "/dev/sdi1": ("unreadable", "level-error"),
}


async def test_every_state_has_a_badge_in_words_and_a_colour_class(
    backend: FixtureBackend,
) -> None:
    app = make_app(backend)
    async with app.run_test(size=(80, 120)) as pilot:
        await settle(app, pilot)
        got = {c.stick.key: (c.badge_text, _level_class(c)) for c in app.cards}
        assert got == EXPECTED_BADGES
        text = screen_text(app)
        for badge, _ in EXPECTED_BADGES.values():
            assert f"[ {badge} ]" in text
        assert "85.9%  1760.0 / 2048.0 MiB" in text
        assert "error: reading the device /dev/sdi1 needs root" in text
        assert "hint: run the command with sudo" in text


def _level_class(card: StickCard) -> str:
    (cls,) = [c for c in card.classes if c.startswith("level-")]
    return cls


async def test_first_card_is_focused_and_arrows_move(backend: FixtureBackend) -> None:
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        assert app.selected is not None and app.selected.stick.key == "live"
        await pilot.press("down", "j")
        assert app.selected.stick.key == "/dev/sdc1"
        await pilot.press("up")
        assert app.selected.stick.key == "/dev/sdb1"


async def test_empty_backend_says_what_to_do() -> None:
    app = make_app(FixtureBackend([]))
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        assert "No LiveOS stick found yet." in screen_text(app)
        await pilot.press("g")  # nothing selected: no dialog, no crash
        await pilot.pause()
        assert app.cards == []
        assert not isinstance(app.screen, ParamsDialog)


@pytest.mark.parametrize(
    ("key", "action", "stick", "expected_params"),
    [
        ("r", Action.REPAIR, "/dev/sde1", ActionParams()),
        ("g", Action.GROW, "/dev/sdb1", ActionParams(by_bytes=512 * MiB)),
        ("x", Action.RESET, "/dev/sdb1", ActionParams()),
        ("h", Action.GROW_HOME, "/dev/sdb1", ActionParams(by_bytes=512 * MiB)),
    ],
)
async def test_action_confirmed_runs_the_plan(
    key: str, action: Action, stick: str, expected_params: ActionParams
) -> None:
    backend = FixtureBackend(fixture_sticks("02", "05"))
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await select(app, pilot, stick)
        await pilot.press(key)
        await pilot.pause()
        if action in (Action.GROW, Action.GROW_HOME):
            assert isinstance(app.screen, ParamsDialog)
            assert app.screen.query_one("#size", Input).value == "512M"
            await pilot.press("enter")
            await settle(app, pilot)
        assert isinstance(app.screen, ConfirmDialog)
        plan_text = screen_text(app)
        assert f"{action.label}: " in plan_text
        if action is Action.RESET:
            assert "This destroys: every change saved in the overlay" in plan_text
        else:
            assert "Nothing is destroyed." in plan_text
        # The focus starts on Cancel: Enter alone must not run anything.
        assert app.focused is not None and app.focused.id == "cancel"
        await pilot.press("y")
        await settle(app, pilot)
        assert backend.executed == [(stick, action, expected_params)]
        assert backend.released == 1
        assert app.last_outcome == "done"
        assert isinstance(app.screen, MessageDialog)
        assert "Done:" in screen_text(app)
        await pilot.press("enter")
        await pilot.pause()
        assert not isinstance(app.screen, MessageDialog)


@pytest.mark.parametrize("key", ["r", "g", "x", "h", "c"])
async def test_action_cancelled_changes_nothing(key: str) -> None:
    backend = FixtureBackend(fixture_sticks("02", "03"))
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press(key)
        await settle(app, pilot)
        if isinstance(app.screen, ParamsDialog):
            await pilot.press("enter") if key != "c" else await pilot.click("#next")
            await settle(app, pilot)
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("enter")  # the focused button is Cancel
        await settle(app, pilot)
        assert backend.executed == []
        assert len(backend.prepared) == 1
        assert backend.released == 1
        assert app.last_outcome == "cancelled"
        assert not isinstance(app.screen, ConfirmDialog)


async def test_cancel_with_escape_and_in_the_params_dialog() -> None:
    backend = FixtureBackend(fixture_sticks("02"))
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("g")
        await pilot.pause()
        assert isinstance(app.screen, ParamsDialog)
        await pilot.press("escape")
        await settle(app, pilot)
        assert backend.prepared == [] and app.last_outcome == "cancelled"
        await pilot.press("x")
        await settle(app, pilot)
        await pilot.press("escape")
        await settle(app, pilot)
        assert backend.executed == [] and backend.released == 1


async def test_bad_size_is_refused_in_the_dialog() -> None:
    backend = FixtureBackend(fixture_sticks("02"))
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("g")
        await pilot.pause()
        app.screen.query_one("#size", Input).value = "lots"
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ParamsDialog)
        assert "not a size: 'lots'" in screen_text(app)
        app.screen.query_one("#size", Input).value = "1G"
        await pilot.press("enter")
        await settle(app, pilot)
        await pilot.click("#go")
        await settle(app, pilot)
        assert backend.executed == [("/dev/sdb1", Action.GROW, ActionParams(by_bytes=1024 * MiB))]


async def test_copy_home_to_another_stick_with_the_mouse() -> None:
    backend = FixtureBackend(fixture_sticks("02", "03", "07"))
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("c")
        await pilot.pause()
        assert isinstance(app.screen, ParamsDialog)
        await pilot.click("#dest-1")
        await pilot.click("#replace")
        await pilot.click("#next")
        await settle(app, pilot)
        assert isinstance(app.screen, ConfirmDialog)
        assert "This destroys: the home.img already on the other stick" in screen_text(app)
        await pilot.click("#go")
        await settle(app, pilot)
        ((src, action, params),) = backend.executed
        assert (src, action) == ("/dev/sdb1", Action.COPY_HOME)
        assert params.dest is not None and params.dest.key == "/dev/sdf1"
        assert params.delete_existing is True


async def test_error_during_the_plan_is_shown_with_its_hint() -> None:
    err = NoSpaceError("only 80 MiB free on the stick", "free some space, or grow by less")
    backend = FixtureBackend(fixture_sticks("02"), failures={Action.GROW: err})
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("g", "enter")
        await settle(app, pilot)
        await pilot.press("y")
        await settle(app, pilot)
        assert app.last_outcome == "failed"
        assert isinstance(app.screen, MessageDialog) and app.screen.has_class("error")
        text = screen_text(app)
        assert "Grow overlay failed" in text
        assert "error: only 80 MiB free on the stick" in text
        assert "hint: free some space, or grow by less" in text
        assert backend.executed == [] and backend.released == 1


async def test_missing_task_says_not_available() -> None:
    backend = FixtureBackend(fixture_sticks("05"), unavailable=[Action.REPAIR])
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("r")
        await settle(app, pilot)
        assert isinstance(app.screen, MessageDialog)
        assert "Repair overlay is not available" in screen_text(app)
        assert app.last_outcome == "unavailable"
        await pilot.press("escape")
        await pilot.pause()
        assert backend.executed == []


async def test_progress_dialog_while_the_plan_runs_and_app_stays_responsive() -> None:
    backend = FixtureBackend(fixture_sticks("02", "03"), step_delay=1.0)
    backend.gate.clear()
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("x")
        await settle(app, pilot)
        await pilot.press("y")
        for _ in range(50):
            await pilot.pause(0.02)
            if isinstance(app.screen, ProgressDialog) and app.screen.summaries:
                break
        dialog = app.screen
        assert isinstance(dialog, ProgressDialog)
        assert dialog.summaries == ["check that SOAS /dev/sdb1 (ext4) is not in use"]
        assert dialog.query_one(ProgressBar).total == 2
        # The event loop still runs: a refresh of the cards completes meanwhile.
        before = backend.status_calls
        app.refresh_all()
        for _ in range(50):
            await pilot.pause(0.02)
            if backend.status_calls >= before + 2:
                break
        assert backend.status_calls >= before + 2
        assert backend.executed == []
        backend.gate.set()
        await settle(app, pilot)
        assert backend.executed == [("/dev/sdb1", Action.RESET, ActionParams())]
        assert dialog.summaries[-1] == "done"


async def test_details_view(backend: FixtureBackend) -> None:
    app = make_app(backend)
    async with app.run_test(size=(100, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("enter")
        await settle(app, pilot)
        assert isinstance(app.screen, DetailsScreen)
        text = screen_text(app)
        assert "dm-snapshot" in text
        assert "8 sectors (4 KiB)" in text
        assert "0 4194304 snapshot 7:1 7:2 PO 8" in text
        assert "root=live:UUID=2f1c-77aa" in text
        assert "yes (overlay-SOAS-2f1c-77aa)" in text
        await pilot.press("escape")
        await pilot.pause()
        await select(app, pilot, "/dev/sdg1")
        await pilot.press("d")
        await settle(app, pilot)
        text = screen_text(app)
        assert "NO: dracut looks for overlay-OLD-2f1c-77aa" in text
        assert "EFI/BOOT/grub.cfg, syslinux/syslinux.cfg" in text


async def test_details_of_an_unreadable_stick_shows_the_error(backend: FixtureBackend) -> None:
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await select(app, pilot, "/dev/sdi1")
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, MessageDialog)
        assert "needs root" in screen_text(app)


async def test_help_lists_every_key() -> None:
    app = make_app(FixtureBackend(fixture_sticks("02")))
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        text = screen_text(app)
        for binding in LiveOSApp.BINDINGS:
            assert isinstance(binding, type(LiveOSApp.BINDINGS[0]))
            first = binding.key.split(",")[0]  # type: ignore[union-attr]
            shown = "?" if first == "question_mark" else first
            assert shown in text, shown
        assert "reset the overlay" in text
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, HelpScreen)


async def test_sticks_plugged_in_and_removed_while_running() -> None:
    backend = FixtureBackend(fixture_sticks("02"))
    app = make_app(backend)
    (late,) = fixture_sticks("04")
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        assert [c.stick.key for c in app.cards] == ["/dev/sdb1"]
        await asyncio.to_thread(backend.plug, late)
        await settle(app, pilot)
        assert [c.stick.key for c in app.cards] == ["/dev/sdb1", "/dev/sdd1"]
        assert app.card_for("/dev/sdd1").badge_text == "Overflow"  # type: ignore[union-attr]
        await asyncio.to_thread(backend.unplug, "/dev/sdb1")
        await settle(app, pilot)
        assert [c.stick.key for c in app.cards] == ["/dev/sdd1"]


async def test_live_history_and_time_left() -> None:
    backend = FixtureBackend(fixture_sticks("01"))
    clock = [1000.0]
    app = make_app(backend, clock)
    live = backend.sticks["live"]
    assert live.status is not None
    total = live.status["total_bytes"]
    used0 = live.status["used_bytes"]
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        card = app.card_for("live")
        assert card is not None and card.has_class("live")
        assert "time left: measuring..." in screen_text(app)
        # 1 MiB more every 10 s: 0.1 MiB/s.
        for i in range(1, 4):
            clock[0] = 1000.0 + 10 * i
            doc = copy.deepcopy(live.status)
            doc["used_bytes"] = used0 + i * MiB
            live.status = doc
            app.refresh_all()
            await settle(app, pilot)
        assert card.query_one(Sparkline).data == [float(used0 + i * MiB) for i in range(4)]
        left = (total - (used0 + 3 * MiB)) / (MiB / 10)
        assert card.history.seconds_left(total) == pytest.approx(left)
        assert f"full in ~{left / 3600:.1f} h" in screen_text(app)


async def test_actions_from_the_details_view_apply_to_that_stick() -> None:
    backend = FixtureBackend(fixture_sticks("02", "05"))
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await select(app, pilot, "/dev/sde1")
        await pilot.press("enter")
        await settle(app, pilot)
        assert isinstance(app.screen, DetailsScreen)
        await pilot.press("r")
        await settle(app, pilot)
        assert isinstance(app.screen, ConfirmDialog)
        assert "Repair overlay: CLASS5 /dev/sde1 (ext4)" in screen_text(app)
        await pilot.press("n")
        await settle(app, pilot)
        assert backend.prepared[0][0] == "/dev/sde1" and backend.executed == []
