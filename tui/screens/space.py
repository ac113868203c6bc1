"""Space: where the overlay went, ncdu-like: directories with bars, the reclaimable total,
a Compact action, and economize's advice. Reads `liveos-overlay du`'s JSON (or, for a
learner who is not root, the du summary the monitor publishes)."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, OptionList, Static
from textual.widgets.option_list import Option

from liveos_tools.errors import LiveOSError
from liveos_tools.units import format_size

from ..backend import Backend, Stick

BAR = 20


def bar(part: int, whole: int, width: int = BAR) -> str:
    filled = round(width * part / whole) if whole > 0 else 0
    return "█" * filled + "░" * (width - filled)


def entries(doc: dict[str, Any], cwd: str) -> list[tuple[str, str, int, bool]]:
    """(name, path, bytes, is_directory) directly under `cwd`, largest first.

    Directories come from `directories` (down to the summary's depth), files from
    `top_files`; so a listing shows what the summary knows, not every file.
    """
    prefix = cwd.rstrip("/") + "/"
    out: dict[str, tuple[str, str, int, bool]] = {}
    for d in doc.get("directories", []):
        path = str(d["path"])
        if path != "/" and path.startswith(prefix) and "/" not in path[len(prefix) :]:
            out[path] = (path[len(prefix) :] + "/", path, int(d["bytes"]), True)
    for f in doc.get("top_files", []):
        path = str(f["path"])
        if path.startswith(prefix) and "/" not in path[len(prefix) :]:
            out.setdefault(path, (path[len(prefix) :], path, int(f["bytes"]), False))
    return sorted(out.values(), key=lambda e: (-e[2], e[0]))


def advice_rows(doc: dict[str, Any]) -> list[tuple[str, int, str]]:
    """(path, bytes under it, what to do) for economize's consumers found in the summary."""
    from liveos_tools.tasks.economize import CONSUMERS

    sizes = {str(d["path"]): int(d["bytes"]) for d in doc.get("directories", [])}
    rows = [(c.path, sizes.get(c.path, 0), c.remedy) for c in CONSUMERS]
    return sorted((r for r in rows if r[1]), key=lambda r: -r[1])


class SpaceScreen(Screen[None]):
    DEFAULT_CSS = """
    SpaceScreen #summary { padding: 0 1; height: auto; }
    SpaceScreen #dirs { height: 1fr; min-height: 5; }
    SpaceScreen #advice { padding: 0 1; height: auto; color: $text-muted; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "back", "Back"),
        Binding("backspace,left", "up", "Up"),
        Binding("c", "compact", "Compact"),
    ]

    def __init__(self, backend: Backend, stick: Stick) -> None:
        super().__init__()
        self.backend = backend
        self.stick = stick
        self.doc: dict[str, Any] | None = None
        self.cwd = "/"

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(Text("Reading the overlay..."), id="summary")
        yield OptionList(id="dirs")
        with VerticalScroll(id="advice-box"):
            yield Static("", id="advice")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"Space: {self.stick.title}"
        self.load()

    @work(thread=True, exit_on_error=False)
    def load(self) -> None:
        try:
            doc: dict[str, Any] | LiveOSError = self.backend.space(self.stick)
        except LiveOSError as err:
            doc = err
        self.app.call_from_thread(self._show, doc)

    def _show(self, doc: dict[str, Any] | LiveOSError) -> None:
        summary = self.query_one("#summary", Static)
        if isinstance(doc, LiveOSError):
            summary.update(Text(f"du: {doc.message}" + (f"\n{doc.hint}" if doc.hint else "")))
            return
        self.doc = doc
        summary.update(self._summary(doc))
        self.query_one("#advice", Static).update(self._advice(doc))
        self._list()

    def _summary(self, doc: dict[str, Any]) -> Table:
        total = int(doc.get("data_bytes", 0))
        table = Table(box=None, show_header=False, padding=(0, 1))
        table.add_column(style="bold")
        table.add_column(justify="right")
        table.add_column()
        for label, key in (
            ("files", "files_bytes"),
            ("metadata", "metadata_bytes"),
            ("reclaimable", "reclaimable_bytes"),
        ):
            n = int(doc.get(key, 0))
            table.add_row(label, format_size(n), bar(n, total))
        table.add_row("in the overlay", format_size(total), "")
        return table

    def _advice(self, doc: dict[str, Any]) -> Text:
        lines = []
        back = int(doc.get("reclaimable_bytes", 0))
        if back:
            lines.append(f"c: compact gives back {format_size(back)} (stick not booted)")
        for path, n, what in advice_rows(doc):
            lines.append(f"{format_size(n):>10}  {path}: {what}")
        lines.extend(f"! {w}" for w in doc.get("warnings", []))
        return Text("\n".join(lines) or "Nothing to advise.")

    def _list(self) -> None:
        assert self.doc is not None
        ol = self.query_one("#dirs", OptionList)
        ol.clear_options()
        rows = entries(self.doc, self.cwd)
        whole = max((r[2] for r in rows), default=0)
        ol.add_options(
            Option(f"{format_size(n):>10} {bar(n, whole)} {name}", id=path)
            for name, path, n, _is_dir in rows
        )
        self.sub_title = f"Space: {self.stick.title}  {self.cwd}"
        if rows:
            ol.highlighted = 0
        ol.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        path = event.option.id
        if self.doc is None or path is None:
            return
        if any(e[1] == path and e[3] for e in entries(self.doc, self.cwd)):
            self.cwd = path
            self._list()

    def action_up(self) -> None:
        if self.doc is not None and self.cwd != "/":
            self.cwd = self.cwd.rsplit("/", 1)[0] or "/"
            self._list()

    async def action_compact(self) -> None:
        # the app's own action flow: plan, confirm dialog, progress, result
        await self.app.run_action("act('compact')")

    def action_back(self) -> None:
        self.dismiss(None)
