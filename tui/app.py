"""liveos-tui: every stick's space at a glance, and safe actions on it.

The App takes its Backend as an argument: `main()` gives it a RealBackend, tests a
FixtureBackend. Anything slow (probing sticks, planning, running a plan) runs in a
thread worker and hands results back with call_from_thread, so the app stays
responsive; nothing that changes a stick runs before its plan was confirmed.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import ClassVar

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult, SuspendNotSupported
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.events import DescendantFocus
from textual.widgets import Footer, Header, Static

from liveos_tools.errors import LiveOSError
from liveos_tools.media import HomeKind

from .backend import (
    SIZED_ACTIONS,
    Action,
    ActionParams,
    Backend,
    Prepared,
    Reading,
    Stick,
)
from .dialogs.confirm import ConfirmDialog
from .dialogs.message import MessageDialog
from .dialogs.params import ParamsDialog
from .dialogs.progress import ProgressDialog
from .dialogs.remix import RemixDialog
from .screens.details import DetailsScreen
from .screens.help import HelpScreen
from .screens.space import SpaceScreen
from .widgets.stick_card import StickCard

EMPTY_TEXT = (
    "No LiveOS stick found yet.\n\n"
    "Plug one in (it appears here by itself), or name an image, a device or a\n"
    "mounted stick on the command line: liveos-tui /path/to/stick.img\n\n"
    "Press ? for help, q to quit."
)


class LiveOSApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "LiveOS sticks"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("enter,d", "details", "Details"),
        Binding("u", "space", "Space", show=False),
        Binding("r", "act('repair')", "Repair"),
        Binding("g", "act('grow')", "Grow"),
        Binding("x", "act('reset')", "Reset"),
        Binding("h", "act('grow-home')", "Grow home"),
        Binding("c", "act('copy-home')", "Copy home"),
        Binding("f", "act('refresh')", "Refresh image", show=False),
        Binding("b", "act('rollback')", "Roll back", show=False),
        Binding("i", "act('remix')", "Remix to ISO", show=False),
        Binding("s,f5", "rescan", "Scan", show=False),
        Binding("down,j", "move(1)", "Next", show=False),
        Binding("up,k", "move(-1)", "Previous", show=False),
    ]

    def __init__(
        self,
        backend: Backend,
        *,
        refresh: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        watch: bool = True,
    ) -> None:
        super().__init__()
        self.backend = backend
        self.refresh_seconds = refresh
        self.clock = clock
        self._watch = watch
        self._stop_watch: Callable[[], None] | None = None
        #: the last action's outcome, for tests and the exit code: "done", "cancelled", "failed".
        self.last_outcome: str | None = None
        self._selected_key: str | None = None

    # --- layout ---

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="sticks"):
            yield Static(Text("Looking for sticks..."), id="empty")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "? for help"
        self.scan()
        if self._watch:
            self._stop_watch = self.backend.watch(self._stick_event_from_thread)
        if self.refresh_seconds > 0:
            self.set_interval(self.refresh_seconds, self.refresh_all)

    def on_unmount(self) -> None:
        if self._stop_watch is not None:
            self._stop_watch()

    # --- cards ---

    @property
    def cards(self) -> list[StickCard]:
        return list(self.query(StickCard))

    def card_for(self, key: str) -> StickCard | None:
        return next((c for c in self.cards if c.stick.key == key), None)

    @property
    def selected(self) -> StickCard | None:
        """The stick actions apply to: the card last focused (also under a details view)."""
        cards = self.cards
        chosen = self.card_for(self._selected_key) if self._selected_key else None
        return chosen or (cards[0] if cards else None)

    def on_descendant_focus(self, event: DescendantFocus) -> None:
        if isinstance(event.widget, StickCard):
            self._selected_key = event.widget.stick.key

    def _update_empty(self) -> None:
        empty = self.query_one("#empty", Static)
        empty.display = not self.cards
        empty.update(Text(EMPTY_TEXT))

    def add_stick(self, stick: Stick) -> StickCard | None:
        if self.card_for(stick.key) is not None:
            return None
        card = StickCard(stick, self.clock)
        self.query_one("#sticks", VerticalScroll).mount(card)
        self._update_empty()
        if len(self.cards) == 1 and not isinstance(self.focused, StickCard):
            self.call_after_refresh(card.focus)
        return card

    def remove_stick(self, key: str) -> None:
        card = self.card_for(key)
        if card is not None:
            card.remove()
            self.call_after_refresh(self._update_empty)

    def _add_sticks(self, sticks: list[Stick]) -> None:
        for stick in sticks:
            self.add_stick(stick)
        self._update_empty()

    # --- background work: scanning, reading, hotplug ---

    @work(thread=True, exclusive=True, group="scan", exit_on_error=False)
    def scan(self) -> None:
        try:
            sticks = self.backend.list_sticks()
        except LiveOSError as err:
            self.call_from_thread(self.notify, err.message, severity="error")
            sticks = []
        self.call_from_thread(self._add_sticks, sticks)
        self._read(sticks)

    def _read(self, sticks: list[Stick]) -> None:
        """In a worker thread: read each stick and update its card."""
        for stick in sticks:
            try:
                reading: Reading | LiveOSError = self.backend.status(stick)
            except LiveOSError as err:
                reading = err
            except Exception as exc:  # a bug must not kill the refresh loop
                reading = LiveOSError(f"internal error: {exc.__class__.__name__}: {exc}")
            self.call_from_thread(self._show, stick.key, reading)

    def _show(self, key: str, reading: Reading | LiveOSError) -> None:
        card = self.card_for(key)
        if card is None:
            return
        if isinstance(reading, LiveOSError):
            card.show_error(reading)
        else:
            card.show_report(reading.report, reading)

    @work(thread=True, exclusive=True, group="refresh", exit_on_error=False)
    def refresh_all(self) -> None:
        self._read([c.stick for c in self.call_from_thread(lambda: self.cards)])

    @work(thread=True, group="refresh-one", exit_on_error=False)
    def refresh_stick(self, stick: Stick) -> None:
        self._read([stick])

    def _stick_event_from_thread(self, event: str, stick: Stick) -> None:
        # pyudev calls this from its observer thread.
        with contextlib.suppress(RuntimeError):  # the app is shutting down
            self.call_from_thread(self.on_stick_event, event, stick)

    def on_stick_event(self, event: str, stick: Stick) -> None:
        if event == "add":
            if self.add_stick(stick) is not None:
                self.notify(f"plugged in: {stick.title}")
                self.refresh_stick(stick)
        elif event == "remove":
            if self.card_for(stick.key) is not None:
                self.notify(f"removed: {stick.title}")
            self.remove_stick(stick.key)

    # --- keys ---

    def action_move(self, delta: int) -> None:
        cards = self.cards
        if not cards:
            return
        current = self.selected
        i = cards.index(current) if current in cards else 0
        target = cards[max(0, min(len(cards) - 1, i + delta))]
        target.focus()
        target.scroll_visible()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_rescan(self) -> None:
        self.scan()
        self.refresh_all()

    def action_details(self) -> None:
        card = self.selected
        if card is None:
            self.notify("no stick to show", severity="warning")
        elif card.report is None:
            err = card.error or LiveOSError("the stick has not been read yet", "wait a moment")
            self.push_screen(MessageDialog.for_error(card.stick.title, err))
        else:
            self.push_screen(DetailsScreen(self.backend, card.stick, card.report))

    def action_space(self) -> None:
        card = self.selected
        if card is None:
            self.notify("no stick to show", severity="warning")
        else:
            self.push_screen(SpaceScreen(self.backend, card.stick))

    def action_act(self, name: str) -> None:
        self.start_action(Action(name))

    # --- actions: params -> plan -> confirm -> execute -> report ---

    @work(exclusive=True, group="action")
    async def start_action(self, action: Action) -> None:
        card = self.selected
        if card is None:
            self.notify("no stick selected", severity="warning")
            return
        stick = card.stick
        params = ActionParams()
        if action in SIZED_ACTIONS or action is Action.COPY_HOME:
            others = [c.stick for c in self.cards if c is not card and c.report is not None]
            encrypted = (
                action is Action.GROW_HOME
                and card.report is not None
                and card.report.home.kind is HomeKind.LUKS
            )
            dialog = ParamsDialog(
                action,
                stick,
                others,
                ask_passphrase=encrypted and self.backend.accepts_passphrase(),
                home_encrypted=encrypted,
            )
            chosen = await self.push_screen_wait(dialog)
            if chosen is None:
                self._outcome("cancelled", "nothing was changed")
                return
            params = chosen
        if action is Action.REMIX:
            remix = await self.push_screen_wait(RemixDialog(stick))
            if remix is None:
                self._outcome("cancelled", "nothing was changed")
                return
            params = remix
        prepared = await self._in_thread(lambda: self.backend.prepare(stick, action, params))
        if isinstance(prepared, LiveOSError):
            self.last_outcome = "unavailable"
            await self.push_screen_wait(MessageDialog.for_error(action.label, prepared))
            return
        try:
            ok = await self.push_screen_wait(ConfirmDialog(prepared.plan, prepared.privilege))
            if not ok:
                self._outcome("cancelled", "nothing was changed")
                return
            error = await self._execute(prepared)
        finally:
            prepared.release()
        self.refresh_stick(stick)
        if error is not None:
            self.last_outcome = "failed"
            await self.push_screen_wait(MessageDialog.for_error(f"{action.label} failed", error))
        else:
            self.last_outcome = "done"
            await self.push_screen_wait(
                MessageDialog(action.label, f"Done: {stick.title}", error=False)
            )

    def _outcome(self, outcome: str, message: str) -> None:
        self.last_outcome = outcome
        self.notify(message)

    async def _in_thread(self, fn: Callable[[], Prepared]) -> Prepared | LiveOSError:
        def job() -> Prepared | LiveOSError:
            try:
                return fn()
            except LiveOSError as err:
                return err
            except Exception as exc:
                return LiveOSError(
                    f"internal error: {exc.__class__.__name__}: {exc}",
                    "report it, with what you did",
                )

        worker = self.run_worker(job, thread=True, group="plan", exit_on_error=False)
        result = await worker.wait()
        assert result is not None
        return result

    async def _execute(self, prepared: Prepared) -> LiveOSError | None:
        if prepared.needs_terminal:
            return self._execute_in_terminal(prepared)
        dialog = ProgressDialog(prepared.plan.title, len(prepared.plan.steps))
        await self.push_screen(dialog)

        def progress(i: int, n: int, summary: str) -> None:
            self.call_from_thread(dialog.set_progress, i, n, summary)

        def job() -> LiveOSError | None:
            try:
                self.backend.execute(prepared, progress)
            except LiveOSError as err:
                return err
            except Exception as exc:
                return LiveOSError(
                    f"internal error: {exc.__class__.__name__}: {exc}",
                    "report it; the stick may need a check with liveos-overlay status",
                )
            return None

        worker = self.run_worker(job, thread=True, group="execute", exit_on_error=False)
        try:
            return await worker.wait()
        finally:
            dialog.dismiss(None)

    def _execute_in_terminal(self, prepared: Prepared) -> LiveOSError | None:
        # sudo asks for the password on the terminal: hand it over while the command runs.
        import sys

        def progress(i: int, n: int, summary: str) -> None:
            if i < n:
                print(f"[{i + 1}/{n}] {summary}", file=sys.stderr, flush=True)

        try:
            with self.suspend():
                print(f"liveos-tui: {prepared.plan.title} ({prepared.privilege})", file=sys.stderr)
                try:
                    self.backend.execute(prepared, progress)
                except LiveOSError as err:
                    return err
        except SuspendNotSupported:
            return LiveOSError(
                "this terminal cannot be handed over for the password prompt",
                "run the command shown in the plan in a terminal",
            )
        return None


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="liveos-tui",
        description="See every LiveOS stick's space at a glance, and act on it safely.",
    )
    p.add_argument(
        "targets",
        nargs="*",
        metavar="TARGET",
        help="also show these: disk images, devices, mounted sticks, overlay files",
    )
    p.add_argument(
        "--refresh",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="re-read every SECONDS (0: never; default 5)",
    )
    p.add_argument(
        "--no-scan",
        action="store_true",
        help="show only the TARGETs (and the running system), no udev scan",
    )
    p.add_argument(
        "--status-file",
        metavar="PATH",
        help="where the monitor publishes the live status (for users not root)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from pathlib import Path

    from .real import RealBackend

    args = build_arg_parser().parse_args(argv)
    backend = RealBackend(
        args.targets,
        scan=not args.no_scan,
        status_file=Path(args.status_file) if args.status_file else None,
    )
    app = LiveOSApp(backend, refresh=args.refresh)
    code = app.run()
    return int(code or 0)
