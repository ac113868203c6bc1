"""FixtureBackend: sticks made from status JSON documents, for tests and demos.

A fixture file is one JSON object:
``{"stick": {"key", "title", "origin"}, "status": <liveos-overlay status --json>,
"details": {"dm_table", "boot_args", "boot_files"}}``, or ``"error": {"message",
"hint"}`` in place of "status" for a stick that cannot be read. Nothing here touches
a device: actions build plans whose steps only record that they ran.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from liveos_tools.errors import LiveOSError
from liveos_tools.plan import Plan, Progress
from liveos_tools.tasks.monitor import report_from_json
from liveos_tools.units import format_size

from .backend import (
    Action,
    ActionParams,
    ActionUnavailable,
    Details,
    Prepared,
    Reading,
    Stick,
    StickEvent,
    StickOrigin,
    reading_of_published,
)


@dataclass
class FixtureStick:
    stick: Stick
    status: dict[str, Any] | None = None
    error: LiveOSError | None = None
    details: Details = field(default_factory=Details)
    #: `liveos-overlay du --json` of the stick (the Space screen), if the fixture has one
    space: dict[str, Any] | None = None


def load_fixture(path: Path) -> FixtureStick:
    doc = json.loads(path.read_text())
    s = doc["stick"]
    stick = Stick(s["key"], s.get("target", s["key"]), s["title"], StickOrigin(s["origin"]))
    err = doc.get("error")
    d = doc.get("details") or {}
    return FixtureStick(
        stick=stick,
        status=doc.get("status"),
        error=LiveOSError(err["message"], err.get("hint")) if err else None,
        details=Details(
            d.get("dm_table"), dict(d.get("boot_args") or {}), tuple(d.get("boot_files") or ())
        ),
        space=doc.get("space"),
    )


def load_fixtures(paths: Iterable[Path]) -> list[FixtureStick]:
    return [load_fixture(p) for p in paths]


class FixtureBackend:
    """A Backend over fixture sticks. Records what ran, so tests can assert on it."""

    def __init__(
        self,
        sticks: list[FixtureStick],
        *,
        failures: dict[Action, LiveOSError] | None = None,
        unavailable: Iterable[Action] = (),
        step_delay: float = 0.0,
        passphrase_ok: bool = True,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.sticks = {f.stick.key: f for f in sticks}
        self.failures = dict(failures or {})
        self.unavailable = set(unavailable)
        self.step_delay = step_delay
        self.passphrase_ok = passphrase_ok
        self.wall_clock = wall_clock
        #: the passphrases the (fixture) grow-home planning was given, as the library's
        #: plan_resize would get them.
        self.plan_passphrases: list[bytes | None] = []
        self.prepared: list[tuple[str, Action, ActionParams]] = []
        self.executed: list[tuple[str, Action, ActionParams]] = []
        self.released = 0
        self.status_calls = 0
        self._callback: StickEvent | None = None
        #: set by a test to let a slow plan finish (step_delay > 0 waits on it).
        self.gate = threading.Event()
        self.gate.set()

    # --- Backend ---

    def list_sticks(self) -> list[Stick]:
        return [f.stick for f in self.sticks.values()]

    def status(self, stick: Stick) -> Reading:
        self.status_calls += 1
        f = self.sticks[stick.key]
        if f.error is not None:
            raise f.error
        assert f.status is not None
        if "published_at" in f.status:  # as the monitor published it: judge its age
            return reading_of_published(f.status, self.wall_clock())
        return Reading(report_from_json(f.status))

    def details(self, stick: Stick) -> Details:
        return self.sticks[stick.key].details

    def prepare(self, stick: Stick, action: Action, params: ActionParams) -> Prepared:
        if action in self.unavailable:
            raise ActionUnavailable(
                f"{action.label} is not available in this version",
                "update liveos-tools, or use the liveos-overlay command",
            )
        self.prepared.append((stick.key, action, params))
        plan = Plan(title=action.label, target=stick.title)
        if action is Action.GROW_HOME and self._home_kind(stick) == "luks":
            # As home.plan_resize: an encrypted home.img cannot be planned without it.
            secret = params.passphrase.reveal() if params.passphrase else None
            self.plan_passphrases.append(secret)
            if not secret:
                raise LiveOSError(
                    f"{stick.title}: home.img is encrypted (LUKS): the passphrase is needed"
                )
            plan.add("open home.img (LUKS) with the passphrase given, read-only: check it")
        record = (stick.key, action, params)
        failure = self.failures.get(action)

        def first() -> None:
            if self.step_delay:
                self.gate.wait(timeout=30)

        def last() -> None:
            if failure is not None:
                raise failure
            self.executed.append(record)

        what = {
            Action.REPAIR: "set the header's valid flag back to 1",
            Action.GROW: f"append {format_size(params.by_bytes or 0)} of zeros to the overlay",
            Action.RESET: "zero the first 64 KiB of the overlay",
            Action.GROW_HOME: f"grow home.img by {format_size(params.by_bytes or 0)}",
            Action.COPY_HOME: f"copy home.img to {params.dest.title if params.dest else '?'}",
            Action.REFRESH: "build a new squashfs.img, switch to it with a fresh overlay",
            Action.ROLLBACK: "switch back to the previous image and its overlay",
            Action.COMPACT: "write the overlay anew without its reclaimable chunks",
            Action.REMIX: f"write a new ISO to {params.output}, private data left out",
        }[action]
        plan.add(f"check that {stick.title} is not in use", first)
        plan.add(what, last)
        if action is Action.RESET:
            plan.destroys.append("every change saved in the overlay")
        if action is Action.COPY_HOME and params.delete_existing:
            plan.destroys.append("the home.img already on the other stick")

        def release() -> None:
            self.released += 1

        return Prepared(plan=plan, release=release)

    def execute(self, prepared: Prepared, progress: Progress) -> None:
        prepared.plan.execute(progress)

    def space(self, stick: Stick) -> dict[str, Any]:
        doc = self.sticks[stick.key].space
        if doc is None:
            raise LiveOSError(f"{stick.title}: no du summary in the fixture")
        return doc

    def accepts_passphrase(self) -> bool:
        return self.passphrase_ok

    def _home_kind(self, stick: Stick) -> str | None:
        status = self.sticks[stick.key].status
        home = (status or {}).get("home") or {}
        kind = home.get("kind")
        return kind if isinstance(kind, str) else None

    def watch(self, callback: StickEvent) -> Callable[[], None] | None:
        self._callback = callback

        def stop() -> None:
            self._callback = None

        return stop

    # --- for tests: simulate hotplug, from another thread like pyudev does ---

    def plug(self, fixture: FixtureStick) -> None:
        self.sticks[fixture.stick.key] = fixture
        self._emit("add", fixture.stick)

    def unplug(self, key: str) -> None:
        fixture = self.sticks.pop(key)
        self._emit("remove", fixture.stick)

    def _emit(self, event: str, stick: Stick) -> None:
        cb = self._callback
        if cb is not None:
            t = threading.Thread(target=cb, args=(event, stick))
            t.start()
            t.join()
