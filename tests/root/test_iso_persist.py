"""--copy-overlay, --copy-home and --reset-overlay of liveos-iso-to-disk on image files."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from liveos_tools.tools import mtools, parted
from liveos_tools.writer import fatwrite
from tests.fixtures import isobuild
from tests.root.test_iso_write import CLI, blkid_at, write

MIB = 1 << 20
pytestmark = pytest.mark.skipif(
    not (isobuild.GUEST_CACHE / "kver").is_file(),
    reason="no guest kernel to put in the fixture ISOs (run scripts/setup-guest-kernel)",
)


@pytest.fixture(scope="module")
def iso(tmp_path_factory: pytest.TempPathFactory) -> isobuild.FixtureIso:
    return isobuild.build_iso(tmp_path_factory.mktemp("iso") / "classic.iso", "classic")


def fat_bytes(img: Path, rel: str, size: int | None = None) -> bytes:
    part = parted.read_table(img).partitions[-1]
    return b"".join(mtools.read_file(img, part.start, rel, size))


def poke(img: Path, rel: str, at: int, data: bytes) -> None:
    """Write `data` at byte `at` of a FAT file, in its cluster."""
    part = parted.read_table(img).partitions[-1]
    geo = mtools.read_geometry(img, part.start)
    pieces = fatwrite.data_pieces(geo, part.start, mtools.clusters(img, part.start, rel), at + 1)
    for off, length in pieces:
        if at < length:
            with open(img, "r+b") as f:
                f.seek(off + at)
                f.write(data)
            return
        at -= length
    raise AssertionError("offset beyond the file")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def source_stick(iso: isobuild.FixtureIso, tmp_path: Path) -> Iterator[Path]:
    """A used ext4 stick, mounted read-only: an overlay with data, a plain home.img."""
    img = tmp_path / "src.img"
    res = write(
        "--format",
        "300M,ext4",
        "--overlay-size-mb",
        "8",
        "--home-size-mb",
        "20",
        "--unencrypted-home",
        "--yes",
        str(iso.path),
        str(img),
    )
    assert res.returncode == 0, res.stderr
    part = parted.read_table(img).partitions[0]
    loop = subprocess.run(
        [
            "losetup",
            "--find",
            "--show",
            "--offset",
            str(part.start),
            "--sizelimit",
            str(part.length),
            str(img),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    mnt = tmp_path / "src"
    mnt.mkdir()
    try:
        subprocess.run(["mount", loop, str(mnt)], check=True)
        try:
            ov = next((mnt / "LiveOS").glob("overlay-*"))
            with open(ov, "r+b") as f:  # a "used" overlay: header and data
                f.write(b"SnAp\x01\x00\x00\x00\x01\x00\x00\x00\x08\x00\x00\x00")
                f.seek(3 * MIB)
                f.write(b"data written by the live system")
            with open(mnt / "LiveOS" / "home.img", "r+b") as f:
                f.seek(5 * MIB)
                f.write(b"someone's files")
            subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
            yield mnt
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)


def test_copy_overlay_and_home_from_a_stick(source_stick: Path, tmp_path: Path) -> None:
    src_ov = next((source_stick / "LiveOS").glob("overlay-*"))
    new = tmp_path / "new.img"
    res = write(
        "--format",
        "300M,vfat",
        "--copy-overlay",
        "--copy-home",
        "--yes",
        str(source_stick),
        str(new),
    )
    assert res.returncode == 0, res.stderr
    uuid = blkid_at(new, MIB)["UUID"]
    # renamed for the NEW partition, byte for byte the source's overlay and home.img
    rel = f"LiveOS/overlay-LIVE_TEST-{uuid}"
    assert rel in mtools.listing(new, MIB)
    assert src_ov.name != f"overlay-LIVE_TEST-{uuid}"
    got = fat_bytes(new, rel, src_ov.stat().st_size)
    assert hashlib.sha256(got).hexdigest() == sha(src_ov)
    assert got[3 * MIB : 3 * MIB + 9] == b"data writ"
    home = source_stick / "LiveOS" / "home.img"
    assert hashlib.sha256(
        fat_bytes(new, "LiveOS/home.img", home.stat().st_size)
    ).hexdigest() == sha(home)
    cfg = fat_bytes(new, "syslinux/syslinux.cfg").decode()
    assert f"rd.live.overlay=UUID={uuid}" in cfg


def test_copy_overlay_refusals_change_nothing(
    iso: isobuild.FixtureIso, source_stick: Path, tmp_path: Path
) -> None:
    new = tmp_path / "new.img"
    from_iso = write("--format", "300M,vfat", "--copy-overlay", "--yes", str(iso.path), str(new))
    assert from_iso.returncode == 2, from_iso.stderr
    assert "an ISO image has no overlay" in from_iso.stderr and "hint: " in from_iso.stderr
    assert "Traceback" not in from_iso.stderr and not new.exists()
    # a stick whose image differs from the source's: the overlay would be meaningless there
    res = write("--format", "300M,vfat", "--yes", str(source_stick), str(new))
    assert res.returncode == 0, res.stderr
    poke(new, "LiveOS/squashfs.img", 100_000, b"\xff\xfe")
    before = sha(new)
    other = write("--skipcopy", "--copy-overlay", str(source_stick), str(new))
    assert other.returncode == 2, other.stderr
    assert "not the image the source's overlay was made over" in other.stderr
    assert sha(new) == before


def test_copy_overlay_onto_the_same_image_with_skipcopy(source_stick: Path, tmp_path: Path) -> None:
    new = tmp_path / "new.img"
    assert write("--format", "300M,vfat", "--yes", str(source_stick), str(new)).returncode == 0
    res = write("--skipcopy", "--copy-overlay", str(source_stick), str(new))
    assert res.returncode == 0, res.stderr
    assert "same checksum" in res.stderr
    uuid = blkid_at(new, MIB)["UUID"]
    assert fat_bytes(new, f"LiveOS/overlay-LIVE_TEST-{uuid}", 4)[:4] == b"SnAp"


def test_reset_overlay_zeroes_the_head_only(iso: isobuild.FixtureIso, tmp_path: Path) -> None:
    img = tmp_path / "stick.img"
    res = write(
        "--format", "256M,vfat", "--overlay-size-mb", "16", "--yes", str(iso.path), str(img)
    )
    assert res.returncode == 0, res.stderr
    uuid = blkid_at(img, MIB)["UUID"]
    rel = f"LiveOS/overlay-LIVE_TEST-{uuid}"
    poke(img, rel, 0, b"SnAp\x01")
    poke(img, rel, 60_000, b"exceptions")
    poke(img, rel, 2 * MIB, b"chunk data")
    clusters = mtools.clusters(img, MIB, rel)
    res = write("--skipcopy", "--reset-overlay", str(iso.path), str(img))
    assert res.returncode == 0, res.stderr
    data = fat_bytes(img, rel, 16 * MIB)
    assert data[: 64 * 1024] == bytes(64 * 1024)
    assert data[2 * MIB : 2 * MIB + 10] == b"chunk data"
    assert mtools.clusters(img, MIB, rel) == clusters  # the same file, reset in place
    cfg = fat_bytes(img, "syslinux/syslinux.cfg").decode()
    assert f"rd.live.overlay=UUID={uuid}" in cfg  # --reconfig keeps the overlay in use


def test_reset_overlay_without_an_overlay_is_refused(
    iso: isobuild.FixtureIso, tmp_path: Path
) -> None:
    img = tmp_path / "stick.img"
    assert write("--format", "256M,vfat", "--yes", str(iso.path), str(img)).returncode == 0
    before = sha(img)
    res = write("--skipcopy", "--reset-overlay", str(iso.path), str(img))
    assert res.returncode == 2 and "no overlay of its own to reset" in res.stderr
    assert sha(img) == before


def test_replacing_an_existing_overlay_asks_first(iso: isobuild.FixtureIso, tmp_path: Path) -> None:
    img = tmp_path / "stick.img"
    res = write(
        "--format", "256M,vfat", "--overlay-size-mb", "16", "--yes", str(iso.path), str(img)
    )
    assert res.returncode == 0, res.stderr
    before = sha(img)
    again = subprocess.run(
        [*CLI, "--skipcopy", "--overlay-size-mb", "24", str(iso.path), str(img)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert again.returncode == 9, again.stderr
    assert "every change stored in it" in again.stderr
    assert sha(img) == before


def test_copy_overlay_skipcopy_on_ext4_compares_the_image(
    source_stick: Path, tmp_path: Path
) -> None:
    new = tmp_path / "new.img"
    assert write("--format", "300M,ext4", "--yes", str(source_stick), str(new)).returncode == 0
    res = write("--skipcopy", "--copy-overlay", str(source_stick), str(new))
    assert res.returncode == 0, res.stderr
    assert "same checksum" in res.stderr
    # change one byte of the stick's image (found through debugfs, as the writer does)
    from liveos_tools.writer.stick import StickFs, ext_pieces

    part = parted.read_table(new).partitions[0]
    info = blkid_at(new, part.start)
    fs = StickFs(str(new), part.start, part.length, "ext4", info["LABEL"], info["UUID"], False)
    size, pieces = ext_pieces(fs, "LiveOS/squashfs.img")
    assert size == (source_stick / "LiveOS" / "squashfs.img").stat().st_size
    with open(new, "r+b") as f:
        f.seek(pieces[0][0] + 5000)
        old = f.read(1)
        f.seek(pieces[0][0] + 5000)
        f.write(bytes([old[0] ^ 0xFF]))
    before = sha(new)
    other = write("--skipcopy", "--copy-overlay", str(source_stick), str(new))
    assert other.returncode == 2, other.stderr
    assert "not the image the source's overlay was made over" in other.stderr
    assert sha(new) == before
