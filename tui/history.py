"""Consumption history of a live overlay while the app is open, and time left at that rate."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

#: samples kept (at the default 5 s refresh: 10 minutes).
MAX_SAMPLES = 120
#: at least this much time must be covered before a rate means anything.
MIN_SPAN_SECONDS = 10.0


@dataclass
class History:
    samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=MAX_SAMPLES))

    def add(self, when: float, used_bytes: int) -> None:
        self.samples.append((when, used_bytes))

    def values(self) -> list[float]:
        return [float(used) for _, used in self.samples]

    def rate(self) -> float | None:
        """Bytes per second over the samples (least squares), or None if too few."""
        if len(self.samples) < 2:
            return None
        ts = [t for t, _ in self.samples]
        if ts[-1] - ts[0] < MIN_SPAN_SECONDS:
            return None
        ys = [float(u) for _, u in self.samples]
        n = len(ts)
        mt, my = sum(ts) / n, sum(ys) / n
        var = sum((t - mt) ** 2 for t in ts)
        if var == 0:
            return None
        return sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) / var

    def seconds_left(self, total_bytes: int) -> float | None:
        """Time until the overlay is full at the current rate; None if not filling."""
        rate = self.rate()
        if rate is None or rate <= 0 or not self.samples:
            return None
        return max(0.0, (total_bytes - self.samples[-1][1]) / rate)


def format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
