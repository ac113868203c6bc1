"""The Remix action on real sticks: the same Remix plan the CLI runs, its byte progress
(bytes, rate, ETA) shown in the progress dialog's step line."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

from liveos_tools.plan import Progress
from liveos_tools.units import format_size

from .backend import ActionParams, Prepared, Stick

STAGES = {"merge": "merging", "squashfs": "squashfs", "iso": "ISO"}


class StageReporter:
    """Turns (stage, done, total) byte counts into the app's (step, count, text) progress."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.progress: Progress | None = None
        self.step = (0, 1, "")
        self._stage = ""
        self._start = 0.0
        self._last = 0.0

    def on_step(self, index: int, count: int, summary: str) -> None:
        self.step = (index, count, summary)
        if self.progress is not None:
            self.progress(index, count, summary)

    def line(self, stage: str, done: int, total: int, now: float) -> str:
        elapsed = max(now - self._start, 1e-6)
        rate = done / elapsed
        eta = (total - done) / rate if rate > 0 else 0
        return (
            f"{STAGES.get(stage, stage)}: {format_size(done)} / {format_size(total)}, "
            f"{format_size(int(rate))}/s, ETA {eta:.0f} s"
        )

    def on_bytes(self, stage: str, done: int, total: int) -> None:
        now = self.clock()
        if stage != self._stage:
            self._stage, self._start, self._last = stage, now, 0.0
        if self.progress is None or (now - self._last < 0.5 and done < total):
            return
        self._last = now
        index, count, summary = self.step
        self.progress(index, count, f"{summary}\n{self.line(stage, done, total, now)}")


def prepare_remix(stick: Stick, params: ActionParams) -> Prepared:
    """Plan the remix on a read-only view of the stick; kept open until released."""
    from liveos_tools.errors import UsageError
    from liveos_tools.media import open_medium
    from liveos_tools.tasks.remix import Remix, RemixOptions

    if not params.output:
        raise UsageError("choose where the ISO goes")
    reporter = StageReporter()
    opts = RemixOptions(output=Path(params.output), label=params.label, clone=params.clone)
    stack = contextlib.ExitStack()
    try:
        medium = stack.enter_context(open_medium(stick.target))
        remix = Remix(medium, opts, reporter.on_bytes)
        plan = remix.plan()
    except BaseException:
        stack.close()
        raise

    def run(progress: Progress) -> None:
        reporter.progress = progress
        remix.execute(plan, reporter.on_step)

    return Prepared(plan=plan, release=stack.close, run=run)
