"""liveos-iso-to-disk --format on real block devices, as a user writes /dev/sdX.

Every --format variant runs on two geometries: a loop device with partition scanning
(`losetup -P`: CHS 255x2, the geometry that put 0.1's p1 at sector 2040) given as
/dev/loopN, and the same kind of disk as an image file. Each stick is checked from
outside the writer: the partition table read back (exact sectors), `blkid -p` on the
partition node (or at its offset in the image), the MBR and the partition's boot sector,
the overlay's name and mode, the copied bytes, and fsck. The host kernel has no vfat:
FAT is read with mtools, blkid -p and fsck.fat in userspace.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from liveos_tools.tools import losetup, mtools, parted
from liveos_tools.writer.source import read_iso
from tests.fixtures import isobuild

MIB = 1024 * 1024
DISK = 400 * MIB
CLI = [sys.executable, "-m", "liveos_tools.cli.iso_to_disk"]
MBR_BIN = Path("/usr/lib/syslinux/mbr/mbr.bin")
GPTMBR_BIN = Path("/usr/lib/syslinux/mbr/gptmbr.bin")
LABEL = "LIVE_TEST"

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        not (isobuild.GUEST_CACHE / "kver").is_file(),
        reason="no guest kernel to put in the fixture ISOs (run scripts/setup-guest-kernel)",
    ),
]


@pytest.fixture(scope="module")
def iso(tmp_path_factory: pytest.TempPathFactory) -> isobuild.FixtureIso:
    return isobuild.build_iso(tmp_path_factory.mktemp("iso") / "classic.iso", "classic")


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        stdin=subprocess.DEVNULL,
        env=env,
    )


@contextlib.contextmanager
def loop_disk(img: Path) -> Iterator[str]:
    """/dev/loopN over `img` with partition scanning; detached whatever happens."""
    loop = losetup.attach(img, partscan=True)
    try:
        yield loop
    finally:
        run("partx", "--delete", loop)
        with contextlib.suppress(Exception):
            losetup.detach(loop)


@contextlib.contextmanager
def target_of(img: Path, geometry: str) -> Iterator[str]:
    if geometry == "image":
        yield str(img)
    else:
        with loop_disk(img) as loop:
            yield loop


def sha256(chunks: Iterator[bytes]) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()


@dataclass(frozen=True)
class Variant:
    args: tuple[str, ...]
    table: str  # msdos or gpt
    fstype: str  # what blkid -p must find on the LiveOS partition
    #: (start, length) in MiB of every partition; "live" names the LiveOS one
    parts: tuple[tuple[int, int], ...]
    live: int  # number of the LiveOS partition
    esp: int | None


VARIANTS = {
    # ,vfat: msdos, one FAT partition from 1 MiB to the end (FAT holds EFI/BOOT itself)
    "vfat": Variant(("--format", ",vfat"), "msdos", "vfat", ((1, 399),), 1, None),
    # bare --format ext4 (livecd-iso-to-disk's spelling): ext4 p1, and an ESP p2 for UEFI
    "ext4": Variant(("--format", "ext4"), "msdos", "ext4", ((1, 335), (336, 64)), 1, 2),
    # --efi: GPT, ESP p1, LiveOS p2 (the backup GPT keeps the last MiB free)
    "efi": Variant(("--format", ",vfat", "--efi"), "gpt", "vfat", ((1, 64), (65, 334)), 2, 1),
    # --msdos: a FAT (msdos) filesystem, as in the reference
    "msdos": Variant(("--format", "--msdos"), "msdos", "vfat", ((1, 399),), 1, None),
    # --format SIZE smaller than the disk: p1 is SIZE, the ESP after it, the rest free
    "size": Variant(("--format", "200M,ext4"), "msdos", "ext4", ((1, 200), (201, 64)), 1, 2),
}


def written_uuid(stdout: str) -> str:
    line = next(ln for ln in stdout.splitlines() if ": written, UUID=" in ln)
    return line.split("UUID=")[1].split()[0]


def check_stick(
    img: Path, target: str, v: Variant, uuid: str, iso: isobuild.FixtureIso, tmp_path: Path
) -> None:
    # the partition table, read back from the disk: exact sectors
    table = parted.read_table(img)
    assert table.label == v.table
    got = [(p.number, p.start, p.length) for p in table.partitions]
    assert got == [(i, s * MIB, n * MIB) for i, (s, n) in enumerate(v.parts, 1)]
    live = table.partitions[v.live - 1]
    assert live.start % MIB == 0 and live.start // 512 != 2040
    # blkid -p: on the partition node of a block device, at the offset in an image file
    if target.startswith("/dev/"):
        node = losetup.wait_for_partitions(target)[v.live - 1]
        found = dict(
            ln.split("=", 1)
            for ln in run("blkid", "-p", "-o", "export", node).stdout.splitlines()
            if "=" in ln
        )
    else:
        found = dict(
            ln.split("=", 1)
            for ln in run(
                "blkid", "-p", "-O", str(live.start), "-o", "export", str(img)
            ).stdout.splitlines()
            if "=" in ln
        )
    assert (found.get("TYPE"), found.get("LABEL"), found.get("UUID")) == (v.fstype, LABEL, uuid)
    if v.esp:
        esp = table.partitions[v.esp - 1]
        assert (
            run(
                "blkid", "-p", "-O", str(esp.start), "-s", "TYPE", "-o", "value", str(img)
            ).stdout.strip()
            == "vfat"
        )
        esp_copy = extract(img, esp.start, esp.length, tmp_path / "esp.img")
        fsck = run("fsck.fat", "-n", str(esp_copy))
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        assert {"EFI/BOOT/grub.cfg", "EFI/BOOT/BOOTX64.EFI"} <= set(mtools.listing(esp_copy, 0))
        esp_copy.unlink()
    # the MBR boot code, and the partition's boot sector: hidden sectors = its start
    with open(img, "rb") as f:
        mbr = f.read(440)
        f.seek(live.start)
        vbr = f.read(512)
    code = (GPTMBR_BIN if v.table == "gpt" else MBR_BIN).read_bytes()[:440]
    assert mbr == code
    assert vbr[510:512] == b"\x55\xaa"
    assert struct.unpack_from("<I", vbr, 0x1C)[0] == live.start // 512
    overlay = f"LiveOS/overlay-{LABEL}-{uuid}"
    sq = iso.sha256["/LiveOS/squashfs.img"]
    sq_size = read_iso(iso.path).files["/LiveOS/squashfs.img"].size
    if v.fstype == "vfat":
        part = extract(img, live.start, live.length, tmp_path / "p.img")
        fsck = run("fsck.fat", "-n", str(part))
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        files = set(mtools.listing(part, 0))
        assert {overlay, "syslinux/ldlinux.sys", "syslinux/syslinux.cfg"} <= files
        assert mtools.allocated_bytes(part, 0, overlay) >= 16 * MIB
        assert sha256(mtools.read_file(part, 0, "LiveOS/squashfs.img", sq_size)) == sq
        part.unlink()
    else:
        where = f"{img}?offset={live.start}"
        fsck = run("e2fsck", "-fn", where)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        stat = run("debugfs", "-R", f"stat /{overlay}", where).stdout
        assert "Mode:  0600" in stat and "Size: 16777216" in stat, stat
        dumped = tmp_path / "squashfs.img"
        run("debugfs", "-R", f"dump /LiveOS/squashfs.img {dumped}", where)
        assert sha256(iter([dumped.read_bytes()])) == sq
        dumped.unlink()
        assert "ldlinux.sys" in run("debugfs", "-R", "ls /syslinux", where).stdout


def extract(img: Path, start: int, length: int, dest: Path) -> Path:
    """A partition's own bytes as a file: fsck.fat and mtools check it there."""
    with open(img, "rb") as src, open(dest, "wb") as dst:
        src.seek(start)
        left = length
        while left:
            chunk = src.read(min(left, 8 * MIB))
            assert chunk, "the image ends inside the partition"
            dst.write(chunk)
            left -= len(chunk)
    return dest


def write_stick(
    iso: isobuild.FixtureIso, target: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run(
        *CLI,
        *args,
        "--reset-mbr",
        "--overlay-size-mb",
        "16",
        "--yes",
        str(iso.path),
        target,
        env=env,
    )


@pytest.mark.parametrize("geometry", ["loop", "image"])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_format_variants(
    iso: isobuild.FixtureIso, tmp_path: Path, name: str, geometry: str
) -> None:
    v = VARIANTS[name]
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(DISK)
    with target_of(img, geometry) as target:
        res = write_stick(iso, target, *v.args)
        assert res.returncode == 0, res.stderr
        uuid = written_uuid(res.stdout)
        check_stick(img, target, v, uuid, iso, tmp_path)


def disk_sha(img: Path) -> str:
    return sha256(iter([img.read_bytes()]))


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith(("error:", "hint:"))]


def test_refusals_on_a_loop_device_change_nothing(iso: isobuild.FixtureIso, tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(DISK)
        f.write(b"the user's old data")
    before = disk_sha(img)
    with loop_disk(img) as loop:
        too_big = write_stick(iso, loop, "--format", "1G,ext4")
        assert too_big.returncode == 6, too_big.stderr
        errs = error_lines(too_big.stderr)
        assert errs[0].startswith("error: the partitions need 1.1 GiB") and len(errs) == 2
        bad_type = write_stick(iso, loop, "--format", "xfs")
        assert bad_type.returncode == 2, bad_type.stderr
        assert error_lines(bad_type.stderr)[0] == (
            "error: --format xfs: 'xfs' is not a filesystem it makes"
        )
        dry = run(*CLI, "--format", "200M,ext4", "--dry-run", str(iso.path), loop)
        assert dry.returncode == 0, dry.stderr
        # the exact sectors of every partition, and the nodes the filesystems go through
        assert "p1 ext4 sectors 2048-411647, p2 vfat (ESP) sectors 411648-542719" in dry.stderr
        assert f"mkfs.ext4 -q -F -L {LABEL} " in dry.stderr
        assert f" -E nodiscard {loop}p1 51200" in dry.stderr
        assert f"--offset 0 {loop}p2 65536" in dry.stderr
    assert disk_sha(img) == before


def test_a_loop_device_without_partition_scanning_is_refused(
    iso: isobuild.FixtureIso, tmp_path: Path
) -> None:
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(DISK)
    before = disk_sha(img)
    loop = losetup.attach(img)
    try:
        res = write_stick(iso, loop, "--format", "ext4")
    finally:
        losetup.detach(loop)
    assert res.returncode == 4, res.stderr
    assert "without partition scanning" in error_lines(res.stderr)[0]
    assert disk_sha(img) == before


def test_a_device_that_vanishes_mid_write(iso: isobuild.FixtureIso, tmp_path: Path) -> None:
    """No real way to unplug a loop device between two steps: a mkfs.ext4 on PATH runs the
    real one, then detaches the disk, as a stick pulled out right after mkfs."""
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(DISK)
    fake = tmp_path / "bin"
    fake.mkdir()
    real = shutil.which("mkfs.ext4")
    with loop_disk(img) as loop:
        (fake / "mkfs.ext4").write_text(
            f'#!/bin/sh\n{real} "$@" || exit $?\npartx --delete {loop}; losetup -d {loop}\n'
        )
        (fake / "mkfs.ext4").chmod(0o755)
        env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}")
        res = write_stick(iso, loop, "--format", "ext4", "--noesp", env=env)
    assert res.returncode == 4, res.stderr
    errs = error_lines(res.stderr)
    assert errs[0].startswith(f"error: {loop}: {loop} vanished during step"), errs
    assert "written" not in res.stdout


def test_a_table_that_reads_back_different_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libparted writes what it is told now; what it did on 0.1's loop devices (p1 at
    2040) is played back by the read-back, to prove the refusal."""
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(DISK)
    specs = [parted.PartSpec("LIVE", "ext4", None, boot=True)]
    placed = parted.layout(DISK, specs, gpt=False)
    real = parted.read_table
    snapped = parted.PartInfo(1, 2040 * 512, placed[0][1] + 8 * 512, "ext4", None, ("boot",))

    def read_back(path: str | Path) -> parted.TableInfo:
        t = real(path)
        return parted.TableInfo(t.label, t.size, (snapped,))

    monkeypatch.setattr(parted, "read_table", read_back)
    with pytest.raises(parted.TableMismatchError) as err:
        parted.write_table(img, specs, placed, gpt=False)
    assert int(err.value.code) == 10
    assert "partition 1 is at sectors 2040-819199, planned sectors 2048-819199" in str(err.value)


def test_the_stick_check_catches_a_filesystem_off_its_partition(
    iso: isobuild.FixtureIso, tmp_path: Path
) -> None:
    """0.1's failure: the table said 2040, the filesystem was at 2048."""
    from liveos_tools.writer import checkstick
    from liveos_tools.writer.dest import FatDest

    img = tmp_path / "disk.img"
    res = run(
        *CLI, "--format", "300M,vfat", "--overlay-size-mb", "16", "--yes", str(iso.path), str(img)
    )
    assert res.returncode == 0, res.stderr
    uuid = written_uuid(res.stdout)
    good = checkstick.Expected(
        str(img),
        MIB,
        "vfat",
        LABEL,
        uuid,
        str(img),
        MIB,
        f"LiveOS/overlay-{LABEL}-{uuid}",
        "syslinux/ldlinux.sys",
    )
    dest = FatDest(str(img), MIB, tmp_path)
    checkstick.check(good, dest)  # what the writer checked, from outside
    wrongs = [
        (dataclasses.replace(good, offset=2040 * 512), "blkid -p on .* finds TYPE None"),
        (
            dataclasses.replace(good, start=2040 * 512),
            "at sector 2040 of .*: no boot sector signature",
        ),
        (dataclasses.replace(good, uuid="1234-ABCD"), "UUID '.*' \\(planned '1234-ABCD'\\)"),
        (dataclasses.replace(good, overlay=f"LiveOS/overlay-LIVE-{uuid}"), "dracut will look for"),
    ]
    for bad, match in wrongs:
        with pytest.raises(checkstick.StickCheckError, match=match):
            checkstick.check(bad, dest)


@pytest.fixture()
def md5_isos(iso: isobuild.FixtureIso, tmp_path: Path) -> tuple[Path, Path]:
    good, bad = tmp_path / "good.iso", tmp_path / "bad.iso"
    shutil.copyfile(iso.path, good)
    assert run("implantisomd5", str(good)).returncode == 0
    shutil.copyfile(good, bad)
    with open(bad, "r+b") as f:  # one byte of file data, inside what the md5 covers
        f.seek(2 * MIB)
        byte = f.read(1)
        f.seek(2 * MIB)
        f.write(bytes([byte[0] ^ 0xFF]))
    return good, bad


def test_source_md5_is_checked_before_writing(
    iso: isobuild.FixtureIso, tmp_path: Path, md5_isos: tuple[Path, Path]
) -> None:
    good, bad = md5_isos
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(DISK)
    before = disk_sha(img)
    with loop_disk(img) as loop:
        res = run(*CLI, "--format", "ext4", "--yes", str(bad), loop)
        assert res.returncode == 10, res.stderr
        assert error_lines(res.stderr)[0] == (
            f"error: {bad}: its implanted md5 does not match its contents (checkisomd5 says "
            "FAIL): the ISO is damaged or incomplete"
        )
        assert disk_sha(img) == before  # refused before the first write
        ok = run(*CLI, "--format", "ext4", "--yes", str(good), loop)
        assert ok.returncode == 0, ok.stderr
        assert f"note: {good}: its implanted md5 checks out" in ok.stderr
        none = run(
            *CLI, "--format", "ext4", "--yes", "--overlay-size-mb", "16", str(iso.path), loop
        )
        assert none.returncode == 0, none.stderr
        assert f"note: {iso.path} has no implanted md5 (implantisomd5): not checked" in (
            none.stderr
        )
        skipped = run(*CLI, "--format", "ext4", "--yes", "--noverify", str(bad), loop)
        assert skipped.returncode == 0, skipped.stderr
        assert "implanted md5" not in skipped.stderr


def test_an_existing_ext4_partition_node(iso: isobuild.FixtureIso, tmp_path: Path) -> None:
    """No --format: /dev/loopNp1 with a user's ext4 (label with a space). extlinux is
    installed through the node itself, so the boot sector knows the partition's start."""
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(DISK)
    assert (
        run(
            "parted",
            "-s",
            str(img),
            "mklabel",
            "msdos",
            "mkpart",
            "primary",
            "ext4",
            "1MiB",
            "100%",
        ).returncode
        == 0
    )
    with loop_disk(img) as loop:
        part = losetup.wait_for_partitions(loop)[0]
        assert run("mkfs.ext4", "-q", "-L", "MY STICK", part).returncode == 0
        res = write_stick(iso, part)
        assert res.returncode == 0, res.stderr
        uuid = written_uuid(res.stdout)
        found = run("blkid", "-p", "-o", "export", part).stdout.splitlines()
        assert "LABEL=MY_STICK" in found and f"UUID={uuid}" in found, found
    with open(img, "rb") as f:
        f.seek(MIB)
        vbr = f.read(512)
    assert struct.unpack_from("<I", vbr, 0x1C)[0] == 2048
    where = f"{img}?offset={MIB}"
    assert (
        "Mode:  0600" in run("debugfs", "-R", f"stat /LiveOS/overlay-MY_STICK-{uuid}", where).stdout
    )


def test_copy_does_not_import_dest() -> None:
    """writer/copy.py <-> writer/dest.py was an import cycle."""
    code = "import sys, liveos_tools.writer.copy; print('liveos_tools.writer.dest' in sys.modules)"
    assert run(sys.executable, "-c", code).stdout.strip() == "False"
