"""`liveos-iso-to-disk --copy-home` from an ISO made by `liveos-overlay remix --clone`
(issue 11, item 3): the ISO's LiveOS/home.img goes onto the stick byte for byte, mode
0600, verified; on an image file and on a partition-scanned loop device (ext4: the host
has no vfat), read back from outside the writer (debugfs, a read-only loop mount); from
the ISO on a block device to a FAT stick (read back with mcopy); from the ISO unpacked
into a directory. Then the refusals, each writing nothing: no home.img in the ISO (exit
4), too little space (exit 6), a home.img already on the stick (kept unless
--delete-home, which is asked: exit 2 / 9), a home.img that is neither LUKS nor a
filesystem (exit 10).

The ISOs are real `remix --clone` outputs of the remix tests' fixture stick."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.root.test_remix_cli import build_stick, remix

MiB = 1 << 20
CLI = [sys.executable, "-m", "liveos_tools.cli.iso_to_disk"]
MARKER = "the teacher's lesson plan 7731\n"
LUKS_HOME = b"LUKS\xba\xbe\x00\x02" + os.urandom(MiB)


@dataclass(frozen=True)
class Isos:
    plain: Path  # --clone of a stick whose home.img is a plain ext4 of 48 MiB
    luks: Path  # --clone of a stick whose home.img is (the header of) a LUKS container
    bare: Path  # no --clone: no home.img
    plain_home: bytes
    work: Path


def _ext4_home(work: Path) -> bytes:
    tree = work / "home-tree" / "liveuser"
    tree.mkdir(parents=True)
    (tree / "lesson.txt").write_text(MARKER)
    img = work / "home.img"
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", "home", "-d", str(tree.parent), str(img), "48M"], check=True
    )
    data = img.read_bytes()
    img.unlink()
    return data


def _remix(work: Path, name: str, home: bytes | None, *clone: str) -> Path:
    d = work / name
    d.mkdir()
    out = work / f"{name}.iso"
    res = remix(build_stick(d, home=home), "-o", out, "--no-seclude", *clone)
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture(scope="module")
def isos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Isos]:
    if os.geteuid() != 0:
        pytest.skip("needs root for loop devices and mounts")
    work = tmp_path_factory.mktemp("clone")
    home = _ext4_home(work)
    yield Isos(
        _remix(work, "plain", home, "--clone"),
        _remix(work, "luks", LUKS_HOME, "--clone"),
        _remix(work, "bare", None),
        home,
        work,
    )


def write(*args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *map(str, args)], capture_output=True, text=True, timeout=300, input=stdin
    )


def iso_file(iso: Path, path: str, dest: Path) -> bytes:
    subprocess.run(
        ["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", path, str(dest)],
        check=True,
        capture_output=True,
    )
    data = dest.read_bytes()
    dest.unlink()
    return data


def part1(img: Path | str) -> int:
    """p1's byte offset, from sfdisk's dump (not from the writer's own reader)."""
    out = subprocess.run(
        ["sfdisk", "-d", str(img)], capture_output=True, text=True, check=True
    ).stdout
    line = next(
        x for x in out.splitlines() if x.lstrip().startswith(("/", str(img))) and "start=" in x
    )
    return int(line.split("start=")[1].split(",")[0]) * 512


def debugfs(where: str, cmd: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["debugfs", "-R", cmd, where], capture_output=True, check=True)


def stick_home(where: str, dump_to: Path) -> tuple[bytes | None, str]:
    """(home.img's bytes or None, its mode as debugfs shows it) on an unmounted ext4."""
    stat = debugfs(where, "stat /LiveOS/home.img").stdout.decode()
    if "Mode:" not in stat:
        return None, ""
    mode = stat.split("Mode:")[1].split()[0]
    debugfs(where, f"dump /LiveOS/home.img {dump_to}")
    data = dump_to.read_bytes()
    dump_to.unlink()
    return data, mode


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_clone_iso_to_an_image_file(isos: Isos, tmp_path: Path) -> None:
    img = tmp_path / "stick.img"
    res = write("--format", "256M,ext4", "--copy-home", "--yes", isos.plain, img)
    assert res.returncode == 0, res.stderr
    expected = iso_file(isos.plain, "/LiveOS/home.img", tmp_path / "x")
    assert expected == isos.plain_home
    where = f"{img}?offset={part1(img)}"
    data, mode = stick_home(where, tmp_path / "dump")
    assert data == expected and mode == "0600"
    # the filesystem inside is intact: its file reads back
    home = tmp_path / "home.img"
    home.write_bytes(data)
    fsck = subprocess.run(["e2fsck", "-fn", str(home)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout
    assert debugfs(str(home), "cat /liveuser/lesson.txt").stdout.decode() == MARKER
    assert "is encrypted" not in res.stderr  # plain: no passphrase note
    assert subprocess.run(["e2fsck", "-fn", where], capture_output=True).returncode == 0

    # written again: the stick's home.img is kept (refused, exit 2) unless --delete-home
    before = sha(img)
    res = write("--copy-home", "--yes", isos.luks, img)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("error:") == 1 and "already has LiveOS/home.img" in res.stderr
    assert "--delete-home" in res.stderr and "Traceback" not in res.stderr
    assert sha(img) == before
    # --delete-home is asked: no terminal to ask on -> aborted, exit 9, nothing changed
    res = write("--copy-home", "--delete-home", isos.luks, img, stdin="y\n")
    assert res.returncode == 9, res.stderr
    assert sha(img) == before
    res = write("--copy-home", "--delete-home", "--dry-run", isos.luks, img)
    assert res.returncode == 0, res.stderr
    assert "LiveOS/home.img on" in res.stderr and "every file in it" in res.stderr
    assert sha(img) == before

    # replaced from the directory the LUKS ISO was unpacked into (SOURCE a directory)
    unpacked = tmp_path / "unpacked"
    subprocess.run(
        ["xorriso", "-osirrox", "on", "-indev", str(isos.luks), "-extract", "/", str(unpacked)],
        check=True,
        capture_output=True,
    )
    home = unpacked / "LiveOS" / "home.img"
    home.chmod(0o644)
    home.write_bytes(b"\x00" * 4096 + os.urandom(MiB))  # neither LUKS nor a filesystem
    res = write("--copy-home", "--delete-home", "--yes", unpacked, img)
    assert res.returncode == 10, res.stderr
    assert res.stderr.count("error:") == 1 and "neither a LUKS container nor" in res.stderr
    assert sha(img) == before
    home.write_bytes(LUKS_HOME)
    res = write("--copy-home", "--delete-home", "--yes", unpacked, img)
    assert res.returncode == 0, res.stderr
    assert "same passphrase" in res.stderr
    data, mode = stick_home(where, tmp_path / "dump")
    assert data == LUKS_HOME and mode == "0600"
    listing = debugfs(where, "ls -l /LiveOS").stdout.decode()
    assert ".home.img.partial" not in listing


def test_clone_iso_to_a_loop_device(isos: Isos, tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(256 * MiB)
    loop = subprocess.run(
        ["losetup", "-f", "--show", "-P", str(disk)], capture_output=True, text=True, check=True
    ).stdout.strip()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        res = write("--format", ",ext4", "--copy-home", "--yes", isos.luks, loop)
        assert res.returncode == 0, res.stderr
        assert "same passphrase" in res.stderr and "master key" in res.stderr
        subprocess.run(["mount", "-o", "ro", f"{loop}p1", str(mnt)], check=True)
        try:
            home = mnt / "LiveOS" / "home.img"
            st = home.stat()
            assert (st.st_mode & 0o777, st.st_uid) == (0o600, 0)
            assert home.read_bytes() == LUKS_HOME
            assert home.read_bytes() == iso_file(isos.luks, "/LiveOS/home.img", tmp_path / "x")
            assert st.st_blocks * 512 >= len(LUKS_HOME)  # allocated, not sparse
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)


def test_dry_run_shows_the_copy_and_writes_nothing(isos: Isos, tmp_path: Path) -> None:
    img = tmp_path / "stick.img"
    res = write("--format", "256M,ext4", "--copy-home", "--dry-run", isos.plain, img)
    assert res.returncode == 0, res.stderr
    step = next(x for x in res.stderr.splitlines() if "copy /LiveOS/home.img" in x)
    assert "48 MiB" in step and "to LiveOS/home.img" in step and "mode 0600" in step
    assert "verified" in step
    assert not img.exists()
    # an ISO that carries home.img, written without --copy-home: said, not copied
    res = write("--format", "256M,ext4", "--dry-run", isos.plain, img)
    assert res.returncode == 0, res.stderr
    assert "add --copy-home" in res.stderr and "copy /LiveOS/home.img" not in res.stderr


def test_no_home_img_in_the_iso(isos: Isos, tmp_path: Path) -> None:
    img = tmp_path / "stick.img"
    with open(img, "wb") as f:
        f.truncate(200 * MiB)
    res = write("--format", "--copy-home", "--yes", isos.bare, img)
    assert res.returncode == 4, res.stderr
    errors = [x for x in res.stderr.splitlines() if x.startswith("error:")]
    assert errors == [f"error: --copy-home: {isos.bare} has no /LiveOS/home.img"]
    assert "Traceback" not in res.stderr
    with open(img, "rb") as f:  # still all zeros: nothing written
        assert f.read(2 * MiB).count(0) == 2 * MiB
    assert img.stat().st_blocks == 0


def test_too_little_space_for_the_home_img(isos: Isos, tmp_path: Path) -> None:
    img = tmp_path / "stick.img"
    res = write("--format", "200M,ext4", "--copy-home", "--yes", isos.plain, img)
    assert res.returncode == 6, res.stderr
    assert res.stderr.count("error:") == 1 and "home 48 MiB" in res.stderr
    assert not img.exists()
    # the same stick without the home.img fits: the 48 MiB are what did not
    res = write("--format", "200M,ext4", "--dry-run", isos.plain, img)
    assert res.returncode == 0, res.stderr


def test_iso_on_a_device_to_a_fat_stick(isos: Isos, tmp_path: Path) -> None:
    """SOURCE as a block device holding the ISO (a burnt DVD, a `dd`'d stick), written to
    a FAT stick (mtools: no kernel vfat needed)."""
    src = subprocess.run(
        ["losetup", "-f", "--show", "-r", str(isos.plain)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    img = tmp_path / "stick.img"
    try:
        res = write("--format", "256M,vfat", "--copy-home", "--yes", src, img)
    finally:
        subprocess.run(["losetup", "-d", src], check=True)
    assert res.returncode == 0, res.stderr
    got = tmp_path / "fat-home.img"
    subprocess.run(
        ["mcopy", "-n", "-i", f"{img}@@{part1(img)}", "::/LiveOS/home.img", str(got)], check=True
    )
    assert got.read_bytes() == isos.plain_home
    got.unlink()
