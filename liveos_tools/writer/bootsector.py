"""The partition's boot sector as the BIOS chain uses it (pure parsers, one patch).

MBR code loads the active partition's first sector (the VBR). syslinux's/extlinux's VBR
loads the first sector of ldlinux.sys from `hidden sectors + sector-1 pointer`: hidden
sectors (BPB offset 0x1C) must be the partition's start on the disk, and the pointer
(where ldlinux.sys's extended patch area says it is in the VBR) must name the sector
that holds ldlinux.sys's first bytes. Layouts from syslinux's libinstaller/syslxint.h.
"""

from __future__ import annotations

import struct

SECTOR = 512
HIDDEN_AT = 0x1C
LDLINUX_MAGIC = 0x3EB202FE
#: struct patch_area: magic, instance, data_sectors, adv_sectors, dwords, checksum,
#: maxtransfer, epaoffset
_PATCH_AREA = struct.Struct("<IIHHIIHH")
#: struct ext_patch_area: advptroffset, diroffset, dirlen, subvoloffset, subvollen,
#: secptroffset, secptrcnt, sect1ptr0, sect1ptr1, raidpatch
_EXT_PATCH_AREA = struct.Struct("<10H")


class BootSectorError(ValueError):
    pass


def hidden_sectors(vbr: bytes) -> int:
    if len(vbr) < SECTOR or vbr[510:512] != b"\x55\xaa":
        raise BootSectorError("no boot sector signature (55 aa)")
    return int(struct.unpack_from("<I", vbr, HIDDEN_AT)[0])


def sector1_pointer(vbr: bytes, ldlinux: bytes) -> int:
    """Where the VBR will load ldlinux.sys from, in sectors from the partition's start."""
    at = ldlinux.find(struct.pack("<I", LDLINUX_MAGIC))
    if at < 0 or at + _PATCH_AREA.size > len(ldlinux):
        raise BootSectorError("ldlinux.sys has no patch area (not syslinux 4 or later?)")
    epa = _PATCH_AREA.unpack_from(ldlinux, at)[7]
    if epa + _EXT_PATCH_AREA.size > len(ldlinux):
        raise BootSectorError("ldlinux.sys's extended patch area is outside the file")
    lo_at, hi_at = _EXT_PATCH_AREA.unpack_from(ldlinux, epa)[7:9]
    if max(lo_at, hi_at) + 4 > SECTOR:
        raise BootSectorError("the sector-1 pointer is outside the boot sector")
    lo = struct.unpack_from("<I", vbr, lo_at)[0]
    hi = struct.unpack_from("<I", vbr, hi_at)[0]
    return int(lo | (hi << 32))


def with_hidden(vbr: bytes, sector: int) -> bytes:
    """The VBR with its hidden-sectors field set (extlinux takes it from the device it
    is installed through, which is 0 for a loop device over an image file)."""
    return vbr[:HIDDEN_AT] + struct.pack("<I", sector) + vbr[HIDDEN_AT + 4 :]
