"""The BLKSZ field of --overlay-size-mb N,FSTYPE,BLKSZ and --home-size-mb N,FSTYPE,BLKSZ."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from liveos_tools.tools import mtools, parted
from tests.fixtures import isobuild
from tests.root.test_iso_write import blkid_at, write

MIB = 1 << 20
pytestmark = pytest.mark.skipif(
    not (isobuild.GUEST_CACHE / "kver").is_file(),
    reason="no guest kernel to put in the fixture ISOs (run scripts/setup-guest-kernel)",
)


@pytest.fixture(scope="module")
def isos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, isobuild.FixtureIso]:
    d = tmp_path_factory.mktemp("isos")
    return {lay: isobuild.build_iso(d / f"{lay}.iso", lay) for lay in ("classic", "flat")}


def ext_block_size(superblock_area: bytes) -> int:
    assert superblock_area[1024 + 56 : 1024 + 58] == b"\x53\xef"
    return 1024 << struct.unpack_from("<I", superblock_area, 1024 + 24)[0]


def test_overlayfs_image_block_size(isos: dict[str, isobuild.FixtureIso], tmp_path: Path) -> None:
    img = tmp_path / "stick.img"
    res = write(
        "--format",
        "256M,vfat",
        "--overlay-size-mb",
        "32,ext4,2048",
        "--yes",
        str(isos["flat"].path),
        str(img),
    )
    assert res.returncode == 0, res.stderr
    uuid = blkid_at(img, MIB)["UUID"]
    head = b"".join(mtools.read_file(img, MIB, f"LiveOS/overlay-LIVE_TEST-{uuid}", 4096))
    assert ext_block_size(head) == 2048


def test_dm_overlay_notes_that_blksz_does_not_apply(
    isos: dict[str, isobuild.FixtureIso], tmp_path: Path
) -> None:
    res = write(
        "--format",
        "256M,vfat",
        "--overlay-size-mb",
        "16,ext4,1024",
        "--dry-run",
        str(isos["classic"].path),
        str(tmp_path / "x.img"),
    )
    assert res.returncode == 0, res.stderr
    assert "FSTYPE and BLKSZ apply only to an OverlayFS overlay image" in res.stderr


def test_plain_home_block_size(isos: dict[str, isobuild.FixtureIso], tmp_path: Path) -> None:
    img = tmp_path / "stick.img"
    res = write(
        "--format",
        "300M,ext4",
        "--home-size-mb",
        "20,ext4,2048",
        "--unencrypted-home",
        "--yes",
        str(isos["classic"].path),
        str(img),
    )
    assert res.returncode == 0, res.stderr
    part = parted.read_table(img).partitions[0]
    # dumped to a file: debugfs writes unwritten (preallocated) extents as holes, by seeking
    dumped = tmp_path / "home.img"
    subprocess.run(
        ["debugfs", "-R", f"dump /LiveOS/home.img {dumped}", f"{img}?offset={part.start}"],
        capture_output=True,
        check=True,
    )
    out = dumped.read_bytes()
    assert len(out) == 20 * MIB
    assert ext_block_size(out[:4096]) == 2048
    assert out[1024 + 120 : 1024 + 124] == b"HOME"  # the label survives the second mkfs


@pytest.mark.parametrize("spec", ["32,ext4,999", "32,ext4,big", "32,ext4,4096,x"])
def test_bad_block_sizes_are_refused(
    isos: dict[str, isobuild.FixtureIso], tmp_path: Path, spec: str
) -> None:
    img = tmp_path / "x.img"
    res = write(
        "--format",
        "256M,vfat",
        "--overlay-size-mb",
        spec,
        "--yes",
        str(isos["classic"].path),
        str(img),
    )
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("error: ") and "hint: " in res.stderr
    assert "Traceback" not in res.stderr and not img.exists()
