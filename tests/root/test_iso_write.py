"""liveos-iso-to-disk end to end on disk image files: every fixture layout, the common
option sets, and the refusals (which must not change a byte of the target)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from liveos_tools.tools import mtools, parted
from tests.fixtures import isobuild

MIB = 1024 * 1024
PY = sys.executable
CLI = [PY, "-m", "liveos_tools.cli.iso_to_disk"]

pytestmark = pytest.mark.skipif(
    not (isobuild.GUEST_CACHE / "kver").is_file(),
    reason="no guest kernel to put in the fixture ISOs (run scripts/setup-guest-kernel)",
)


@pytest.fixture(scope="module")
def isos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, isobuild.FixtureIso]:
    d = tmp_path_factory.mktemp("isos")
    return {lay: isobuild.build_iso(d / f"{lay}.iso", lay) for lay in isobuild.LAYOUTS}


def write(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300)


def blkid_at(img: Path, offset: int) -> dict[str, str]:
    out = subprocess.run(
        ["blkid", "-p", "-O", str(offset), "-o", "export", str(img)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def fat_sha(img: Path, offset: int, rel: str, size: int) -> str:
    h = hashlib.sha256()
    for chunk in mtools.read_file(img, offset, rel, size):
        h.update(chunk)
    return h.hexdigest()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_classic_vfat_with_overlay(isos: dict[str, isobuild.FixtureIso], tmp_path: Path) -> None:
    iso = isos["classic"]
    img = tmp_path / "stick.img"
    res = write(
        "--format",
        "256M,vfat",
        "--reset-mbr",
        "--overlay-size-mb",
        "64",
        "--yes",
        "--extra-kernel-args",
        "console=ttyS0",
        str(iso.path),
        str(img),
    )
    assert res.returncode == 0, res.stderr
    table = parted.read_table(img)
    assert table.label == "msdos" and len(table.partitions) == 1
    part = table.partitions[0]
    assert part.start == MIB and "boot" in part.flags
    info = blkid_at(img, part.start)
    assert info["TYPE"] == "vfat" and info["LABEL"] == "LIVE_TEST"
    uuid = info["UUID"]
    assert f"UUID={uuid}" in res.stdout
    # files and checksums, read straight from the FAT clusters
    sq = iso.sha256["/LiveOS/squashfs.img"]
    files = set(mtools.listing(img, part.start))
    for rel in (
        "LiveOS/squashfs.img",
        "syslinux/vmlinuz",
        "syslinux/initrd.img",
        "syslinux/syslinux.cfg",
        "syslinux/ldlinux.sys",
        "syslinux/ldlinux.c32",
        "EFI/BOOT/grub.cfg",
        "EFI/BOOT/BOOTX64.EFI",
        "images/efiboot.img",
    ):
        assert rel in files, rel
    from liveos_tools.writer.source import read_iso

    src = read_iso(iso.path)
    assert (
        fat_sha(img, part.start, "LiveOS/squashfs.img", src.files["/LiveOS/squashfs.img"].size)
        == sq
    )
    assert (
        fat_sha(img, part.start, "syslinux/vmlinuz", src.files[iso.kernel_path].size)
        == iso.sha256[iso.kernel_path]
    )
    # the overlay: exactly overlay-<LABEL>-<UUID>, preallocated (all clusters allocated), zeros
    overlay = f"LiveOS/overlay-LIVE_TEST-{uuid}"
    assert overlay in files
    assert mtools.allocated_bytes(img, part.start, overlay) >= 64 * MIB
    head = next(mtools.read_file(img, part.start, overlay, 64 * 1024))
    assert head == bytes(64 * 1024)
    # boot configs carry the boot contract
    cfg = b"".join(mtools.read_file(img, part.start, "syslinux/syslinux.cfg", None)).decode()
    assert (
        f"append initrd=initrd.img root=live:UUID={uuid} rootfstype=vfat rw rd.live.image "
        f"rd.live.overlay=UUID={uuid} quiet rhgb console=ttyS0"
    ) in cfg
    grub = b"".join(mtools.read_file(img, part.start, "EFI/BOOT/grub.cfg", None)).decode()
    assert f"--fs-uuid --set=root {uuid}" in grub and "linux /syslinux/vmlinuz" in grub
    # MBR boot code is syslinux's, and the FAT boot sector knows its partition offset
    with open(img, "rb") as f:
        mbr = f.read(512)
    assert mbr[:440] == Path("/usr/lib/syslinux/mbr/mbr.bin").read_bytes()[:440]
    assert mbr[510:512] == b"\x55\xaa"
    geo = mtools.read_geometry(img, part.start)
    assert geo.uuid == uuid


def test_grub_layout_ext4_home_swap(isos: dict[str, isobuild.FixtureIso], tmp_path: Path) -> None:
    iso = isos["grub"]
    img = tmp_path / "stick.img"
    res = write(
        "--format",
        "400M,ext4",
        "--overlay-size-mb",
        "32",
        "--home-size-mb",
        "40",
        "--unencrypted-home",
        "--swap-size-mb",
        "16",
        "--yes",
        str(iso.path),
        str(img),
    )
    assert res.returncode == 0, res.stderr
    part = parted.read_table(img).partitions[0]
    info = blkid_at(img, part.start)
    assert info["TYPE"] == "ext4" and info["LABEL"] == "LIVE_TEST"
    uuid = info["UUID"]
    loop = subprocess.run(
        [
            "losetup",
            "--find",
            "--show",
            "--read-only",
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
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        subprocess.run(["mount", "-o", "ro,noload", loop, str(mnt)], check=True)
        try:
            assert sha(mnt / "LiveOS/squashfs.img") == iso.sha256["/LiveOS/squashfs.img"]
            assert sha(mnt / "syslinux/vmlinuz") == iso.sha256[iso.kernel_path]
            ov = mnt / "LiveOS" / f"overlay-LIVE_TEST-{uuid}"
            st = ov.stat()
            assert st.st_size == 32 * MIB and st.st_blocks * 512 >= 32 * MIB
            assert (mnt / "syslinux" / "ldlinux.sys").is_file()  # extlinux installed
            conf = (mnt / "syslinux" / "extlinux.conf").read_text()
            assert f"root=live:UUID={uuid} rootfstype=ext4 rw rd.live.image" in conf
            home = mnt / "LiveOS" / "home.img"
            assert home.read_bytes()[1080:1082] == b"\x53\xef"  # plain ext4
            assert (mnt / "LiveOS" / "swap.img").read_bytes()[4086:4096] == b"SWAPSPACE2"
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)


def test_flat_layout_forces_overlayfs(isos: dict[str, isobuild.FixtureIso], tmp_path: Path) -> None:
    img = tmp_path / "stick.img"
    res = write(
        "--format",
        "256M,vfat",
        "--overlay-size-mb",
        "32",
        "--yes",
        str(isos["flat"].path),
        str(img),
    )
    assert res.returncode == 0, res.stderr
    assert "OverlayFS" in res.stderr
    part = parted.read_table(img).partitions[0]
    uuid = blkid_at(img, part.start)["UUID"]
    cfg = b"".join(mtools.read_file(img, part.start, "syslinux/syslinux.cfg", None)).decode()
    assert "rd.live.overlay.overlayfs" in cfg
    # on vfat the OverlayFS overlay is an ext4 image file at the overlay's name
    rel = f"LiveOS/overlay-LIVE_TEST-{uuid}"
    head = b"".join(mtools.read_file(img, part.start, rel, 4096))
    assert head[1080:1082] == b"\x53\xef"


def test_efi_gpt_skipcompress(isos: dict[str, isobuild.FixtureIso], tmp_path: Path) -> None:
    img = tmp_path / "stick.img"
    res = write(
        "--format",
        "300M,vfat",
        "--efi",
        "--skipcompress",
        "--yes",
        str(isos["loader"].path),
        str(img),
    )
    assert res.returncode == 0, res.stderr
    table = parted.read_table(img)
    assert table.label == "gpt" and len(table.partitions) == 2
    esp, live = table.partitions
    assert "boot" in esp.flags and "legacy_boot" in live.flags
    assert blkid_at(img, esp.start)["LABEL"] == "EFI"
    files = mtools.listing(img, live.start)
    assert "LiveOS/rootfs.img" in files and "LiveOS/squashfs.img" not in files
    with open(img, "rb") as f:
        assert f.read(440) == Path("/usr/lib/syslinux/mbr/gptmbr.bin").read_bytes()[:440]


def _hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_refusals_change_nothing(isos: dict[str, isobuild.FixtureIso], tmp_path: Path) -> None:
    iso = str(isos["classic"].path)
    img = tmp_path / "small.img"
    with open(img, "wb") as f:
        f.truncate(64 * MIB)
        f.seek(12345)
        f.write(b"keep me")
    before = _hash(img)
    too_small = write("--format", "--overlay-size-mb", "200", "--yes", iso, str(img))
    assert too_small.returncode == 6, too_small.stderr
    assert too_small.stderr.startswith("error: ") and "Traceback" not in too_small.stderr
    assert "hint: " in too_small.stderr
    # a new 8 GiB image file (--format SIZE on the existing one is its partition's size)
    fat_limit = write(
        "--format", "8G,vfat", "--overlay-size-mb", "4096", "--yes", iso, str(tmp_path / "new.img")
    )
    assert fat_limit.returncode == 6 and "4 GiB" in fat_limit.stderr, fat_limit.stderr
    assert not (tmp_path / "new.img").exists()
    no_fs = write("--overlay-size-mb", "10", iso, str(img))
    assert no_fs.returncode == 4, no_fs.stderr
    big = tmp_path / "big.img"
    with open(big, "wb") as f:
        f.truncate(200 * MIB)
        f.write(b"old data")
    no_yes = subprocess.run(
        [*CLI, "--format", iso, str(big)], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    assert big.read_bytes()[:8] == b"old data"
    assert no_yes.returncode == 9 and "--yes" in no_yes.stderr
    assert _hash(img) == before
    assert img.stat().st_size == 64 * MIB


def test_dry_run_prints_the_plan_and_writes_nothing(
    isos: dict[str, isobuild.FixtureIso], tmp_path: Path
) -> None:
    img = tmp_path / "new.img"
    res = write(
        "--format",
        "256M,vfat",
        "--overlay-size-mb",
        "64",
        "--dry-run",
        str(isos["classic"].path),
        str(img),
    )
    assert res.returncode == 0, res.stderr
    assert not img.exists()
    for text in (
        "msdos partition table",
        "make vfat labelled LIVE_TEST",
        "rd.live.image",
        "overlay-LIVE_TEST-",
        "64 MiB, preallocated",
        "mbr.bin",
    ):
        assert text in res.stderr, text


def test_the_running_system_disk_is_refused(
    isos: dict[str, isobuild.FixtureIso],
) -> None:
    # Found through the mount table; --dry-run too, so nothing could be written anyway.
    from liveos_tools.mounts import mounts

    root = next(m.source for m in mounts() if m.mountpoint == "/")
    if not root.startswith("/dev/") or not os.path.exists(root):
        pytest.skip(f"the root filesystem is not on a block device here ({root})")
    res = write("--format", "--dry-run", "--yes", str(isos["classic"].path), root)
    assert res.returncode == 5, res.stderr
    assert "the disk the running system lives on" in res.stderr


def test_two_targets_in_parallel(isos: dict[str, isobuild.FixtureIso], tmp_path: Path) -> None:
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    res = write(
        "--format",
        "200M,vfat",
        "--overlay-size-mb",
        "16",
        "--yes",
        str(isos["grub"].path),
        str(a),
        "--target",
        str(b),
    )
    assert res.returncode == 0, res.stderr
    assert "TARGET" in res.stderr and res.stderr.count(" ok ") == 2
    ua = blkid_at(a, MIB)["UUID"]
    ub = blkid_at(b, MIB)["UUID"]
    assert ua != ub
    assert f"LiveOS/overlay-LIVE_TEST-{ub}" in mtools.listing(b, MIB)
