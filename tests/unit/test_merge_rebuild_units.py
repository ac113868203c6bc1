"""Pure parts of the rebuild pipeline: the squashfs superblock and /proc/PID/io."""

from __future__ import annotations

from pathlib import Path

import pytest

from liveos_tools.errors import CorruptError
from liveos_tools.rebuild import parse_proc_io
from liveos_tools.tools.squashfs import parse_superblock

CAPTURED = (
    Path(__file__).resolve().parent.parent / "fixtures" / "tools" / "squashfs-superblocks.txt"
)


def captured() -> dict[str, bytes]:
    out = {}
    for line in CAPTURED.read_text().splitlines():
        if line and not line.startswith("#"):
            name, hexdata = line.split()
            out[name] = bytes.fromhex(hexdata)
    return out


@pytest.mark.parametrize("name", ["gzip", "lzo", "lz4", "xz", "zstd"])
def test_compressor_from_real_superblocks(name: str) -> None:
    sb = parse_superblock(captured()[name])
    assert sb.compressor == name
    assert sb.block_size == 131072
    assert (sb.major, sb.minor) == (4, 0)
    assert sb.inodes == 2


def test_lzma_id_and_refusals() -> None:
    data = bytearray(captured()["xz"])
    data[20] = 2
    assert parse_superblock(bytes(data)).compressor == "lzma"
    data[20] = 9
    with pytest.raises(CorruptError, match="compression id 9"):
        parse_superblock(bytes(data))
    with pytest.raises(CorruptError, match="not a squashfs"):
        parse_superblock(b"\0" * 96)
    with pytest.raises(CorruptError, match="not a squashfs"):
        parse_superblock(captured()["xz"][:50])


def test_proc_io() -> None:
    text = "rchar: 1234567\nwchar: 42\nsyscr: 9\nread_bytes: 4096\ncancelled_write_bytes: 0\n"
    assert parse_proc_io(text) == {
        "rchar": 1234567,
        "wchar": 42,
        "syscr": 9,
        "read_bytes": 4096,
        "cancelled_write_bytes": 0,
    }
    assert parse_proc_io("") == {}
