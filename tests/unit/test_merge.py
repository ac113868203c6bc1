"""The merged view (liveos_tools/merge.py) on stores with known contents.

Two sources of truth: stores the real kernel wrote (tests/fixtures/cow, made by
scripts/make-cow-fixtures over an all-zero 128 MiB base, every write a chunk of 0x5A),
and stores laid out offline like the kernel does (tests/support/store_writer.py), whose
expected view is computed independently here, chunk by chunk.
The guest test tests/guest/test_merge_kernel.py compares the view with the kernel's
snapshot device itself.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import random
import shutil
from pathlib import Path

import pytest

from liveos_tools.cow import RESET_BYTES, read_store
from liveos_tools.errors import CorruptError, ExitCode
from liveos_tools.merge import MergedView, kernel_lookup
from tests.support.store_writer import raw_table, write_store

MiB = 1024 * 1024
COW = Path(__file__).resolve().parent.parent / "fixtures" / "cow"
FIXTURE_BASE = 128 * MiB
#: The chunks scripts/make-cow-fixtures wrote into each fixture (0x5A each), as
#: the kernel finally holds them (reset-reused: only the 100 after the reset).
FIXTURE_WRITES: dict[str, list[range]] = {
    "fresh-c8": [],
    "used-c8": [range(600)],
    "used-c16": [range(700)],
    "used-c32": [range(1100)],
    "used-c64": [range(2100)],
    "area-boundary-c8": [range(256)],
    "reopened-c8": [range(200), range(2000, 2150)],
    "reset-reused": [range(100)],
    "demo-60pct": [range(4900)],
    "overflow-PO": [],  # as many of 0..999 as fitted: read from the store below
}


def unpack(name: str, tmp_path: Path) -> Path:
    out = tmp_path / f"{name}.cow"
    with gzip.open(COW / f"{name}.cow.gz", "rb") as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return out


def sparse_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            h.update(block)
    return h.hexdigest()


# -- kernel-written stores -------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FIXTURE_WRITES))
def test_kernel_written_fixtures_show_exactly_the_chunks_written(tmp_path: Path, name: str) -> None:
    cow = unpack(name, tmp_path)
    base = sparse_file(tmp_path / "base", FIXTURE_BASE)
    with MergedView(base, cow) as view:
        cb = view.chunk_bytes
        written = {c for r in FIXTURE_WRITES[name] for c in r}
        if name == "overflow-PO":
            written = set(range(read_store(cow).exceptions))
            assert 0 < len(written) < 1000
        assert set(view.exceptions()) == written
        assert view.size_bytes == FIXTURE_BASE
        dest = tmp_path / "merged.img"
        view.write_image(dest)
        with open(dest, "rb") as f:
            data = f.read()
    assert len(data) == FIXTURE_BASE
    pattern = b"\x5a" * cb
    for chunk in range(FIXTURE_BASE // cb):
        piece = data[chunk * cb : (chunk + 1) * cb]
        expected = pattern if chunk in written else bytes(cb)
        assert piece == expected, f"{name}: chunk {chunk}"


def test_reset_store_never_shows_the_stale_areas(tmp_path: Path) -> None:
    cow = unpack("reset-reused", tmp_path)
    # Beyond the reset's 64 KiB, the old use's areas are still full of entries.
    with open(cow, "rb") as f:
        f.seek(RESET_BYTES + 4096)
        assert f.read(4096).strip(b"\0"), "the fixture should carry stale areas"
    base = sparse_file(tmp_path / "base", FIXTURE_BASE)
    with MergedView(base, cow) as view:
        assert sorted(view.exceptions()) == list(range(100))
        assert view.pread(4096, 100 * 4096) == bytes(4096)
        assert view.pread(4096, 99 * 4096) == b"\x5a" * 4096


def test_invalid_store_is_refused_with_exit_10(tmp_path: Path) -> None:
    cow = unpack("invalid-P", tmp_path)
    base = sparse_file(tmp_path / "base", FIXTURE_BASE)
    with pytest.raises(CorruptError) as exc:
        MergedView(base, cow)
    assert exc.value.code == ExitCode.CORRUPT
    assert int(exc.value.code) == 10
    assert "invalid" in exc.value.message
    assert exc.value.hint is not None and "repair" in exc.value.hint


# -- stores laid out offline ------------------------------------------------------------


def _random_base(path: Path, size: int, rng: random.Random, cb: int) -> bytearray:
    """Random chunks, all-zero chunks and real holes, mixed."""
    data = bytearray(size)
    with open(path, "wb") as f:
        f.truncate(size)
        for chunk in range(-(-size // cb)):
            kind = rng.random()
            if kind < 0.3:
                continue  # a hole
            piece = bytes(cb) if kind < 0.4 else rng.randbytes(cb)
            piece = piece[: size - chunk * cb]
            f.seek(chunk * cb)
            f.write(piece)
            data[chunk * cb : chunk * cb + len(piece)] = piece
    return data


@pytest.mark.parametrize("chunk_sectors", [8, 16, 32])
def test_view_matches_a_chunk_by_chunk_model(tmp_path: Path, chunk_sectors: int) -> None:
    rng = random.Random(chunk_sectors)
    cb = chunk_sectors * 512
    per_area = cb // 16
    whole = 2 * per_area + 100
    size = whole * cb + 3 * 512  # a partial last chunk
    base = tmp_path / "base"
    expected = _random_base(base, size, rng, cb)
    olds = [*rng.sample(range(whole), per_area + 200), whole]  # and the partial chunk
    rng.shuffle(olds)
    chunks = []
    for old in olds:
        data = rng.randbytes(cb) if rng.random() < 0.8 else bytes(cb)
        chunks.append((old, data))
        part = data[: max(0, min(cb, size - old * cb))]
        expected[old * cb : old * cb + len(part)] = part
    store_size = (len(olds) + len(olds) // per_area + 8) * cb
    table = write_store(tmp_path / "cow", store_size, chunks, chunk_sectors=chunk_sectors)
    assert len(table) > per_area, "the store must span several areas"

    with MergedView(base, tmp_path / "cow") as view:
        assert view.size_bytes == size
        assert dict(view.exceptions()) == dict(table)
        assert view.pread(size + 10, 0) == bytes(expected)
        for _ in range(200):
            off = rng.randrange(size)
            n = rng.randrange(1, 3 * cb)
            assert view.pread(n, off) == bytes(expected[off : off + n])
        assert view.pread(10, size) == b""
        r = view.reader()
        r.seek(cb + 7)
        assert r.read(100) == bytes(expected[cb + 7 : cb + 107])
        r.seek(-5, os.SEEK_END)
        assert r.read() == bytes(expected[-5:])
        r.seek(0)
        assert sha(r.read()) == sha(bytes(expected))
        seen: list[tuple[int, int]] = []
        view.write_image(tmp_path / "out.img", progress=lambda d, t: seen.append((d, t)))
    assert file_sha(tmp_path / "out.img") == sha(bytes(expected))
    assert seen[-1] == (size, size)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    # apply_to() over a copy of the base, one chunk longer: the same bytes and size.
    applied = tmp_path / "applied.img"
    applied.write_bytes(base.read_bytes() + b"\xee" * cb)
    fd = os.open(applied, os.O_RDWR)
    try:
        with MergedView(base, tmp_path / "cow") as view:
            steps: list[tuple[int, int]] = []
            view.apply_to(fd, progress=lambda d, t: steps.append((d, t)))
    finally:
        os.close(fd)
    assert file_sha(applied) == sha(bytes(expected))
    inside = sum(min(cb, size - o * cb) for o in olds)
    assert steps[-1] == (inside, inside)


def _data_ranges(path: Path) -> list[tuple[int, int]]:
    out = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, end))
            pos = end
    finally:
        os.close(fd)
    return out


def test_write_image_leaves_zero_chunks_as_holes(tmp_path: Path) -> None:
    cb = 4096
    size = 64 * MiB
    base = tmp_path / "base"
    with open(base, "wb") as f:
        f.truncate(size)
        f.seek(10 * MiB)
        f.write(b"\x11" * MiB)  # data in the base...
        f.seek(30 * MiB)
        f.write(bytes(MiB))  # ...and written zeros, not a hole
    first = 10 * MiB // cb
    # Exceptions: zeros over half the base data, and data in a hole of the base.
    chunks = [(first + i, bytes(cb)) for i in range(128)]
    chunks += [(50 * MiB // cb + i, b"\x22" * cb) for i in range(4)]
    write_store(tmp_path / "cow", 4 * MiB, chunks)
    with MergedView(base, tmp_path / "cow") as view:
        view.write_image(tmp_path / "out.img")
    out = tmp_path / "out.img"
    assert out.stat().st_size == size
    assert _data_ranges(out) == [(10 * MiB + MiB // 2, 11 * MiB), (50 * MiB, 50 * MiB + 4 * cb)]
    with open(out, "rb") as f:
        f.seek(10 * MiB)
        assert f.read(MiB) == bytes(MiB // 2) + b"\x11" * (MiB // 2)


def test_new_store_is_the_base(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.write_bytes(random.Random(1).randbytes(MiB))
    cow = sparse_file(tmp_path / "cow", MiB)
    with MergedView(base, cow) as view:
        assert view.exceptions() == {}
        assert view.pread(MiB, 0) == base.read_bytes()


def test_exceptions_past_the_origin_are_loaded_but_never_read(tmp_path: Path) -> None:
    base = sparse_file(tmp_path / "base", 16 * 4096)
    write_store(tmp_path / "cow", MiB, [(3, b"\x33" * 4096), (16, b"\x44" * 4096)])
    with MergedView(base, tmp_path / "cow") as view:
        assert dict(view.exceptions()) == {3: 2, 16: 3}
        data = view.pread(MiB, 0)
        view.write_image(tmp_path / "out.img")
    assert len(data) == 16 * 4096
    assert data == bytes(3 * 4096) + b"\x33" * 4096 + bytes(12 * 4096)
    assert (tmp_path / "out.img").read_bytes() == data
    copy = tmp_path / "copy.img"
    shutil.copyfile(base, copy)
    fd = os.open(copy, os.O_RDWR)
    try:
        with MergedView(base, tmp_path / "cow") as view:
            view.apply_to(fd)
    finally:
        os.close(fd)
    assert copy.read_bytes() == data


def test_base_size_is_counted_in_whole_sectors_like_a_loop_device(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.write_bytes(b"\x01" * 5000)
    cow = sparse_file(tmp_path / "cow", MiB)
    with MergedView(base, cow) as view:
        assert view.size_bytes == 4608
        assert view.pread(9999, 0) == b"\x01" * 4608


# -- duplicate old chunks: dm_insert_exception / dm_lookup_exception ------------------------


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ([(5, 10), (5, 30)], {5: 10}),  # the first entry wins...
        ([(5, 10), (6, 11), (6, 40)], {5: 10, 6: 11}),
        # ...unless a later entry extends an earlier run, which then comes first:
        ([(6, 40), (5, 10), (6, 11)], {5: 10, 6: 11}),
        # the scan stops at the first run past 5, so (5, 11) cannot join (6, 12)
        ([(6, 40), (7, 41), (6, 12), (5, 11)], {5: 11, 6: 40, 7: 41}),
        # a duplicate in another 256-chunk group does not touch this one
        ([(1, 2), (300, 3), (300, 9)], {1: 2, 300: 3}),
    ],
)
def test_duplicates_resolve_like_the_kernel_hash_lists(
    entries: list[tuple[int, int]], expected: dict[int, int]
) -> None:
    assert kernel_lookup(entries) == expected


def test_without_duplicates_every_entry_maps() -> None:
    rng = random.Random(3)
    olds = rng.sample(range(100000), 5000)
    entries = [(o, i + 2) for i, o in enumerate(olds)]
    assert kernel_lookup(entries) == dict(entries)


# -- damaged stores -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "problem"),
    [
        ([(1, 999999)], "past the end"),
        ([(1, 1)], "metadata chunk"),
        ([(1, 2), (2, 2)], "share data chunk"),
    ],
)
def test_corrupt_tables_are_refused(
    tmp_path: Path, entries: list[tuple[int, int]], problem: str
) -> None:
    base = sparse_file(tmp_path / "base", MiB)
    write_store(tmp_path / "cow", MiB, [])
    raw_table(tmp_path / "cow", entries)
    with pytest.raises(CorruptError) as exc:
        MergedView(base, tmp_path / "cow")
    assert problem in exc.value.message
    assert exc.value.hint is not None and "repair" in exc.value.hint


def test_bad_magic_and_short_files_are_refused(tmp_path: Path) -> None:
    base = sparse_file(tmp_path / "base", MiB)
    bad = tmp_path / "bad"
    bad.write_bytes(b"NOPE" + bytes(8188))
    short = tmp_path / "short"
    short.write_bytes(b"SnA")
    for cow, problem in ((bad, "bad magic"), (short, "too short")):
        with pytest.raises(CorruptError) as exc:
            MergedView(base, cow)
        assert exc.value.code == 10
        assert problem in exc.value.message


def test_a_chunk_the_store_file_does_not_hold_is_corrupt(tmp_path: Path) -> None:
    base = sparse_file(tmp_path / "base", MiB)
    write_store(tmp_path / "cow", MiB, [(0, b"\x01" * 4096)])
    with MergedView(base, tmp_path / "cow") as view:
        os.truncate(tmp_path / "cow", 2 * 4096 + 100)  # shrunk under us
        with pytest.raises(CorruptError):
            view.pread(4096, 0)
