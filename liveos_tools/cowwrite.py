"""Write a device-mapper persistent snapshot store the kernel will load (docs/ARCHITECTURE.md F1).

The writer lays exceptions out the way the kernel would have if it had copied these
chunks in this order: header in chunk 0, metadata area N at chunk 1 + (epa + 1) * N,
each area followed by its epa data chunks, the table ended by a zero entry (a full
last area is followed by a zeroed next area, as the kernel does before committing).
Entries are written in ascending old-chunk order, so the table is compact and in order.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from liveos_tools.cow import EXCEPTION, Geometry, header_bytes

_FLUSH = 1 << 20


def _end(geo: Geometry, exceptions: int) -> int:
    """The chunk after the last data chunk of `exceptions` written into an empty store."""
    areas = max(1, -(-exceptions // geo.exceptions_per_area))
    last = exceptions - (areas - 1) * geo.exceptions_per_area
    return geo.area_chunk(areas - 1) + 1 + last


def chunks_needed(geo: Geometry, exceptions: int) -> int:
    """next_free as the kernel reports it after these exceptions (past a next area)."""
    return geo.skip_metadata(_end(geo, exceptions))


def fits(geo: Geometry, exceptions: int) -> bool:
    return _end(geo, exceptions) <= geo.total_chunks


class StoreWriter:
    """Writes a new store file of `size_bytes` holding the chunks given to add()."""

    def __init__(self, path: Path, geo: Geometry) -> None:
        self.path = path
        self.geo = geo
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self._area: list[tuple[int, int]] = []
        self._area_no = 0
        self._next = 2  # the first data chunk, right after area 0
        self.count = 0
        self._last_old = -1
        # data chunks are written in runs: within an area they are consecutive
        self._buf = bytearray()
        self._buf_chunk = 0

    def preallocate(self) -> None:
        """Reserve the whole file now, as the reference writer does: a sparse store
        would need stick space at the moment the live system writes, and fail then."""
        os.posix_fallocate(self._fd, 0, self.geo.size_bytes)

    def add(self, old_chunk: int, data: bytes) -> None:
        geo = self.geo
        if old_chunk <= self._last_old:
            raise ValueError("exceptions must be added in ascending old-chunk order")
        if len(data) != geo.chunk_bytes:
            raise ValueError("a data chunk must be exactly one chunk long")
        if self._next >= geo.total_chunks:
            raise ValueError("the store is full")
        self._last_old = old_chunk
        if not self._buf:
            self._buf_chunk = self._next
        self._buf += data
        if len(self._buf) >= _FLUSH:
            self._flush()
        self._area.append((old_chunk, self._next))
        self.count += 1
        self._next += 1
        if len(self._area) == geo.exceptions_per_area:
            self._flush()
            self._write_area()
            self._area_no += 1
            self._area = []
            self._next += 1  # skip the next area's own chunk

    def _flush(self) -> None:
        if self._buf:
            view, off = memoryview(self._buf), self._buf_chunk * self.geo.chunk_bytes
            while view:
                done = os.pwrite(self._fd, view, off)
                view, off = view[done:], off + done
            self._buf = bytearray()

    def _write_area(self) -> None:
        geo = self.geo
        raw = b"".join(EXCEPTION.pack(o, n) for o, n in self._area)
        raw += bytes(geo.chunk_bytes - len(raw))
        os.pwrite(self._fd, raw, geo.area_chunk(self._area_no) * geo.chunk_bytes)

    def finish(self) -> None:
        """Write the last area (and the header last of all), then fsync."""
        geo = self.geo
        self._flush()
        if geo.area_chunk(self._area_no) < geo.total_chunks:
            self._write_area()  # a partly filled area, or the zeroed area after a full one
        os.ftruncate(self._fd, geo.size_bytes)
        os.fsync(self._fd)
        header = header_bytes(True, geo.chunk_sectors)
        os.pwrite(self._fd, header + bytes(geo.chunk_bytes - len(header)), 0)
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_store(path: Path, geo: Geometry, chunks: Iterable[tuple[int, bytes]]) -> int:
    """A new store at `path` holding `chunks` (ascending old chunk); returns their count."""
    with StoreWriter(path, geo) as w:
        w.preallocate()
        for old, data in chunks:
            w.add(old, data)
        w.finish()
        return w.count
