"""Every key, in words."""

from __future__ import annotations

from typing import ClassVar

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from liveos_tools.tasks.status import CRITICAL_FRACTION, WARN_FRACTION

KEYS: list[tuple[str, str]] = [
    ("up / k, down / j", "select the previous / next stick (Tab works too)"),
    ("enter / d", "details of the selected stick"),
    ("r", "repair the overlay (invalid, full or overflowed)"),
    ("g", "grow the overlay"),
    ("x", "reset the overlay (destroys saved changes; asks first)"),
    ("h", "grow home.img"),
    ("c", "copy home.img to another stick"),
    ("u", "space: what fills the overlay, what compact gives back, advice"),
    ("f", "refresh: fold the overlay into a new image, start a fresh overlay"),
    ("b", "roll back to the previous image kept by refresh or update"),
    ("i", "remix the stick into a new ISO for a class set"),
    ("s / f5", "scan for sticks again and re-read them"),
    ("?", "this help"),
    ("q", "quit"),
    ("in dialogs", "y go ahead, n / escape cancel, tab moves between buttons"),
]


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen #dialog {
        width: 76; max-width: 100%; height: auto; max-height: 100%;
        border: thick $primary; background: $surface; padding: 0 1;
    }
    HelpScreen #title { text-style: bold; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,question_mark", "close", "Close")]

    def compose(self) -> ComposeResult:
        table = Table(box=None, show_header=False, padding=(0, 1))
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        for key, what in KEYS:
            table.add_row(key, what)
        with Vertical(id="dialog"):
            yield Label(
                "Keys (the mouse works too: click a stick, a button, the footer)", id="title"
            )
            with VerticalScroll():
                yield Static(table)
            yield Label(
                f"States: healthy below {WARN_FRACTION:.0%} used, filling from "
                f"{WARN_FRACTION:.0%}, critical from {CRITICAL_FRACTION:.0%}; Overflow, "
                "Invalid, full and corrupt need a repair.",
                id="states",
            )

    def action_close(self) -> None:
        self.dismiss(None)
