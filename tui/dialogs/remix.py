"""Ask where the remixed ISO goes (and its label, and whether home.img goes along).

The params dialog's frame, buttons and keys (and its CSS: type selectors match
subclasses) with other fields."""

from __future__ import annotations

import os

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.events import Mount
from textual.widgets import Button, Checkbox, Input, Label, Static

from ..backend import Action, ActionParams, Stick
from .params import ParamsDialog


class RemixDialog(ParamsDialog):
    def __init__(self, stick: Stick, *, default_output: str | None = None) -> None:
        super().__init__(Action.REMIX, stick, [])
        self.default_output = default_output or os.path.join(os.getcwd(), "remix.iso")

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(Text(f"{self.action.label}: {self.stick.title}"), id="title")
            yield Static(
                Text(
                    "A new bootable ISO of this stick, its overlay merged in; "
                    "Wi-Fi passwords, SSH keys, histories and logs left out. "
                    "The stick is only read."
                )
            )
            yield Label("Write the ISO to (not on this stick):")
            yield Input(value=self.default_output, id="output")
            yield Label("Volume label (empty: the stick's):")
            yield Input(value="", id="label")
            yield Checkbox("Put home.img into the ISO too (--clone)", id="clone")
            yield Static("", id="problem")
            with Horizontal(id="buttons"):
                yield Button("Cancel", id="cancel")
                yield Button("Next: see the plan", id="next", variant="primary")

    def on_mount(self, event: Mount) -> None:  # type: ignore[override]
        event.prevent_default()  # ParamsDialog's focuses its own fields
        self.query_one("#output", Input).focus()

    def _result(self) -> ActionParams | None:
        output = self.query_one("#output", Input).value.strip()
        if not output or output.endswith("/"):
            self._problem("give the path of the new .iso file")
            return None
        label = self.query_one("#label", Input).value.strip() or None
        clone = self.query_one("#clone", Checkbox).value
        return ActionParams(
            output=os.path.abspath(os.path.expanduser(output)), label=label, clone=clone
        )
