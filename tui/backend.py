"""What the app needs from the world, as a typed protocol.

The app never calls liveos_tools directly: it asks a Backend. RealBackend (real.py)
reads real sticks; FixtureBackend (fake.py) serves fixture reports to tests. This
module imports neither textual nor anything that touches a device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

from liveos_tools.errors import LiveOSError
from liveos_tools.plan import Plan, Progress

if TYPE_CHECKING:
    from liveos_tools.tasks.status import StatusReport


class StickOrigin(Enum):
    LIVE = "running system"
    PLUGGED = "plugged in"
    ARGUMENT = "command line"


@dataclass(frozen=True)
class Stick:
    """One thing the app shows a card for."""

    #: unique and stable while the app runs: "live", a device node or a path.
    key: str
    #: what liveos_tools.media.open_medium takes (None: the running live system).
    target: str | None
    title: str
    origin: StickOrigin


class Action(Enum):
    """The actions, their key and the liveos-overlay command line that does the same."""

    REPAIR = "repair"
    GROW = "grow"
    RESET = "reset"
    GROW_HOME = "grow-home"
    COPY_HOME = "copy-home"
    REFRESH = "refresh"
    ROLLBACK = "rollback"
    COMPACT = "compact"
    REMIX = "remix"

    @property
    def label(self) -> str:
        return ACTION_LABELS[self]


ACTION_LABELS = {
    Action.REPAIR: "Repair overlay",
    Action.GROW: "Grow overlay",
    Action.RESET: "Reset overlay",
    Action.GROW_HOME: "Grow home.img",
    Action.COPY_HOME: "Copy home.img to another stick",
    Action.REFRESH: "Refresh the image (fold the overlay in)",
    Action.ROLLBACK: "Roll back to the previous image",
    Action.COMPACT: "Compact overlay (give back reclaimable chunks)",
    Action.REMIX: "Remix into a new ISO",
}

#: Actions that take a size (grow by).
SIZED_ACTIONS = {Action.GROW, Action.GROW_HOME}
DEFAULT_GROW = "512M"


class Secret:
    """A passphrase: its repr and str never show it (tracebacks with locals, logs, reprs).

    `reveal()` gives the bytes, only where they are handed to the library or to a
    child process's stdin.
    """

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        self._value = value

    def reveal(self) -> bytes:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class ActionParams:
    """What the user chose in the parameter dialog."""

    by_bytes: int | None = None
    dest: Stick | None = None
    delete_existing: bool = False
    #: the LUKS passphrase of home.img (grow home), when it is encrypted.
    passphrase: Secret | None = None
    #: the card showed an encrypted home.img (so the backend can refuse before planning).
    home_encrypted: bool = False
    #: remix: the new ISO's path, its label (None: the stick's), home.img into it.
    output: str | None = None
    label: str | None = None
    clone: bool = False


class ActionUnavailable(LiveOSError):
    """The library has no such operation yet, or it does not apply to this stick."""


@dataclass
class Prepared:
    """A plan ready to confirm. `release()` must be called once, run or not."""

    plan: Plan
    #: run it with the terminal handed over (sudo asking for a password).
    needs_terminal: bool = False
    #: shown in the confirm dialog, e.g. "runs as root through pkexec".
    privilege: str | None = None
    release: Callable[[], None] = field(default=lambda: None)
    #: how to carry it out, when that is more than plan.execute (e.g. re-planning on a
    #: writable mount of a device, as the CLI does). None: plan.execute.
    run: Callable[[Progress], None] | None = None


@dataclass(frozen=True)
class Details:
    #: the live snapshot's dm table line, when live and readable.
    dm_table: str | None = None
    #: live-boot arguments found in the stick's boot loader configuration.
    boot_args: dict[str, str] = field(default_factory=dict)
    #: the files they were read from, relative to the stick.
    boot_files: tuple[str, ...] = ()


@dataclass(frozen=True)
class Reading:
    """A stick's status as the backend read it."""

    report: StatusReport
    #: seconds since the monitor published it; None: read from the stick just now.
    age: float | None = None
    #: older than this many seconds, the monitor has stopped publishing.
    stale_after: float | None = None

    @property
    def stale(self) -> bool:
        return self.age is not None and self.stale_after is not None and self.age > self.stale_after


def reading_of_published(doc: dict[str, Any], now: float) -> Reading:
    """The monitor's document as a Reading: the report, how old it is, when it is stale."""
    from liveos_tools.tasks import monitor

    age = monitor.age_seconds(doc, now)
    return Reading(
        monitor.report_from_json(doc),
        # A clock a little behind the monitor's is not "from the future": 0 s old.
        age=None if age is None else max(0.0, age),
        stale_after=monitor.stale_after(doc),
    )


#: hotplug callback: ("add" | "remove", stick). Called from a background thread.
StickEvent = Callable[[str, Stick], None]


class Backend(Protocol):
    def list_sticks(self) -> list[Stick]:
        """Every stick to show. May be slow (probes devices): call it from a worker."""
        ...

    def status(self, stick: Stick) -> Reading:
        """Read the stick now (or the monitor's last publication of it); raises LiveOSError."""
        ...

    def details(self, stick: Stick) -> Details:
        """What only the details view shows (dm table, boot arguments); raises LiveOSError."""
        ...

    def prepare(self, stick: Stick, action: Action, params: ActionParams) -> Prepared:
        """Build the plan; raises ActionUnavailable or LiveOSError."""
        ...

    def execute(self, prepared: Prepared, progress: Progress) -> None:
        """Run a confirmed plan; raises LiveOSError. Called from a worker thread."""
        ...

    def watch(self, callback: StickEvent) -> Callable[[], None] | None:
        """Start reporting sticks plugged in and removed; returns a stop function."""
        ...

    def space(self, stick: Stick) -> dict[str, Any]:
        """`liveos-overlay du --json` of the stick (the monitor's summary when not root)."""
        ...

    def accepts_passphrase(self) -> bool:
        """Whether an action can be given a LUKS passphrase (the dialog asks only then)."""
        ...
