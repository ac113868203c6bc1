"""The store reader on hand-made damaged stores and on arbitrary bytes.

Ground truth for healthy stores is the kernel (tests/unit/test_cow_fixtures.py and
tests/guest/test_cow_kernel.py); this file covers what the kernel never writes:
damage, truncation and garbage.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from liveos_tools.cow import (
    MAGIC,
    CowStore,
    Geometry,
    StoreState,
    check_chunk_sectors,
    header_bytes,
    read_store,
)
from liveos_tools.errors import CorruptError, LiveOSError, TargetError

CHUNK = 4096  # chunk size 8 sectors


def store(
    tmp_path: Path,
    size: int,
    *,
    header: bytes | None = None,
    areas: dict[int, list[tuple[int, int]]] | None = None,
    chunk: int = 8,
) -> Path:
    """A store with the given header and exception entries per area."""
    path = tmp_path / "overlay"
    geo = Geometry(chunk, size)
    with open(path, "wb") as f:
        f.truncate(size)
        f.write(header if header is not None else header_bytes(True, chunk))
        for area, entries in (areas or {}).items():
            f.seek(geo.area_chunk(area) * geo.chunk_bytes)
            for old, new in entries:
                f.write(struct.pack("<QQ", old, new))
    return path


def full_area(area: int, stride: int = 257, epa: int = 256) -> list[tuple[int, int]]:
    first = 2 + stride * area
    return [(i, first + i) for i in range(epa)]


def test_geometry_matches_the_kernel_layout() -> None:
    geo = Geometry(8, 8 * 1024 * 1024)
    assert geo.exceptions_per_area == 256
    assert [geo.area_chunk(n) for n in range(3)] == [1, 258, 515]
    assert geo.is_metadata_chunk(258) and not geo.is_metadata_chunk(259)
    assert geo.skip_metadata(258) == 259 and geo.skip_metadata(257) == 257
    assert geo.total_chunks == 2048


def test_all_zero_file_is_new(tmp_path: Path) -> None:
    p = tmp_path / "z"
    p.write_bytes(bytes(1024 * 1024))
    r = read_store(p)
    assert (r.state, r.valid, r.kernel_status()) == (StoreState.NEW, None, "16/2048 16")
    assert r.chunk_size_assumed is True


def test_three_exceptions_in_area_zero(tmp_path: Path) -> None:
    p = store(tmp_path, 8 << 20, areas={0: [(10, 2), (11, 3), (12, 4)]})
    r = read_store(p)
    assert (r.state, r.exceptions, r.next_free, r.kernel_status()) == (
        StoreState.VALID,
        3,
        5,
        "40/16384 16",
    )


def test_full_area_moves_to_next_area_and_skips_its_metadata_chunk(tmp_path: Path) -> None:
    p = store(tmp_path, 8 << 20, areas={0: full_area(0)})
    r = read_store(p)
    # area 0 full, area 1 empty: next_free would land on area 1's chunk (258) and skips it.
    assert (r.exceptions, r.current_area, r.next_free) == (256, 1, 259)
    assert r.kernel_status() == f"{259 * 8}/16384 24"


def test_stale_areas_after_the_first_non_full_one_are_ignored(tmp_path: Path) -> None:
    areas = {0: [(1, 2)], 1: full_area(1), 2: full_area(2)}
    p = store(tmp_path, 8 << 20, areas=areas)
    for full in (False, True):
        r = read_store(p, full=full)
        assert (r.exceptions, r.current_area, r.kernel_status()) == (1, 0, "24/16384 16")


def test_invalid_flag(tmp_path: Path) -> None:
    p = store(tmp_path, 8 << 20, header=header_bytes(False, 8), areas={0: [(1, 2)]})
    r = read_store(p)
    assert (r.state, r.valid, r.kernel_status()) == (StoreState.INVALID, False, "Invalid")
    assert r.exceptions == 1  # still counted, for repair


def test_full_store(tmp_path: Path) -> None:
    # 2 areas' worth of chunks exactly: 1 header + 257 + a metadata chunk + 1 data chunk.
    size = (1 + 257 + 2) * CHUNK
    p = store(tmp_path, size, areas={0: full_area(0), 1: [(999, 259)]})
    r = read_store(p)
    assert r.next_free == 260 and r.state is StoreState.FULL
    assert r.free_chunks == 0


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        (struct.pack("<IIII", 0x12345678, 1, 1, 8), "bad magic"),
        (struct.pack("<IIII", MAGIC, 1, 2, 8), "version 2"),
        (struct.pack("<IIII", MAGIC, 1, 1, 12), "not a power of two"),
        (struct.pack("<IIII", MAGIC, 1, 1, 0), "not a power of two"),
        (struct.pack("<IIII", MAGIC, 1, 1, 1 << 22), "larger than the kernel allows"),
    ],
)
def test_corrupt_headers(tmp_path: Path, header: bytes, problem: str) -> None:
    r = read_store(store(tmp_path, 1 << 20, header=header))
    assert r.state is StoreState.CORRUPT
    assert r.problem is not None and problem in r.problem


@pytest.mark.parametrize(
    ("entries", "problem"),
    [
        ([(1, 2), (2, 99999)], "past the end"),
        ([(1, 2), (2, 258)], "metadata chunk 258"),
        ([(1, 2), (2, 1)], "metadata chunk 1"),
        ([(1, 2), (2, 2)], "share data chunk 2"),
    ],
)
def test_corrupt_exception_tables(
    tmp_path: Path, entries: list[tuple[int, int]], problem: str
) -> None:
    p = store(tmp_path, 8 << 20, areas={0: entries})
    r = read_store(p, full=True)
    assert r.state is StoreState.CORRUPT
    assert r.problem is not None and problem in r.problem
    with CowStore(p) as s, pytest.raises(CorruptError, match=problem):
        list(s.exceptions())


def test_fast_status_reads_one_entry_per_full_area(tmp_path: Path) -> None:
    # A duplicate hidden in the middle of a full area is only found by the full scan.
    areas = {0: full_area(0), 1: [(5, 260), (6, 261)]}
    areas[0][100] = (100, 3)
    p = store(tmp_path, 8 << 20, areas=areas)
    assert read_store(p).state is StoreState.VALID
    assert read_store(p, full=True).state is StoreState.CORRUPT


def test_truncated_and_tiny_files(tmp_path: Path) -> None:
    p = tmp_path / "t"
    p.write_bytes(header_bytes(True, 8)[:10])
    r = read_store(p)
    assert r.state is StoreState.CORRUPT and r.problem and "too short" in r.problem
    p.write_bytes(header_bytes(True, 8) + bytes(4000))
    r = read_store(p)
    assert r.state is StoreState.CORRUPT and r.problem and "too small" in r.problem


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match="no such file"):
        read_store(tmp_path / "nope")
    with pytest.raises(TargetError, match="is a directory"):
        read_store(tmp_path)


def test_check_chunk_sectors() -> None:
    assert [check_chunk_sectors(n) for n in (1, 2, 8, 2048, 1 << 21)] == [None] * 5
    assert check_chunk_sectors(3) and check_chunk_sectors(1 << 22) and check_chunk_sectors(-8)


@settings(
    max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(min_size=0, max_size=64 * 1024), chunk=st.sampled_from([1, 2, 8, 16]))
def test_any_bytes_give_a_report_or_our_error(tmp_path: Path, data: bytes, chunk: int) -> None:
    p = tmp_path / "fuzz"
    # Half the time, start with a valid header so the table walk is exercised too.
    if data[:1] and data[0] & 1:
        data = header_bytes(bool(data[0] & 2), chunk) + data[16:]
    p.write_bytes(data)
    for full in (False, True):
        try:
            r = read_store(p, full=full)
        except LiveOSError:
            continue
        assert r.size_bytes == len(data)
        assert r.state in StoreState
        if r.state is not StoreState.CORRUPT:
            assert r.next_free * r.chunk_sectors == r.sectors_allocated
            assert r.exceptions >= 0


@settings(
    max_examples=100, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    entries=st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)), max_size=600)
)
def test_any_table_gives_a_report(tmp_path: Path, entries: list[tuple[int, int]]) -> None:
    p = tmp_path / "tbl"
    with open(p, "wb") as f:
        f.truncate(4 << 20)
        f.write(header_bytes(True, 8))
        f.seek(CHUNK)
        for old, new in entries:
            f.write(struct.pack("<QQ", old, new))
    r = read_store(p, full=True)
    assert r.state in (StoreState.VALID, StoreState.FULL, StoreState.CORRUPT)
