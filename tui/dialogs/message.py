"""A message to acknowledge: an error (message + hint), or a result."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

from liveos_tools.errors import LiveOSError


class MessageDialog(ModalScreen[None]):
    DEFAULT_CSS = """
    MessageDialog { align: center middle; }
    MessageDialog #dialog {
        width: 70; max-width: 100%; height: auto;
        border: thick $primary; background: $surface; padding: 0 1;
    }
    MessageDialog.error #dialog { border: thick $error; }
    MessageDialog #title { text-style: bold; }
    MessageDialog #hint { color: $text-muted; }
    MessageDialog #buttons { height: auto; align-horizontal: right; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,enter", "close", "Close")]

    def __init__(self, title: str, message: str, hint: str | None = None, *, error: bool) -> None:
        super().__init__(classes="error" if error else "")
        self.title_text = title
        self.message = message
        self.hint = hint

    @classmethod
    def for_error(cls, title: str, err: LiveOSError) -> MessageDialog:
        return cls(
            title, f"error: {err.message}", f"hint: {err.hint}" if err.hint else None, error=True
        )

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(Text(self.title_text), id="title")
            yield Static(Text(self.message), id="message")
            if self.hint:
                yield Static(Text(self.hint), id="hint")
            with Horizontal(id="buttons"):
                yield Button("OK", id="ok", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#ok", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None)

    def action_close(self) -> None:
        self.dismiss(None)
