"""Ask what an action needs before planning it: a size to grow by, or a destination stick."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, RadioButton, RadioSet, Static

from liveos_tools.errors import LiveOSError
from liveos_tools.units import parse_size

from ..backend import (
    DEFAULT_GROW,
    SIZED_ACTIONS,
    Action,
    ActionParams,
    Secret,
    Stick,
)


class ParamsDialog(ModalScreen[ActionParams | None]):
    DEFAULT_CSS = """
    ParamsDialog { align: center middle; }
    ParamsDialog #dialog {
        width: 70; max-width: 100%; height: auto; max-height: 100%;
        border: thick $primary; background: $surface; padding: 0 1;
    }
    ParamsDialog #title { text-style: bold; }
    ParamsDialog #problem { color: $text-error; height: auto; }
    ParamsDialog #buttons { height: auto; align-horizontal: right; }
    ParamsDialog Button { margin: 0 0 0 2; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(
        self,
        action: Action,
        stick: Stick,
        others: list[Stick],
        *,
        ask_passphrase: bool = False,
        home_encrypted: bool = False,
    ) -> None:
        super().__init__()
        self.action = action
        self.stick = stick
        self.others = others
        #: home.img is LUKS and the backend can take its passphrase: ask for it.
        self.ask_passphrase = ask_passphrase
        self.home_encrypted = home_encrypted

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(Text(f"{self.action.label}: {self.stick.title}"), id="title")
            if self.action in SIZED_ACTIONS:
                yield Label("Grow by (e.g. 512M, 1G; a bare number is MiB):")
                yield Input(value=DEFAULT_GROW, id="size")
                if self.ask_passphrase:
                    yield Label("Passphrase of the encrypted home.img:")
                    # password=True: shown as dots; the value never leaves this dialog
                    # except as a Secret in ActionParams.
                    yield Input(password=True, id="passphrase")
            else:
                yield Label("Copy home.img to:")
                with RadioSet(id="dest"):
                    for i, s in enumerate(self.others):
                        yield RadioButton(s.title, value=i == 0, id=f"dest-{i}")
                yield Checkbox("Replace a home.img already there (destroys it)", id="replace")
            yield Static("", id="problem")
            with Horizontal(id="buttons"):
                yield Button("Cancel", id="cancel")
                yield Button("Next: see the plan", id="next", variant="primary")

    def on_mount(self) -> None:
        if self.action in SIZED_ACTIONS:
            self.query_one("#size", Input).focus()
        else:
            self.query_one("#dest", RadioSet).focus()

    def _problem(self, text: str) -> None:
        self.query_one("#problem", Static).update(Text(text))

    def _result(self) -> ActionParams | None:
        if self.action in SIZED_ACTIONS:
            try:
                size = parse_size(self.query_one("#size", Input).value)
            except LiveOSError as err:
                self._problem(f"{err.message}; {err.hint}")
                return None
            if size <= 0:
                self._problem("the size must be more than 0")
                return None
            secret = None
            if self.ask_passphrase:
                box = self.query_one("#passphrase", Input)
                if not box.value:
                    self._problem("type the passphrase of home.img")
                    box.focus()
                    return None
                secret = Secret(box.value.encode())
                box.value = ""
            return ActionParams(
                by_bytes=size, passphrase=secret, home_encrypted=self.home_encrypted
            )
        index = self.query_one("#dest", RadioSet).pressed_index
        if not self.others or index < 0:
            self._problem("there is no other stick to copy to")
            return None
        replace = self.query_one("#replace", Checkbox).value
        return ActionParams(dest=self.others[index], delete_existing=replace)

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
