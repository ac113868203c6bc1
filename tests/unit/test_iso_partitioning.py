"""--format's partition plan: alignment, exact sectors, and the read-back comparison."""

from __future__ import annotations

import pytest

from liveos_tools.errors import ExitCode, NoSpaceError
from liveos_tools.tools.parted import (
    ALIGN,
    PartInfo,
    PartSpec,
    TableInfo,
    alignment,
    layout,
    mismatches,
    sectors,
)
from liveos_tools.writer.partition import node_name

MIB = 1024 * 1024
GIB = 1024 * MIB


def test_alignment_is_a_mib_or_a_bigger_optimal_io_size() -> None:
    assert alignment(0) == ALIGN == MIB
    assert alignment(4096) == MIB
    assert alignment(4 * MIB) == 4 * MIB
    assert alignment(33553920) == MIB  # not a whole number of MiB: ignored


def test_layout_starts_on_the_alignment_whatever_the_disk() -> None:
    # 2 GiB disk: p1 at sector 2048 (not 2040, the loop device's 255x2 cylinder)
    placed = layout(2 * GIB, [PartSpec("LIVE", "ext4", None, boot=True)], gpt=False)
    assert placed == [(MIB, 2 * GIB - MIB)]
    assert sectors(*placed[0]) == "sectors 2048-4194303"
    four = layout(2 * GIB, [PartSpec("LIVE", "ext4", None)], gpt=False, align=4 * MIB)
    assert four == [(4 * MIB, 2 * GIB - 4 * MIB)]


def test_layout_gpt_leaves_the_backup_table_and_a_size_leaves_the_rest() -> None:
    placed = layout(
        2 * GIB,
        [PartSpec("EFI", "vfat", 64 * MIB, esp=True), PartSpec("LIVE", "vfat", None)],
        gpt=True,
    )
    assert placed == [(MIB, 64 * MIB), (65 * MIB, 2 * GIB - 66 * MIB)]
    small = layout(2 * GIB, [PartSpec("LIVE", "ext4", 300 * MIB)], gpt=False)
    assert small == [(MIB, 300 * MIB)]


def test_layout_bigger_than_the_disk_is_no_space() -> None:
    with pytest.raises(NoSpaceError) as err:
        layout(512 * MIB, [PartSpec("LIVE", "ext4", 600 * MIB)], gpt=False)
    assert err.value.code is ExitCode.NO_SPACE
    assert "600 MiB" in err.value.message and "511 MiB" in err.value.message


def _table(label: str, *parts: tuple[int, int]) -> TableInfo:
    return TableInfo(
        label,
        2 * GIB,
        tuple(PartInfo(i, s, n, None, None, ()) for i, (s, n) in enumerate(parts, 1)),
    )


def test_mismatches_finds_the_cylinder_snapped_start() -> None:
    planned = [(MIB, 2 * GIB - MIB)]
    assert mismatches(planned, _table("msdos", (MIB, 2 * GIB - MIB)), label="msdos") == []
    # what 0.1 wrote on a loop device: fdisk showed `p1 2040 4194239`
    got = mismatches(planned, _table("msdos", (2040 * 512, 4192200 * 512)), label="msdos")
    assert got == ["partition 1 is at sectors 2040-4194239, planned sectors 2048-4194303"]
    assert mismatches(planned, _table("gpt", (MIB, 2 * GIB - MIB)), label="msdos") == [
        "the table is gpt, not msdos"
    ]
    assert mismatches(planned, _table("msdos"), label="msdos") == ["partition 1 is missing"]
    extra = mismatches(planned, _table("msdos", (MIB, 2 * GIB - MIB), (5, 5)), label="msdos")
    assert extra == ["partition 2 is not in the plan"]


def test_partition_node_names() -> None:
    assert node_name("sdb", 1) == "sdb1"
    assert node_name("loop0", 1) == "loop0p1"
    assert node_name("nvme0n1", 2) == "nvme0n1p2"
    assert node_name("mmcblk0", 1) == "mmcblk0p1"
