"""The boot sector parsers the stick check uses (syslinux's patch-area layout)."""

from __future__ import annotations

import struct

import pytest

from liveos_tools.writer import bootsector


def _ldlinux(sect1ptr0: int, sect1ptr1: int) -> bytes:
    """An ldlinux.sys head: patch area at 24 (as syslinux 6.04 has it), extended patch
    area at 0x1446 naming where the VBR keeps the sector-1 pointer."""
    data = bytearray(8192)
    struct.pack_into(
        "<IIHHIIHH", data, 24, bootsector.LDLINUX_MAGIC, 0, 114, 2, 14592, 0, 127, 0x1446
    )
    struct.pack_into(
        "<10H",
        data,
        0x1446,
        0x16D8,
        0x145C,
        0x100,
        0x155C,
        0x100,
        0x1EE,
        0xC0,
        sect1ptr0,
        sect1ptr1,
        0x1CA,
    )
    return bytes(data)


def _vbr(hidden: int, pointer: int) -> bytes:
    vbr = bytearray(512)
    vbr[510:512] = b"\x55\xaa"
    struct.pack_into("<I", vbr, 0x1C, hidden)
    struct.pack_into("<I", vbr, 0x11A, pointer & 0xFFFFFFFF)
    struct.pack_into("<I", vbr, 0x120, pointer >> 32)
    return bytes(vbr)


def test_hidden_sectors_and_sector1_pointer() -> None:
    vbr = _vbr(2048, 89144)
    assert bootsector.hidden_sectors(vbr) == 2048
    assert bootsector.sector1_pointer(vbr, _ldlinux(0x11A, 0x120)) == 89144
    big = _vbr(0, (1 << 32) + 5)
    assert bootsector.sector1_pointer(big, _ldlinux(0x11A, 0x120)) == (1 << 32) + 5


def test_with_hidden_changes_only_that_field() -> None:
    vbr = _vbr(0, 270336)
    fixed = bootsector.with_hidden(vbr, 2048)
    assert bootsector.hidden_sectors(fixed) == 2048
    assert fixed[:0x1C] == vbr[:0x1C] and fixed[0x20:] == vbr[0x20:]


def test_refusals() -> None:
    with pytest.raises(bootsector.BootSectorError, match="55 aa"):
        bootsector.hidden_sectors(bytes(512))
    with pytest.raises(bootsector.BootSectorError, match="patch area"):
        bootsector.sector1_pointer(_vbr(0, 1), bytes(4096))
    with pytest.raises(bootsector.BootSectorError, match="outside the boot sector"):
        bootsector.sector1_pointer(_vbr(0, 1), _ldlinux(0x200, 0x120))
