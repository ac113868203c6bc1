"""livecd-iso-to-disk's --format/--msdos command lines parse with the reference's meaning."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from liveos_tools.cli import iso_to_disk
from liveos_tools.errors import ExitCode, UsageError

MIB = 1024 * 1024


def parse(*argv: str) -> tuple[object, object]:
    args = iso_to_disk.build_parser().parse_args(iso_to_disk._optional_values(list(argv)))
    return args, iso_to_disk.options_from_args(args)


@pytest.fixture()
def files(tmp_path: Path) -> tuple[str, str]:
    iso, disk = tmp_path / "f.iso", tmp_path / "disk.img"
    iso.write_bytes(b"x")
    disk.write_bytes(b"x")
    return str(iso), str(disk)


@pytest.mark.parametrize(
    ("value", "size", "fstype", "blksz"),
    [
        (None, None, "ext4", None),  # bare --format: the reference's default, ext4
        ("vfat", None, "vfat", None),
        ("ext4", None, "ext4", None),
        ("msdos", None, "vfat", None),
        ("ext3,2048", None, "ext3", 2048),
        (",vfat", None, "vfat", None),
        ("300", 300 * MIB, "ext4", None),
        ("300M,ext2,1024", 300 * MIB, "ext2", 1024),
        ("1G,fat32", 1024 * MIB, "vfat", None),
    ],
)
def test_format_values(
    files: tuple[str, str], value: str | None, size: int | None, fstype: str, blksz: int | None
) -> None:
    iso, disk = files
    argv = ["--format", *([value] if value else []), iso, disk]
    args, o = parse(*argv)
    assert (args.source, args.target) == (iso, disk)  # ISO and TARGET not swallowed
    assert (o.format, o.format_size, o.fstype, o.blocksize) == (True, size, fstype, blksz)


def test_msdos_means_a_fat_filesystem_and_msdos_table_the_table(files: tuple[str, str]) -> None:
    iso, disk = files
    _, o = parse("--format", "--msdos", iso, disk)
    assert o.fstype == "vfat" and not o.msdos_table
    _, o = parse("--format", "ext4", "--efi", "--msdos-table", iso, disk)
    assert o.fstype == "ext4" and o.msdos_table and o.efi
    with pytest.raises(UsageError, match="--msdos asks for a FAT"):
        parse("--format", "ext4", "--msdos", iso, disk)


@pytest.mark.parametrize("value", ["xfs", "ntfs,4096", "300M,zfs", "btrfs"])
def test_other_types_are_usage_errors(files: tuple[str, str], value: str) -> None:
    iso, disk = files
    with pytest.raises(UsageError) as err:
        parse("--format", value, iso, disk)
    assert err.value.code is ExitCode.USAGE


def test_bad_type_is_one_line_and_exit_2(files: tuple[str, str]) -> None:
    iso, disk = files
    before = Path(disk).read_bytes()
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "liveos_tools.cli.iso_to_disk",
            "--format",
            "xfs",
            "--yes",
            iso,
            disk,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert lines[0].startswith("error: --format xfs: 'xfs' is not a filesystem"), lines
    assert lines[1].startswith("hint: ") and len(lines) == 2
    assert Path(disk).read_bytes() == before


def test_an_existing_path_is_never_taken_as_the_format_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("vfat").write_bytes(b"x")  # an ISO that happens to be called like a filesystem
    args, o = parse("--format", "vfat", "disk.img")
    assert (args.source, args.target) == ("vfat", "disk.img") and o.fstype == "ext4"
