"""writer/copy.py: the data path of liveos-iso-to-disk (pieces, segments, per-segment
checksums, written and read back), on plain files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from liveos_tools.errors import CorruptError
from liveos_tools.writer import copy
from liveos_tools.writer.source import SourceFile

MIB = 1024 * 1024


def test_segments_split_pieces_at_segment_boundaries() -> None:
    pieces = [(1000, 5), (2000, 7), (9000, 100)]
    segs = list(copy.segments(pieces, 14, seg=4))
    assert segs == [[(1000, 4)], [(1004, 1), (2000, 3)], [(2003, 4)], [(9000, 2)]]
    with pytest.raises(CorruptError):
        list(copy.segments([(0, 3)], 5, seg=4))


@pytest.mark.parametrize("algorithm", copy.ALGORITHMS)
@pytest.mark.parametrize("checksum", [True, False])
def test_transfer_into_scattered_pieces_and_read_back(
    tmp_path: Path, algorithm: str, checksum: bool
) -> None:
    data = os.urandom(copy.SEGMENT + 3 * MIB + 123)
    src = tmp_path / "src.bin"
    src.write_bytes(b"HEAD" + data)  # the file starts 4 bytes into its backing
    sf = SourceFile("/x.img", len(data), str(src), 4)
    # a fragmented destination, like clusters on a FAT; the last piece is longer than
    # what is left of the file, as a last cluster is
    pieces = [(5 * MIB, 2 * MIB), (1 * MIB, 3 * MIB), (10 * MIB, copy.SEGMENT)]
    dst = tmp_path / "dst.img"
    fd = os.open(dst, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        written = copy.transfer(sf, fd, pieces, checksum=checksum, algorithm=algorithm)
        os.fsync(fd)
        back = copy.read_back(fd, pieces, len(data), "x", algorithm=algorithm)
    finally:
        os.close(fd)
    out = dst.read_bytes()
    got, left = b"", len(data)
    for off, length in pieces:
        got += out[off : off + min(length, left)]
        left -= min(length, left)
    assert got == data
    assert len(out) == 10 * MIB + copy.SEGMENT - (copy.SEGMENT + 5 * MIB - len(data))
    assert back.algorithm == algorithm and back.size == len(data)
    assert len(back.digests) == 2  # one per 16 MiB segment
    if checksum:
        assert written == back and written is not None
        assert written.first_difference(back) is None
        assert written.hexdigest() == back.hexdigest()
    else:
        assert written is None
    # the same bytes fed in any pieces give the same checksum
    h = copy.SegmentHasher(algorithm)
    h.update(data[:7])
    h.update(data[7:])
    assert h.result() == back


def test_first_difference_names_the_segment() -> None:
    a = copy.checksum_of([bytes(copy.SEGMENT * 3)])
    changed = bytearray(copy.SEGMENT * 3)
    changed[copy.SEGMENT * 2 + 5] = 1
    b = copy.checksum_of([bytes(changed)])
    assert a.first_difference(b) == copy.SEGMENT * 2
    short = copy.checksum_of([bytes(copy.SEGMENT)])
    assert a.first_difference(short) == copy.SEGMENT


def test_digests_differ_by_algorithm_and_are_what_the_libraries_say() -> None:
    import hashlib
    import zlib

    import xxhash

    data = b"liveos" * 1000
    assert copy._digest(data, "xxh3") == xxhash.xxh3_128_digest(data)
    assert copy._digest(data, "crc32") == zlib.crc32(data).to_bytes(4, "little")
    assert copy._digest(data, "sha256") == hashlib.sha256(data).digest()
    with pytest.raises(ValueError):
        copy.check_algorithm("md5")
