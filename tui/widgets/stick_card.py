"""One card per stick: overlay gauge and badge, home.img, free space, live history."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, Sparkline, Static

from liveos_tools.errors import LiveOSError
from liveos_tools.tasks.status import StatusReport

from .. import present
from ..backend import Reading, Stick
from ..history import History, format_duration

BAR_WIDTH = 20
LEVEL_CLASSES = (
    "level-ok",
    "level-filling",
    "level-critical",
    "level-broken",
    "level-none",
    "level-error",
    "level-loading",
    "level-stale",
)
#: the service that publishes the status for users who are not root.
MONITOR_UNIT = "liveos-overlay-monitor"


class StickCard(Vertical, can_focus=True):
    DEFAULT_CSS = """
    StickCard {
        height: auto;
        border: round $secondary;
        border-title-align: left;
        border-subtitle-align: right;
        padding: 0 1;
        margin: 0 0 0 0;
    }
    StickCard:focus { border: double $accent; }
    StickCard .row { height: 1; }
    StickCard .name { width: 1fr; color: $text-muted; }
    StickCard .badge { width: auto; padding: 0 1; text-style: bold; }
    StickCard .gauge { height: 1; }
    StickCard .history { height: 1; display: none; }
    StickCard.live .history { display: block; }
    StickCard Sparkline { width: 1fr; height: 1; }
    StickCard .history-label { width: auto; }
    StickCard .time-left { width: auto; padding: 0 0 0 1; }
    StickCard .warning { color: $text-warning; }
    StickCard.level-ok .badge { background: $success 40%; }
    StickCard.level-filling .badge { background: $warning 50%; }
    StickCard.level-critical .badge { background: $error 60%; }
    StickCard.level-broken .badge { background: $error; color: $text; }
    StickCard.level-error .badge { background: $error 40%; }
    StickCard.level-stale .badge { background: $warning 30%; }
    StickCard.level-stale .gauge { color: $text-muted; }
    StickCard.level-ok .gauge { color: $success; }
    StickCard.level-filling .gauge { color: $warning; }
    StickCard.level-critical .gauge { color: $error; }
    StickCard.level-broken .gauge { color: $error; }
    """

    # Here, not on the app: the scroll container around the cards binds the arrows too.
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("down,j", "app.move(1)", "Next", show=False),
        Binding("up,k", "app.move(-1)", "Previous", show=False),
    ]

    def __init__(self, stick: Stick, clock: Callable[[], float]) -> None:
        super().__init__(id=card_id(stick), classes="level-loading")
        self.stick = stick
        self.report: StatusReport | None = None
        self.error: LiveOSError | None = None
        #: the last reading came from the monitor's file, and it is old.
        self.stale = False
        self.history = History()
        self._clock = clock
        self.border_title = stick.title

    def compose(self) -> ComposeResult:
        with Horizontal(classes="row"):
            yield Label(self.stick.origin.value, classes="name", markup=False)
            yield Label("[ reading... ]", classes="badge", markup=False)
        yield Static("Overlay  reading...", classes="gauge", markup=False)
        yield Static("", classes="home", markup=False)
        yield Static("", classes="free", markup=False)
        with Horizontal(classes="history"):
            yield Label("History  ", classes="history-label", markup=False)
            yield Sparkline([], summary_function=max)
            yield Label("", classes="time-left", markup=False)
        yield Static("", classes="warning", markup=False)

    @property
    def badge_text(self) -> str:
        if self.error is not None:
            return "unreadable"
        if self.report is None:
            return "reading..."
        if self.stale:
            return "stale"
        return present.badge(self.report)

    def _set_level(self, cls: str) -> None:
        self.remove_class(*LEVEL_CLASSES)
        self.add_class(cls)

    def show_report(self, report: StatusReport, reading: Reading | None = None) -> None:
        self.report, self.error = report, None
        self.stale = reading is not None and reading.stale
        self._set_level("level-stale" if self.stale else present.level_class(report))
        self.query_one(".badge", Label).update(Text(f"[ {self.badge_text} ]"))
        o = report.overlay
        gauge = "Overlay  "
        if o.total_bytes:
            gauge += present.bar(o.used_fraction, BAR_WIDTH) + " "
        self.query_one(".gauge", Static).update(Text(gauge + present.overlay_line(report)))
        self.query_one(".home", Static).update(Text("Home     " + present.home_line(report)))
        self.query_one(".free", Static).update(Text("Stick    " + present.stick_line(report)))
        warning = report.warnings[0] if report.warnings else ""
        if self.stale and reading is not None and reading.age is not None:
            # The numbers above are the last the monitor published: say how old they are.
            warning = f"status from {format_duration(reading.age)} ago: is {MONITOR_UNIT} running?"
        box = self.query_one(".warning", Static)
        box.update(Text(f"! {warning}" if warning else ""))
        box.display = bool(warning)
        live = present.is_live(report)
        self.set_class(live, "live")
        if not live:
            return
        if not self.stale:
            # The same old numbers again are no trend: a stale reading adds no sample.
            self.history.add(self._clock(), o.used_bytes)
        values = self.history.values()
        spark = self.query_one(Sparkline)
        # One sample draws a full bar: wait for a second one to show a trend.
        spark.display = len(values) >= 2
        spark.data = values
        left = self.history.seconds_left(o.total_bytes)
        text = "time left: measuring..." if left is None else f"full in ~{format_duration(left)}"
        if left is None and self.history.rate() is not None:
            text = "not filling"
        if self.stale:
            text = "time left: not known"
        self.query_one(".time-left", Label).update(Text(text))

    def show_error(self, error: LiveOSError) -> None:
        self.report, self.error, self.stale = None, error, False
        self._set_level("level-error")
        self.query_one(".badge", Label).update(Text("[ unreadable ]"))
        self.query_one(".gauge", Static).update(Text(f"error: {error.message}"))
        self.query_one(".home", Static).update(Text(f"hint: {error.hint}" if error.hint else ""))
        self.query_one(".free", Static).update(Text(""))
        self.query_one(".warning", Static).display = False
        self.set_class(False, "live")


def card_id(stick: Stick) -> str:
    # Widget ids allow letters, digits, - and _ only.
    safe = "".join(c if c.isalnum() else "_" for c in stick.key)
    return f"card-{safe}-{zlib.crc32(stick.key.encode()):08x}"
