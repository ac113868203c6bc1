"""liveos-iso-to-disk into an EXISTING partition, as the Sugar Labs wiki has users run it:

    livecd-iso-to-disk --reset-mbr --overlay-size-mb 300 --home-size-mb 200 \\
        --delete-home --unencrypted-home ISO /dev/sdX1

No --format: the partition keeps its filesystem, UUID and other files; --reset-mbr
writes syslinux's mbr.bin to the PARENT disk; the partition is marked active. The
stick is a disk image with an msdos table and one FAT32 partition made the way a
user's stick would be, attached with `losetup -P`; the tool is given /dev/loopNp1.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from liveos_tools.tools import losetup, mtools
from liveos_tools.writer.source import read_iso
from tests.fixtures import isobuild

MIB = 1024 * 1024
CLI = [sys.executable, "-m", "liveos_tools.cli.iso_to_disk"]
MBR_BIN = Path("/usr/lib/syslinux/mbr/mbr.bin")
USER_FILE = b"my notes, not LiveOS's\n"

pytestmark = pytest.mark.skipif(
    not (isobuild.GUEST_CACHE / "kver").is_file(),
    reason="no guest kernel to put in the fixture ISOs (run scripts/setup-guest-kernel)",
)


@pytest.fixture(scope="module")
def iso(tmp_path_factory: pytest.TempPathFactory) -> isobuild.FixtureIso:
    return isobuild.build_iso(tmp_path_factory.mktemp("iso") / "classic.iso", "classic")


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def make_user_stick(img: Path, label: str, size: int = 512 * MIB) -> None:
    """What a user's stick looks like: msdos table, one FAT32 partition from 1 MiB."""
    with open(img, "xb") as f:
        f.truncate(size)
    subprocess.run(
        [
            "parted",
            "-s",
            str(img),
            "mklabel",
            "msdos",
            "mkpart",
            "primary",
            "fat32",
            "1MiB",
            "100%",
        ],
        check=True,
        capture_output=True,
    )


@contextlib.contextmanager
def attached(img: Path) -> Iterator[tuple[str, str]]:
    """(/dev/loopN, /dev/loopNp1); detached whatever happens."""
    loop = losetup.attach(img, partscan=True)
    try:
        parts = losetup.wait_for_partitions(loop)
        assert parts == [f"{loop}p1"], parts
        yield loop, parts[0]
    finally:
        subprocess.run(["partx", "--delete", loop], capture_output=True, check=False)
        losetup.detach(loop)


def format_partition(part: str, label: str, user_files: dict[str, Path]) -> None:
    subprocess.run(["mkfs.fat", "-F", "32", "-n", label, part], check=True, capture_output=True)
    for rel, host in user_files.items():
        subprocess.run(["mcopy", "-i", part, str(host), f"::{rel}"], check=True)


def flush(*devices: str) -> None:
    """Push the loop devices' page cache into the image file (reads then see every write)."""
    for dev in devices:
        fd = os.open(dev, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def blkid(dev: str) -> dict[str, str]:
    out = run("blkid", "-p", "-o", "value", "-s", "LABEL", dev).stdout.strip()
    uuid = run("blkid", "-p", "-o", "value", "-s", "UUID", dev).stdout.strip()
    return {"LABEL": out, "UUID": uuid}


def fat_sha(part: str, rel: str, size: int | None) -> str:
    h = hashlib.sha256()
    for chunk in mtools.read_file(part, 0, rel, size):
        h.update(chunk)
    return h.hexdigest()


def file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def wiki_command(
    iso: Path, part: str, *extra: str, yes: bool = True
) -> subprocess.CompletedProcess[str]:
    return run(
        *CLI,
        "--reset-mbr",
        "--overlay-size-mb",
        "32",
        "--home-size-mb",
        "16",
        *extra,
        "--unencrypted-home",
        *(["--yes"] if yes else []),
        str(iso),
        part,
    )


def test_wiki_command_into_existing_partition(iso: isobuild.FixtureIso, tmp_path: Path) -> None:
    img = tmp_path / "stick.img"
    make_user_stick(img, "MY STICK")
    notes = tmp_path / "notes.txt"
    notes.write_bytes(USER_FILE)
    with attached(img) as (loop, part):
        format_partition(part, "MY STICK", {"NOTES.TXT": notes})
        before = blkid(part)
        assert before["LABEL"] == "MY STICK"
        uuid = before["UUID"]
        # the stick as it came: no boot code, partition not active
        with open(loop, "rb") as f:
            assert f.read(446 + 1)[446] == 0x00
        res = wiki_command(iso.path, part, "--delete-home")
        assert res.returncode == 0, res.stderr
        # the plan says where the MBR goes: the parent disk, not the partition
        assert f"boot code to the MBR of {loop}" in res.stderr
        assert "relabel 'MY STICK' as 'MY_STICK'" in res.stderr
        flush(part, loop)

        # --reset-mbr: syslinux's mbr.bin on the PARENT disk, the partition active
        with open(loop, "rb") as f:
            mbr = f.read(512)
        assert mbr[:440] == MBR_BIN.read_bytes()[:440]
        assert mbr[446] == 0x80 and mbr[510:512] == b"\x55\xaa"
        assert mbr[446 + 4] == 0x0C  # the partition entry itself is untouched (FAT32 LBA)
        fdisk = run("fdisk", "-l", loop).stdout
        assert f"{part} *" in fdisk, fdisk
        # the FAT boot sector is intact (not overwritten by MBR code) and fsck-clean
        geo = mtools.read_geometry(part, 0)
        assert geo.fat_type == "fat32" and geo.uuid == uuid
        fsck = run("fsck.fat", "-n", part)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr

        # same UUID; the label with a space is relabelled (dracut matches overlay-<LABEL>-
        # <UUID> with blkid's label, and a space cannot be in it), as the reference tool does
        after = blkid(part)
        assert after == {"LABEL": "MY_STICK", "UUID": uuid}
        assert f"{part}: written, UUID={uuid} LABEL=MY_STICK" in res.stdout

        files = set(mtools.listing(part, 0))
        # the user's file is still there, byte for byte
        assert "NOTES.TXT" in files
        assert b"".join(mtools.read_file(part, 0, "NOTES.TXT", len(USER_FILE))) == USER_FILE
        # the live image, as the ISO has it
        src = read_iso(iso.path)
        sq = src.files["/LiveOS/squashfs.img"].size
        assert fat_sha(part, "LiveOS/squashfs.img", sq) == iso.sha256["/LiveOS/squashfs.img"]
        assert (
            fat_sha(part, "syslinux/vmlinuz", src.files[iso.kernel_path].size)
            == (iso.sha256[iso.kernel_path])
        )
        assert {"syslinux/ldlinux.sys", "syslinux/ldlinux.c32", "syslinux/initrd.img"} <= files
        # the boot contract, with the partition's own UUID
        cfg = b"".join(mtools.read_file(part, 0, "syslinux/syslinux.cfg", None)).decode()
        assert (
            f"append initrd=initrd.img root=live:UUID={uuid} rootfstype=vfat rw "
            f"rd.live.image rd.live.overlay=UUID={uuid} quiet rhgb"
        ) in cfg
        grub = b"".join(mtools.read_file(part, 0, "EFI/BOOT/grub.cfg", None)).decode()
        assert f"root=live:UUID={uuid}" in grub
        # the overlay: named after this partition's label and UUID, 32 MiB preallocated zeros
        overlay = f"LiveOS/overlay-MY_STICK-{uuid}"
        assert overlay in files, sorted(files)
        assert [f for f in files if "overlay-" in f] == [overlay]
        assert mtools.allocated_bytes(part, 0, overlay) == 32 * MIB
        assert fat_sha(part, overlay, 32 * MIB) == hashlib.sha256(bytes(32 * MIB)).hexdigest()
        # home.img: plain ext4, 16 MiB
        home = tmp_path / "home.img"
        subprocess.run(["mcopy", "-n", "-i", part, "::LiveOS/home.img", str(home)], check=True)
    assert home.stat().st_size == 16 * MIB
    assert run("blkid", "-p", "-o", "value", "-s", "TYPE", str(home)).stdout.strip() == "ext4"
    fsck_home = run("e2fsck", "-fn", str(home))
    assert fsck_home.returncode == 0, fsck_home.stdout


def test_too_little_free_space_is_refused_before_any_write(
    iso: isobuild.FixtureIso, tmp_path: Path
) -> None:
    img = tmp_path / "stick.img"
    make_user_stick(img, "SOAS", size=256 * MIB)
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(120 * MIB)  # 255 MiB FAT32 - 120 MiB = ~135 MiB free: less than 32 + 16
    try:  # + the image, boot files and the 100 MiB that must stay free
        with attached(img) as (loop, part):
            format_partition(part, "SOAS", {"VIDEO.BIN": big})
            flush(part, loop)
            before = file_sha(img)
            res = wiki_command(iso.path, part, "--delete-home")
            flush(part, loop)
            after = file_sha(img)
    finally:
        big.unlink()
    assert res.returncode == 6, res.stderr
    assert "too little free space" in res.stderr and "hint:" in res.stderr
    assert after == before


def test_existing_home_kept_without_delete_home_replaced_with_it(
    iso: isobuild.FixtureIso, tmp_path: Path
) -> None:
    img = tmp_path / "stick.img"
    make_user_stick(img, "SOAS")

    def home_uuid(part: str) -> str:
        out = tmp_path / "home-copy.img"
        subprocess.run(["mcopy", "-n", "-o", "-i", part, "::LiveOS/home.img", str(out)], check=True)
        uuid = run("blkid", "-p", "-o", "value", "-s", "UUID", str(out)).stdout.strip()
        out.unlink()
        assert uuid
        return uuid

    with attached(img) as (_loop, part):
        format_partition(part, "SOAS", {})
        uuid = blkid(part)["UUID"]
        first = wiki_command(iso.path, part, "--delete-home")
        assert first.returncode == 0, first.stderr
        home1 = home_uuid(part)
        sha1 = fat_sha(part, "LiveOS/home.img", 16 * MIB)

        kept = wiki_command(iso.path, part)  # no --delete-home
        assert kept.returncode == 0, kept.stderr
        assert "LiveOS/home.img exists and is kept" in kept.stderr
        assert home_uuid(part) == home1
        assert fat_sha(part, "LiveOS/home.img", 16 * MIB) == sha1

        # replacing a home.img (and the overlay) destroys files: asked; no terminal: refused
        asked = wiki_command(iso.path, part, "--delete-home", yes=False)
        assert asked.returncode == 9, asked.stderr
        assert "LiveOS/home.img on" in asked.stderr
        assert fat_sha(part, "LiveOS/home.img", 16 * MIB) == sha1

        replaced = wiki_command(iso.path, part, "--delete-home")
        assert replaced.returncode == 0, replaced.stderr
        assert "replace LiveOS/home.img" in replaced.stderr
        assert home_uuid(part) != home1
        # the label had no space: it and the UUID stay as they were, one overlay
        assert blkid(part) == {"LABEL": "SOAS", "UUID": uuid}
        files = mtools.listing(part, 0)
        assert [f for f in files if "overlay-" in f] == [f"LiveOS/overlay-SOAS-{uuid}"]
        fsck = run("fsck.fat", "-n", part)
        assert fsck.returncode == 0, fsck.stdout


def test_wiki_command_into_a_disk_image_file_without_format(
    iso: isobuild.FixtureIso, tmp_path: Path
) -> None:
    """The same stick as an image file (no loop device): the partition is found in its
    table, the FAT is written at its offset, relabelled there (mlabel), the MBR and the
    active flag written into the image itself."""
    img = tmp_path / "stick.img"
    make_user_stick(img, "MY STICK", size=256 * MIB)
    subprocess.run(
        ["mkfs.fat", "-F", "32", "-n", "MY STICK", "--offset", "2048", str(img)],
        check=True,
        capture_output=True,
    )
    uuid = mtools.read_geometry(img, MIB).uuid
    res = wiki_command(iso.path, str(img), "--delete-home")
    assert res.returncode == 0, res.stderr
    with open(img, "rb") as f:
        mbr = f.read(512)
    assert mbr[:440] == MBR_BIN.read_bytes()[:440] and mbr[446] == 0x80
    out = run("blkid", "-p", "-O", str(MIB), "-o", "value", "-s", "LABEL", str(img))
    assert out.stdout.strip() == "MY_STICK"
    assert mtools.read_geometry(img, MIB).uuid == uuid
    files = mtools.listing(img, MIB)
    assert f"LiveOS/overlay-MY_STICK-{uuid}" in files and "LiveOS/home.img" in files
