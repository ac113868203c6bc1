"""Everything about one stick: overlay kind, chunk size, exceptions, dm table, boot args."""

from __future__ import annotations

from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from liveos_tools.errors import LiveOSError
from liveos_tools.tasks.status import StatusReport

from .. import present
from ..backend import Backend, Details, Stick


class DetailsScreen(Screen[None]):
    DEFAULT_CSS = """
    DetailsScreen #details { padding: 0 1; }
    DetailsScreen #warnings { padding: 1 1 0 1; color: $text-warning; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,backspace", "back", "Back"),
    ]

    def __init__(self, backend: Backend, stick: Stick, report: StatusReport) -> None:
        super().__init__()
        self.backend = backend
        self.stick = stick
        self.report = report
        self.details: Details | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll():
            yield Static(self._table(), id="details")
            warnings = "\n".join(f"! {w}" for w in self.report.warnings)
            yield Static(Text(warnings or "No warnings."), id="warnings")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"Details: {self.stick.title}"
        self.load_details()

    def _table(self) -> Table:
        table = Table(box=None, show_header=False, padding=(0, 1), expand=True)
        table.add_column(style="bold", no_wrap=True)
        table.add_column(overflow="fold")
        for label, value in present.details_rows(self.report, self.details):
            table.add_row(label, Text(value))
        return table

    @work(thread=True, exit_on_error=False)
    def load_details(self) -> None:
        try:
            details = self.backend.details(self.stick)
        except LiveOSError as err:
            details = Details(dm_table=f"not readable: {err.message}")
        self.app.call_from_thread(self._show, details)

    def _show(self, details: Details) -> None:
        self.details = details
        self.query_one("#details", Static).update(self._table())

    def action_back(self) -> None:
        self.dismiss(None)
