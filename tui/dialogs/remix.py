"""Ask where the remixed ISO goes (and its label, and whether home.img goes along)."""

from __future__ import annotations

import os
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Static

from ..backend import ActionParams, Stick


class RemixDialog(ModalScreen[ActionParams | None]):
    DEFAULT_CSS = """
    RemixDialog { align: center middle; }
    RemixDialog #dialog {
        width: 76; max-width: 100%; height: auto; max-height: 100%;
        border: thick $primary; background: $surface; padding: 0 1;
    }
    RemixDialog #title { text-style: bold; }
    RemixDialog #problem { color: $text-error; height: auto; }
    RemixDialog #buttons { height: auto; align-horizontal: right; }
    RemixDialog Button { margin: 0 0 0 2; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, stick: Stick, *, default_output: str | None = None) -> None:
        super().__init__()
        self.stick = stick
        self.default_output = default_output or os.path.join(os.getcwd(), "remix.iso")

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(Text(f"Remix into a new ISO: {self.stick.title}"), id="title")
            yield Static(Text("A new bootable ISO of this stick, its overlay merged in; "
                              "Wi-Fi passwords, SSH keys, histories and logs left out. "
                              "The stick is only read."))  # fmt: skip
            yield Label("Write the ISO to (not on this stick):")
            yield Input(value=self.default_output, id="output")
            yield Label("Volume label (empty: the stick's):")
            yield Input(value="", id="label")
            yield Checkbox("Put home.img into the ISO too (--clone)", id="clone")
            yield Static("", id="problem")
            with Horizontal(id="buttons"):
                yield Button("Cancel", id="cancel")
                yield Button("Next: see the plan", id="next", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#output", Input).focus()

    def _result(self) -> ActionParams | None:
        output = self.query_one("#output", Input).value.strip()
        if not output or output.endswith("/"):
            self.query_one("#problem", Static).update(Text("give the path of the new .iso file"))
            return None
        label = self.query_one("#label", Input).value.strip() or None
        clone = self.query_one("#clone", Checkbox).value
        return ActionParams(output=os.path.abspath(os.path.expanduser(output)), label=label,
                            clone=clone)  # fmt: skip

    def _submit(self) -> None:
        params = self._result()
        if params is not None:
            self.dismiss(params)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "next":
            self._submit()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)
