"""Confirm a plan before it runs: shows Plan.render() exactly; Cancel has the focus."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

from liveos_tools.plan import Plan


class ConfirmDialog(ModalScreen[bool]):
    DEFAULT_CSS = """
    ConfirmDialog { align: center middle; }
    ConfirmDialog #dialog {
        width: 76; max-width: 100%; height: auto; max-height: 100%;
        border: thick $primary; background: $surface; padding: 0 1;
    }
    ConfirmDialog.destructive #dialog { border: thick $error; }
    ConfirmDialog #title { text-style: bold; width: 1fr; }
    ConfirmDialog #plan { height: auto; max-height: 12; border: solid $secondary; }
    ConfirmDialog #destroys { color: $text-error; text-style: bold; }
    ConfirmDialog #buttons { height: auto; align-horizontal: right; }
    ConfirmDialog Button { margin: 0 0 0 2; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,n", "cancel", "Cancel"),
        Binding("y", "confirm", "Go ahead"),
    ]

    def __init__(self, plan: Plan, privilege: str | None = None) -> None:
        super().__init__(classes="destructive" if plan.destructive else "")
        self.plan = plan
        self.privilege = privilege

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(Text(f"{self.plan.title}?"), id="title")
            with VerticalScroll(id="plan"):
                yield Static(Text(self.plan.render()), id="plan-text")
            if self.plan.destroys:
                lost = "; ".join(self.plan.destroys)
                yield Static(Text(f"This destroys: {lost}"), id="destroys")
            else:
                yield Static(Text("Nothing is destroyed."), id="destroys-none")
            if self.privilege:
                yield Static(Text(f"This {self.privilege}."), id="privilege")
            with Horizontal(id="buttons"):
                yield Button("Cancel (n)", id="cancel")
                yield Button(
                    "Go ahead (y)",
                    id="go",
                    variant="error" if self.plan.destructive else "primary",
                )

    def on_mount(self) -> None:
        self.query_one("#cancel", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "go")

    def action_cancel(self) -> None:
        self.dismiss(False)

    def action_confirm(self) -> None:
        self.dismiss(True)
