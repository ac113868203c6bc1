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


def test_direct_reads_are_aligned_and_cover_exactly_the_pieces() -> None:
    # FAT clusters start on 512-byte sectors, not on 4 KiB; the last piece runs past the file
    pieces = [(1536, 5000), (3 * MIB + 512, copy.DIRECT_READ + 7000), (100 * MIB, 9000)]
    size = 5000 + copy.DIRECT_READ + 7000 + 1234
    wanted: list[tuple[int, int]] = []
    for start, span, first, stop in copy._direct_reads(pieces, size):
        assert start % copy.DIRECT_ALIGN == 0 and span % copy.DIRECT_ALIGN == 0
        assert start <= first < stop <= start + span <= start + copy.DIRECT_READ + 4096
        if wanted and wanted[-1][1] == first:
            wanted[-1] = (wanted[-1][0], stop)
        else:
            wanted.append((first, stop))
    assert wanted == [
        (1536, 6536),
        (3 * MIB + 512, 3 * MIB + 512 + copy.DIRECT_READ + 7000),
        (100 * MIB, 100 * MIB + 1234),
    ]
    with pytest.raises(CorruptError):
        list(copy._direct_reads([(0, 4096)], 5000))


def test_read_back_uses_o_direct_and_its_fallback_gives_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(copy.SEGMENT + 5 * MIB + 77)
    dst = tmp_path / "dst.img"
    dst.write_bytes(b"\0" * 1536 + data)
    pieces = [(1536, 3 * MIB), (1536 + 3 * MIB, len(data))]
    expected = copy.checksum_of([data])
    calls: list[int] = []
    direct = copy._direct_read_back

    def spy(*args: object, **kwargs: object) -> copy.Checksum:
        calls.append(1)
        return direct(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(copy, "_direct_read_back", spy)
    fd = os.open(dst, os.O_RDONLY)
    try:
        assert copy.read_back(fd, pieces, len(data), "x") == expected
        # ext4 and xfs take O_DIRECT (tmpfs only from Linux 6.6): then it was used
        assert calls == ([1] if _takes_o_direct(dst) else [])

        def refused(*args: object, **kwargs: object) -> copy.Checksum:
            raise copy._NoDirect

        monkeypatch.setattr(copy, "_direct_read_back", refused)
        assert copy.read_back(fd, pieces, len(data), "x") == expected
        # a changed byte in the second segment is found by both ways of reading
        with open(dst, "r+b") as f:
            f.seek(1536 + copy.SEGMENT + 10)
            f.write(bytes([data[copy.SEGMENT + 10] ^ 1]))
        assert expected.first_difference(copy.read_back(fd, pieces, len(data), "x")) == (
            copy.SEGMENT
        )
        monkeypatch.setattr(copy, "_direct_read_back", direct)
        assert expected.first_difference(copy.read_back(fd, pieces, len(data), "x")) == (
            copy.SEGMENT
        )
    finally:
        os.close(fd)


def _takes_o_direct(path: Path) -> bool:
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_DIRECT))
    except OSError:
        return False
    return True


def test_a_verified_copy_that_fails_stops_its_source_hash(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(4 * MIB))
    sf = SourceFile("/x.img", 4 * MIB, str(src), 0)
    fd = os.open(src, os.O_RDONLY)  # not writable: sendfile fails with EBADF
    try:
        with pytest.raises(OSError):
            copy.transfer(sf, fd, [(0, 4 * MIB)], checksum=True)
    finally:
        os.close(fd)
    assert copy.hash_source(sf, "xxh3") == copy.checksum_of([src.read_bytes()])
