"""The fast FAT path on real FAT images: files written straight into clusters we
allocate must be what fsck.fat and mtools (independent readers) expect, and the
read-back verification must catch a changed byte."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from liveos_tools.errors import CorruptError
from liveos_tools.tools import mtools
from liveos_tools.writer import dest, fatwrite
from liveos_tools.writer.dest import FatDest
from liveos_tools.writer.source import SourceFile

MIB = 1 << 20


def make_fat(path: Path, size_mib: int, bits: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size_mib * MIB)
    subprocess.run(
        ["mkfs.fat", "-F", str(bits), "-n", "T", str(path)], check=True, capture_output=True
    )


def fsck_clean(path: Path) -> str:
    res = subprocess.run(["fsck.fat", "-n", "-v", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def mtools_bytes(img: Path, rel: str) -> bytes:
    return subprocess.run(
        ["mtype", "-i", str(img), f"::/{rel}"], check=True, capture_output=True
    ).stdout


@pytest.mark.parametrize("bits", [16, 32])
def test_fast_files_are_clean_and_verified(tmp_path: Path, bits: int) -> None:
    img = tmp_path / "fat.img"
    make_fat(img, 300, bits)
    data = os.urandom(37 * MIB + 123)
    src = tmp_path / "src.bin"
    # the source is a byte range inside a bigger file, like a file inside an ISO
    src.write_bytes(b"x" * 4096 + data + b"y" * 100)
    sf = SourceFile("/LiveOS/squashfs.img", len(data), str(src), 4096)
    d = FatDest(str(img), 0, tmp_path)
    d.mkdir("LiveOS")
    d.write_bytes("LiveOS/small.txt", b"before")  # a directory entry before ours
    for checksum in (None, "xxh3"):
        got = d.write_file("LiveOS/squashfs.img", sf, None, checksum=checksum)
        assert (got is not None) == (checksum is not None)
    d.write_zeros("LiveOS/overlay-T-1234", 20 * MIB + 1)
    d.write_bytes("LiveOS/after.txt", b"after")  # mtools still allocates correctly after us
    d.sync()
    out = fsck_clean(img)
    assert "free clusters" not in out.lower() or "wrong" not in out.lower()
    assert mtools_bytes(img, "LiveOS/squashfs.img") == data
    assert mtools_bytes(img, "LiveOS/after.txt") == b"after"
    assert mtools_bytes(img, "LiveOS/small.txt") == b"before"
    ov = mtools_bytes(img, "LiveOS/overlay-T-1234")
    assert len(ov) == 20 * MIB + 1 and ov.count(0) == len(ov)
    assert got is not None
    dest.verify(d, "LiveOS/squashfs.img", got)
    # change one byte in the middle of the file's clusters: verification names where
    geo = mtools.read_geometry(img, 0)
    pieces = fatwrite.data_pieces(geo, 0, mtools.clusters(img, 0, "LiveOS/squashfs.img"), len(data))
    at = 20 * MIB
    for off, length in pieces:
        if at < length:
            with open(img, "r+b") as f:
                f.seek(off + at)
                f.write(bytes([data[20 * MIB] ^ 0xFF]))
            break
        at -= length
    with pytest.raises(CorruptError, match=f"from byte {16 * MIB} "):
        dest.verify(d, "LiveOS/squashfs.img", got)


def test_fat32_free_count_is_kept(tmp_path: Path) -> None:
    img = tmp_path / "fat.img"
    make_fat(img, 300, 32)
    d = FatDest(str(img), 0, tmp_path)
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(9 * MIB))
    d.write_file("big.bin", SourceFile("/big.bin", 9 * MIB, str(src), 0), None, checksum=None)
    before = subprocess.run(["minfo", "-i", str(img)], capture_output=True, text=True).stdout
    # fsck.fat -n reports a wrong free cluster count in FSINFO; it must not
    res = subprocess.run(["fsck.fat", "-n", str(img)], capture_output=True, text=True)
    assert res.returncode == 0 and "Free cluster summary wrong" not in res.stdout, res.stdout
    assert "mkfs.fat" in before
