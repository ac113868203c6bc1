"""Check the written stick the way the firmware and dracut will see it.

The files were verified against their sources already; this checks what finds them:
- `blkid -p` on the partition (its node, or its offset in an image) finds the planned
  filesystem type, LABEL and UUID (dracut's root=live:UUID= and the overlay name);
- the overlay is named overlay-<that LABEL>-<that UUID> and is there;
- the partition's boot sector, read from the whole disk where its partition table puts
  it, points at the sector that really holds ldlinux.sys (what SeaBIOS -> MBR -> VBR
  will load), and on a filesystem made by this run its hidden sectors are the
  partition's start.
Any mismatch raises StickCheckError (exit 10): such a stick is never "written".
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from liveos_tools.errors import CorruptError
from liveos_tools.tools import blkid
from liveos_tools.writer import bootsector
from liveos_tools.writer.dest import Dest

SECTOR = bootsector.SECTOR
LDLINUX_HEAD = 64 * 1024  # the patch areas sit in its first few KiB


class StickCheckError(CorruptError):
    pass


@dataclass(frozen=True)
class Expected:
    device: str  # the partition node, or the image/disk holding the filesystem at `offset`
    offset: int
    fstype: str
    label: str
    uuid: str
    disk: str  # what the firmware reads: the whole disk, or the image file
    start: int  # the partition's first byte on `disk` (0: no partition table)
    overlay: str | None  # e.g. LiveOS/overlay-LIVE-1234-ABCD (a file or a directory)
    loader: str | None  # e.g. syslinux/ldlinux.sys; None: no BIOS boot loader installed
    #: hidden sectors must be the partition's start: filesystems this run made. syslinux's
    #: VBR takes the start from the MBR's hand-over (DS:SI) when it gets one, so a user's
    #: existing FAT made with hidden sectors 0 still boots: not refused.
    exact_hidden: bool = True


def _hint(what: str) -> str:
    return (
        f"the stick will not boot as written ({what}); write it again with --format, "
        "and report this with the --debug output"
    )


def read_disk(path: str, offset: int, length: int) -> bytes:
    """Read from the disk itself: clean cached pages of that range are dropped first, so
    a write made through the partition node (another page cache) is seen."""
    fd = os.open(path, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
        data = os.pread(fd, length, offset)
    finally:
        os.close(fd)
    if len(data) != length:
        raise StickCheckError(
            f"{path}: only {len(data)} of {length} bytes at {offset} could be read",
            _hint("the disk is shorter than its table"),
        )
    return data


def check_filesystem(e: Expected) -> dict[str, str]:
    found = blkid.probe(e.device, offset=e.offset)
    where = f"{e.device}" + (f" at byte {e.offset}" if e.offset else "")
    want = {"TYPE": e.fstype, "LABEL": e.label, "UUID": e.uuid}
    wrong = [f"{k} {found.get(k)!r} (planned {v!r})" for k, v in want.items() if found.get(k) != v]
    if wrong:
        raise StickCheckError(
            f"blkid -p on {where} finds " + ", ".join(wrong),
            _hint("dracut looks for the planned UUID and overlay name"),
        )
    return found


def check_overlay(e: Expected, found: dict[str, str], dest: Dest) -> None:
    if e.overlay is None:
        return
    name = f"overlay-{found['LABEL']}-{found['UUID']}"
    if os.path.basename(e.overlay) != name:
        raise StickCheckError(
            f"the overlay is {e.overlay}, but dracut will look for {name}",
            _hint("a misnamed overlay makes dracut wait at the console"),
        )
    if not dest.exists(e.overlay):
        raise StickCheckError(f"{e.overlay} is not on the stick", _hint("no overlay"))


def check_loader(e: Expected, dest: Dest) -> None:
    if e.loader is None:
        return
    head = dest.read_head(e.loader, LDLINUX_HEAD)
    vbr = read_disk(e.disk, e.start, SECTOR)
    try:
        hidden = bootsector.hidden_sectors(vbr)
        pointer = bootsector.sector1_pointer(vbr, head)
    except bootsector.BootSectorError as exc:
        raise StickCheckError(
            f"the boot sector of the partition at sector {e.start // SECTOR} of {e.disk}: {exc}",
            _hint("no boot sector"),
        ) from None
    if e.exact_hidden and hidden != e.start // SECTOR:
        raise StickCheckError(
            f"the boot sector of the partition at sector {e.start // SECTOR} of {e.disk} "
            f"says it starts at sector {hidden}",
            _hint("it would load the wrong sectors"),
        )
    first = read_disk(e.disk, e.start + pointer * SECTOR, SECTOR)
    if first != head[:SECTOR]:
        raise StickCheckError(
            f"the boot sector loads sector {e.start // SECTOR + pointer} of {e.disk}, which "
            "does not "
            f"hold the start of {e.loader}",
            _hint("the BIOS would find no loader"),
        )


def check(e: Expected, dest: Dest) -> None:
    found = check_filesystem(e)
    check_overlay(e, found, dest)
    check_loader(e, dest)
