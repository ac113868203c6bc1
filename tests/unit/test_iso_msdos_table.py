"""The msdos table written without libparted into a new image file (tools/parted.py
write_msdos_image): the same 512 bytes libparted writes, read back as planned by
libparted itself, and a table that reads back different is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from liveos_tools.tools import parted
from liveos_tools.tools.parted import PartSpec, TableMismatchError
from liveos_tools.writer.partition import ESP_SIZE

MIB = 1 << 20
ESP = PartSpec("EFI System Partition", "vfat", ESP_SIZE, esp=True)
LAYOUTS = {
    # the writer's msdos layouts (writer/partition.py): LIVE alone, LIVE then the ESP,
    # a --format SIZE smaller than the disk; disks past 1024 cylinders and below
    "vfat rest": (1624, [PartSpec("LIVE", "vfat", None, boot=True)]),
    "ext4 + ESP": (1624, [PartSpec("LIVE", "ext4", 1400 * MIB, boot=True), ESP]),
    "vfat + ESP": (3000, [PartSpec("LIVE", "vfat", 2800 * MIB, boot=True), ESP]),
    "btrfs small": (40, [PartSpec("LIVE", "btrfs", 20 * MIB, boot=True)]),
    "ext2 rest": (64, [PartSpec("LIVE", "ext2", None, boot=True)]),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_the_sector_is_libparteds(tmp_path: Path, name: str) -> None:
    size_mib, specs = LAYOUTS[name]
    placed = parted.layout(size_mib * MIB, specs, gpt=False)
    theirs, ours = tmp_path / "libparted.img", tmp_path / "ours.img"
    for img in (theirs, ours):
        with open(img, "wb") as f:
            f.truncate(size_mib * MIB)
    parted.write_table(theirs, specs, placed, gpt=False)
    table = parted.write_msdos_image(ours, specs, placed)
    want = theirs.read_bytes()[:512]
    got = ours.read_bytes()[:512]
    # libparted puts its own boot code in 0..440; the writer's next step writes
    # syslinux's mbr.bin over either
    assert got[:440] == bytes(440) and want[:440] != bytes(440)
    assert got[444:] == want[444:]  # all but the random disk signature
    # libparted reads back what the plan says, flags included
    back = parted.read_table(ours)
    assert parted.mismatches(placed, back, label="msdos") == []
    assert [p.flags for p in back.partitions] == [("boot",) if s.boot else () for s in specs]
    assert [(p.number, p.start, p.length) for p in table.partitions] == [
        (p.number, p.start, p.length) for p in back.partitions
    ]
    assert ours.stat().st_size == size_mib * MIB  # nothing written past the first sector
    assert ours.read_bytes()[512:] == bytes(size_mib * MIB - 512)


def test_a_table_that_reads_back_different_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    img = tmp_path / "d.img"
    with open(img, "wb") as f:
        f.truncate(64 * MIB)
    specs = [PartSpec("LIVE", "vfat", None, boot=True)]
    placed = parted.layout(64 * MIB, specs, gpt=False)
    real = parted.read_msdos_sector

    def shifted(data: bytes, size: int) -> parted.TableInfo:
        t = real(data, size)
        p = t.partitions[0]
        moved = parted.PartInfo(p.number, p.start - 8 * 512, p.length, None, None, p.flags)
        return parted.TableInfo(t.label, t.size, (moved,))

    monkeypatch.setattr(parted, "read_msdos_sector", shifted)
    with pytest.raises(TableMismatchError, match="partition 1 is at sectors 2040-"):
        parted.write_msdos_image(img, specs, placed)


def test_more_than_four_partitions_or_past_2_tib_is_refused() -> None:
    spec = PartSpec("LIVE", "vfat", MIB)
    with pytest.raises(ValueError):
        parted.msdos_sector([spec] * 5, [(MIB * (i + 1), MIB) for i in range(5)], 1)
    with pytest.raises(ValueError):
        parted.msdos_sector([spec], [(MIB, 1 << 41)], 1)
