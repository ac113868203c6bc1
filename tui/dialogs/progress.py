"""Shown while a confirmed plan runs in a worker thread; cannot be dismissed by keys."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, ProgressBar, Static


class ProgressDialog(ModalScreen[None]):
    DEFAULT_CSS = """
    ProgressDialog { align: center middle; }
    ProgressDialog #dialog {
        width: 70; max-width: 100%; height: auto;
        border: thick $primary; background: $surface; padding: 0 1;
    }
    ProgressDialog #title { text-style: bold; }
    """

    def __init__(self, title: str, steps: int) -> None:
        super().__init__()
        self.title_text = title
        self.steps = steps
        self.summaries: list[str] = []

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(Text(f"{self.title_text}: running"), id="title")
            yield ProgressBar(total=max(1, self.steps), show_eta=False, id="bar")
            yield Static(Text("starting..."), id="step")

    def set_progress(self, index: int, count: int, summary: str) -> None:
        self.summaries.append(summary)
        self.query_one(ProgressBar).update(total=max(1, count), progress=index)
        text = summary if index >= count else f"[{index + 1}/{count}] {summary}"
        self.query_one("#step", Static).update(Text(text))
