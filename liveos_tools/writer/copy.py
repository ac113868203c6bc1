"""Copy source files into a Dest with a progress line (bytes, rate, ETA) on stderr,
hashing as they stream, and verify them afterwards by reading them back."""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import TextIO

from liveos_tools.errors import CorruptError
from liveos_tools.units import format_size
from liveos_tools.writer.dest import Dest
from liveos_tools.writer.source import SourceFile

CHUNK = 4 << 20
_print_lock = threading.Lock()


class Progress:
    """One progress line per target; redrawn in place on a terminal, else every 2 s."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None,
                 quiet: bool = False) -> None:  # fmt: skip
        self.label = label
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.start = time.monotonic()
        self._last = 0.0
        self.tty = self.stream.isatty()

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-6)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else 0
        pct = 100 * self.done / self.total
        return (f"{self.label}: {format_size(self.done)} / {format_size(self.total)} "
                f"({pct:3.0f}%) {format_size(int(rate))}/s ETA {eta:4.0f} s")  # fmt: skip

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.quiet or now - self._last < (0.2 if self.tty else 2.0):
            return
        self._last = now
        with _print_lock:
            end = "\r" if self.tty else "\n"
            print(self.line(), end=end, file=self.stream, flush=True)

    def finish(self) -> None:
        if not self.quiet:
            with _print_lock:
                print(self.line(), file=self.stream, flush=True)


def source_chunks(sf: SourceFile, digest: hashlib._Hash, progress: Progress | None
                  ) -> Iterator[bytes]:  # fmt: skip
    with open(sf.backing, "rb", buffering=0) as f:
        f.seek(sf.offset)
        left = sf.size
        while left > 0:
            data = f.read(min(CHUNK, left))
            if not data:
                raise CorruptError(f"{sf.backing}: ends inside {sf.path}")
            digest.update(data)
            left -= len(data)
            if progress:
                progress.update(len(data))
            yield data


def copy(sf: SourceFile, dest: Dest, rel: str, progress: Progress | None = None) -> str:
    """Stream one file into dest; return its sha256."""
    h = hashlib.sha256()
    dest.write_stream(rel, sf.size, source_chunks(sf, h, progress))
    return h.hexdigest()


def verify(dest: Dest, rel: str, size: int, expected: str) -> None:
    h = hashlib.sha256()
    n = 0
    for chunk in dest.read_chunks(rel, size):
        h.update(chunk)
        n += len(chunk)
    if n != size or h.hexdigest() != expected:
        raise CorruptError(
            f"verification failed: {rel} on the stick differs from the source "
            f"({n} of {size} bytes read back)",
            "the stick may be failing or fake-sized; try another stick, or check with f3probe",
        )
