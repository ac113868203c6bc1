"""The fast FAT writer's pure parts: cluster allocation, FAT chains, directory entries,
segment splitting and per-segment checksums."""

from __future__ import annotations

import struct

import pytest

from liveos_tools.errors import NoSpaceError
from liveos_tools.writer import copy, fatwrite


def fat32(entries: dict[int, int], count: int) -> bytes:
    raw = bytearray(4 * (count + 2))
    struct.pack_into("<II", raw, 0, 0x0FFFFFF8, 0x0FFFFFFF)
    for c, v in entries.items():
        struct.pack_into("<I", raw, 4 * c, v)
    return bytes(raw)


def test_allocate_takes_the_clusters_after_the_first_when_free() -> None:
    fat = fat32({2: 0x0FFFFFFF, 3: 0x0FFFFFFF}, 100)
    assert fatwrite.allocate(fat, 32, 3, 10, 100) == [(3, 12)]
    assert fatwrite.allocate(fat, 32, 3, 1, 100) == [(3, 3)]


def test_allocate_skips_used_clusters_and_wraps() -> None:
    used = {c: 0x0FFFFFFF for c in (2, 5, 6, 7, 98, 99, 100, 101)}
    fat = fat32(used, 100)
    # first=98 is the placeholder; 99..101 are used, so it wraps to 3, 4, then 8...
    runs = fatwrite.allocate(fat, 32, 98, 6, 100)
    assert runs == [(98, 98), (3, 4), (8, 10)]


def test_allocate_refuses_when_full() -> None:
    fat = fat32({c: 0x0FFFFFFF for c in range(2, 100)}, 100)
    with pytest.raises(NoSpaceError, match="free clusters"):
        fatwrite.allocate(fat, 32, 3, 10, 100)


def test_chain_links_runs_and_ends() -> None:
    out = fatwrite.chain([(3, 5), (9, 9)], 32)
    assert out[0] == (3, struct.pack("<III", 4, 5, 9))
    assert out[1] == (9, struct.pack("<I", 0x0FFFFFFF))
    assert fatwrite.chain([(7, 8)], 16) == [(7, struct.pack("<HH", 8, 0xFFFF))]


def dirent(name: bytes, attr: int, cluster: int, size: int) -> bytes:
    e = bytearray(32)
    e[:11] = name.ljust(11)
    e[11] = attr
    struct.pack_into("<H", e, 20, cluster >> 16)
    struct.pack_into("<HI", e, 26, cluster & 0xFFFF, size)
    return bytes(e)


def test_find_dirent_matches_cluster_and_size_only_for_files() -> None:
    data = (
        dirent(b"\xe5OLD    IMG", 0x20, 70000, 1)  # deleted
        + dirent(b"A", 0x0F, 70000, 1)  # long-name slot
        + dirent(b"SUB", 0x10, 70000, 1)  # a directory
        + dirent(b"SQUASHFSIMG", 0x20, 70000, 1)
        + bytes(32)
        + dirent(b"LATER", 0x20, 5, 1)
    )
    assert fatwrite.find_dirent(data, 70000, 1) == 96
    assert fatwrite.find_dirent(data, 70000, 2) is None
    assert fatwrite.find_dirent(data, 5, 1) is None  # after the end marker


def test_segments_split_pieces_in_file_order() -> None:
    segs = list(copy.segments([(1000, 10), (5000, 7)], 15, seg=6))
    assert segs == [[(1000, 6)], [(1006, 4), (5000, 2)], [(5002, 3)]]
    from liveos_tools.errors import CorruptError

    with pytest.raises(CorruptError):
        list(copy.segments([(0, 4)], 10, seg=6))


def test_checksum_names_the_first_differing_segment() -> None:
    h1, h2 = copy.SegmentHasher(), copy.SegmentHasher()
    data = bytearray(3 * copy.SEGMENT + 5)
    h1.update(data)
    data[2 * copy.SEGMENT + 1] = 1
    h2.update(bytes(data[:100]))
    h2.update(bytes(data[100:]))
    a, b = h1.result(), h2.result()
    assert len(a.digests) == 4 and a.size == len(data)
    assert a.first_difference(a) is None
    assert a.first_difference(b) == 2 * copy.SEGMENT
    assert a.hexdigest() != b.hexdigest()


def test_progress_board_sums_targets(capsys: pytest.CaptureFixture[str]) -> None:
    import io

    out = io.StringIO()
    board = copy.Board(out, tty=True)
    board.add(100)
    board.add(300)
    board._last = -1.0
    board.advance(200)
    assert "2 sticks: 200 B / 400 B ( 50%)" in out.getvalue()
