"""mkfs.fat inside an image or device, at an offset, with a chosen serial number."""

from __future__ import annotations

from pathlib import Path

from liveos_tools.run import run

SECTOR = 512


def argv(
    device: str | Path,
    offset: int,
    size: int,
    *,
    label: str,
    volume_id: str,
    hidden_sectors: int,
    fat_bits: int = 0,
) -> list[str]:
    """`volume_id` is 8 hex digits (blkid prints it as XXXX-XXXX)."""
    # fat_bits 0 lets mkfs.fat choose: FAT32 below ~512 MiB has too few clusters to be valid.
    bits = ["-F", str(fat_bits)] if fat_bits else []
    return [
        "mkfs.fat",
        *bits,
        "-n",
        label,
        "-i",
        volume_id,
        # hidden sectors = the partition's start: the boot sector syslinux writes uses it.
        "-h",
        str(hidden_sectors),
        "--offset",
        str(offset // SECTOR),
        str(device),
        str(size // 1024),
    ]


def make(
    device: str | Path,
    offset: int,
    size: int,
    *,
    label: str,
    volume_id: str,
    hidden_sectors: int,
    fat_bits: int = 0,
) -> None:
    run(
        argv(
            device,
            offset,
            size,
            label=label,
            volume_id=volume_id,
            hidden_sectors=hidden_sectors,
            fat_bits=fat_bits,
        )
    )


def run_argv(argv: list[str]) -> None:
    """Run an argv made by argv() (the plan shows the same list)."""
    if not argv or argv[0] != "mkfs.fat":
        raise ValueError(f"not a mkfs.fat command: {argv[:1]}")
    run(argv)
