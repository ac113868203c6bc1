"""Write persistent snapshot stores offline, laid out the way the kernel writes them.

dm-snap-persistent.c allocates data chunks from next_free = 2, skipping each metadata
area's chunk, appends one exception per allocation to the current area and, when an
area fills, zeroes the next one before going on. Used by unit tests (to build stores
with known contents) and by scripts/bench-refresh (a store as large as a real one
without booting a kernel). Kernel-written stores are in tests/fixtures/cow/.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from liveos_tools.cow import EXCEPTION, Geometry, header_bytes


def write_store(
    path: Path,
    size: int,
    chunks: Iterable[tuple[int, bytes]],
    *,
    chunk_sectors: int = 8,
    valid: bool = True,
) -> list[tuple[int, int]]:
    """Allocate one exception per (old_chunk, data) in order; return the (old, new) table.

    data shorter than a chunk is zero-padded. Raises ValueError when the store is full
    (the kernel's ENOSPC).
    """
    geo = Geometry(chunk_sectors, size)
    cb, epa = geo.chunk_bytes, geo.exceptions_per_area
    table: list[tuple[int, int]] = []
    area_entries: list[tuple[int, int]] = []
    area = 0
    next_free = 2
    with open(path, "wb") as f:
        f.truncate(size)
        f.write(header_bytes(valid, chunk_sectors))
        for old, data in chunks:
            if geo.is_full(next_free):
                raise ValueError(f"store full after {len(table)} exceptions")
            new = next_free
            f.seek(new * cb)
            f.write(data[:cb])
            table.append((old, new))
            area_entries.append((old, new))
            next_free = geo.skip_metadata(next_free + 1)
            if len(area_entries) == epa:
                _write_area(f, geo, area, area_entries)
                area += 1
                area_entries = []
                # The kernel zeroes the next area before it commits into it.
                f.seek(geo.area_chunk(area) * cb)
                f.write(bytes(cb))
        _write_area(f, geo, area, area_entries)
    return table


def _write_area(f: BinaryIO, geo: Geometry, area: int, entries: list[tuple[int, int]]) -> None:
    data = b"".join(EXCEPTION.pack(o, n) for o, n in entries)
    data += bytes(geo.chunk_bytes - len(data))
    f.seek(geo.area_chunk(area) * geo.chunk_bytes)
    f.write(data)


def raw_table(path: Path, entries: list[tuple[int, int]], *, chunk_sectors: int = 8) -> None:
    """Overwrite area 0 with exactly these entries (damaged stores, duplicates)."""
    with open(path, "r+b") as f:
        f.seek(chunk_sectors * 512)
        f.write(b"".join(struct.pack("<QQ", o, n) for o, n in entries))
