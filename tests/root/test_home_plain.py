"""home.img on the host: the plain (unencrypted) cycle on real loop-mounted sticks.

Files inside home.img are written and read with debugfs, so home.img itself is
never mounted; the sticks that hold it are real ext4 and ext2 filesystems on loop
devices. LUKS and vfat sticks need the guest kernel: tests/guest/test_home_guest.py.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from liveos_tools.errors import ExitCode
from tests.support.shell import MiB, cli, sh

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for loop devices and mounts"),
]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def make_stick(tmp_path: Path) -> Iterator[object]:
    """make_stick(name, fstype) -> mount point of a fresh loop-mounted stick with LiveOS/."""
    loops: list[str] = []
    mounted: list[Path] = []

    def make(name: str, fstype: str, size: int = 400 * MiB) -> Path:
        image = tmp_path / f"{name}.img"
        with image.open("wb") as f:
            f.truncate(size)
        sh(f"mkfs.{fstype}", "-q", "-F", str(image))
        loop = sh("losetup", "--find", "--show", str(image)).strip()
        loops.append(loop)
        where = tmp_path / name
        where.mkdir()
        sh("mount", "-t", fstype, loop, str(where))
        mounted.append(where)
        (where / "LiveOS").mkdir()
        (where / "LiveOS" / "squashfs.img").write_bytes(b"")
        return where

    try:
        yield make
    finally:
        for where in reversed(mounted):
            subprocess.run(["umount", str(where)], check=False)
        for loop in loops:
            subprocess.run(["losetup", "--detach", loop], check=False)


def put_files(img: Path, files: dict[str, bytes], scratch: Path) -> None:
    for name, data in files.items():
        src = scratch / f"src-{name}"
        src.write_bytes(data)
        sh("debugfs", "-w", "-R", f"write {src} {name}", str(img))


def read_file(img: Path, name: str) -> bytes:
    return subprocess.run(
        ["debugfs", "-R", f"cat /{name}", str(img)], check=True, capture_output=True
    ).stdout


def assert_files(img: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        assert read_file(img, name) == data, f"{name} changed in {img}"
    assert subprocess.run(["e2fsck", "-f", "-n", str(img)], capture_output=True).returncode == 0


def fs_blocks(img: Path) -> tuple[int, int, str]:
    out = sh("dumpe2fs", "-h", str(img))
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return (
        int(fields["Block count"]),
        int(fields["Block size"]),
        fields["Filesystem volume name"].strip(),
    )


def test_plain_cycle_create_grow_shrink_copy_check(
    make_stick: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = make_stick("a", "ext4")  # type: ignore[operator]
    b = make_stick("b", "ext2")  # type: ignore[operator]
    img = a / "LiveOS" / "home.img"

    assert cli("home", "create", str(a), "--size", "96M", "--no-encrypt", "--yes") == 0
    st = img.stat()
    assert st.st_size == 96 * MiB
    assert st.st_mode & 0o777 == 0o600
    assert st.st_blocks * 512 >= 96 * MiB  # preallocated, not sparse
    blocks, bsize, label = fs_blocks(img)
    assert (blocks * bsize, label) == (96 * MiB, "HOME")
    assert not (a / "LiveOS" / ".home.img.partial").exists()

    files = {"notes.txt": b"my homework\n" * 100, "big.bin": os.urandom(20 * MiB)}
    put_files(img, files, tmp_path)
    assert_files(img, files)

    assert cli("home", "resize", str(a), "--by", "64M", "--yes") == 0
    assert img.stat().st_size == 160 * MiB
    blocks, bsize, _ = fs_blocks(img)
    assert blocks * bsize == 160 * MiB
    assert_files(img, files)

    assert cli("home", "resize", str(a), "--to", "64M", "--yes") == 0
    assert img.stat().st_size == 64 * MiB
    blocks, bsize, _ = fs_blocks(img)
    assert blocks * bsize == 64 * MiB
    assert_files(img, files)

    # Shrinking below the data is refused, and nothing changes.
    before = sha(img)
    capsys.readouterr()
    assert cli("home", "resize", str(a), "--to", "20M", "--yes") == ExitCode.NO_SPACE
    err = capsys.readouterr().err
    assert err.startswith("error: cannot shrink") and "\nhint: " in err
    assert err.count("\n") == 2  # one error line, one hint line, no traceback
    assert sha(img) == before and img.stat().st_size == 64 * MiB

    # To a stick of another filesystem, then check it there.
    assert cli("home", "copy", str(a), str(b), "--yes") == 0
    copied = b / "LiveOS" / "home.img"
    assert sha(copied) == before
    assert copied.stat().st_blocks * 512 >= 64 * MiB
    assert_files(copied, files)
    capsys.readouterr()
    assert cli("home", "check", str(b)) == 0
    out = capsys.readouterr().out
    assert "Kind      plain, 64 MiB" in out and "e2fsck -n clean" in out

    # A second copy onto it is refused without --delete-home; with it, it replaces.
    assert cli("home", "copy", str(a), str(b), "--yes") == ExitCode.USAGE
    backup = tmp_path / "home-backup.img"
    assert cli("home", "copy", str(b), str(backup)) == 0
    assert sha(backup) == before
    assert backup.stat().st_blocks * 512 < 64 * MiB  # a backup file stays sparse
    assert cli("home", "copy", str(backup), str(b), "--delete-home", "--yes") == 0
    assert sha(copied) == before


def test_refuses_in_use_and_corrupt_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    img = tmp_path / "home.img"
    assert cli("home", "create", str(img), "--size", "40M", "--no-encrypt") == 0
    put_files(img, {"a.txt": b"hello"}, tmp_path)
    before = sha(img)

    loop = sh("losetup", "--find", "--show", "--read-only", str(img)).strip()
    try:
        capsys.readouterr()
        assert cli("home", "resize", str(img), "--by", "8M", "--yes") == ExitCode.IN_USE
        assert f"attached to {loop}" in capsys.readouterr().err
        assert cli("home", "check", str(img)) == ExitCode.IN_USE
        assert cli("home", "copy", str(img), str(tmp_path / "b.img")) == ExitCode.IN_USE
        assert not (tmp_path / "b.img").exists()
    finally:
        sh("losetup", "--detach", loop)
    assert sha(img) == before

    # A damaged filesystem: check reports it, resize refuses it, nothing is written.
    sh("debugfs", "-w", "-R", "set_inode_field /a.txt links_count 7", str(img))
    damaged = sha(img)
    capsys.readouterr()
    assert cli("home", "check", str(img)) == ExitCode.CORRUPT
    out, err = capsys.readouterr()
    assert "errors (e2fsck exit 4)" in out
    assert err.startswith("error: the filesystem in")
    assert cli("home", "resize", str(img), "--by", "8M", "--yes") == ExitCode.CORRUPT
    assert "has errors" in capsys.readouterr().err
    assert sha(img) == damaged and img.stat().st_size == 40 * MiB

    # Not a home image at all.
    junk = tmp_path / "junk.img"
    junk.write_bytes(os.urandom(MiB))
    assert cli("home", "resize", str(junk), "--by", "8M", "--yes") == ExitCode.CORRUPT
    assert cli("home", "check", str(junk)) == ExitCode.CORRUPT


def test_dry_run_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = tmp_path / "home.img"
    assert cli("home", "create", str(img), "--size", "40M", "--no-encrypt", "--dry-run") == 0
    assert list(tmp_path.iterdir()) == []
    assert cli("home", "create", str(img), "--size", "40M", "--no-encrypt") == 0
    before = sha(img)
    capsys.readouterr()
    assert cli("home", "resize", str(img), "--by", "16M", "--dry-run") == 0
    assert "grow the filesystem to 56 MiB" in capsys.readouterr().err
    assert cli("home", "copy", str(img), str(tmp_path / "c.img"), "--dry-run") == 0
    assert cli("swap", "create", str(tmp_path / "swap.img"), "--size", "8M", "--dry-run") == 0
    assert sha(img) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home.img"]


def test_swap_create_and_remove(tmp_path: Path) -> None:
    ldir = tmp_path / "LiveOS"
    ldir.mkdir()
    (ldir / "squashfs.img").write_bytes(b"")
    assert cli("swap", "create", str(tmp_path), "--size", "16M") == 0
    swap = ldir / "swap.img"
    st = swap.stat()
    assert (st.st_size, st.st_mode & 0o777) == (16 * MiB, 0o600)
    assert st.st_blocks * 512 >= 16 * MiB  # no holes: swapon refuses them
    assert "TYPE=swap" in sh("blkid", "-p", "-o", "export", str(swap))
    assert cli("swap", "create", str(tmp_path), "--size", "16M") == ExitCode.USAGE
    assert cli("swap", "remove", str(tmp_path)) == ExitCode.ABORTED  # no terminal, no --yes
    assert swap.exists()
    assert cli("swap", "remove", str(tmp_path), "--yes") == 0
    assert not swap.exists()
    assert cli("swap", "remove", str(tmp_path), "--yes") == ExitCode.BAD_TARGET


_COPY = """
import sys
from liveos_tools.cli.main import main
sys.exit(main(["home", "copy", sys.argv[1], sys.argv[2], "--delete-home", "--yes"]))
"""


def _kill_mid_copy(src: Path, dest: Path) -> None:
    partial = dest.with_name(f".{dest.name}.partial")
    proc = subprocess.Popen([sys.executable, "-c", _COPY, str(src), str(dest)])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if partial.exists() and partial.stat().st_blocks * 512 > 8 * MiB:
                break
            if proc.poll() is not None:
                pytest.fail(f"the copy finished (exit {proc.returncode}) before it was killed")
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def test_copy_killed_leaves_old_file_or_nothing(tmp_path: Path) -> None:
    src = tmp_path / "home.img"
    assert cli("home", "create", str(src), "--size", "400M", "--no-encrypt") == 0
    # Enough real data that the copy takes long enough to be killed half-way.
    with open(src, "r+b") as f:
        for i in range(0, 380, 4):
            f.seek((i + 8) * MiB)
            f.write(os.urandom(4 * MiB))
    backups = tmp_path / "backups"
    backups.mkdir()

    fresh = backups / "none-yet.img"
    _kill_mid_copy(src, fresh)
    assert not fresh.exists()

    old = backups / "old.img"
    old.write_bytes(b"LUKS\xba\xbe the previous backup")
    old_sum = sha(old)
    _kill_mid_copy(src, old)
    assert sha(old) == old_sum

    # The next copy clears the leftover and completes.
    assert cli("home", "copy", str(src), str(old), "--delete-home", "--yes") == 0
    assert sha(old) == sha(src)
    assert sorted(p.name for p in backups.iterdir()) == [".none-yet.img.partial", "old.img"]


def test_disk_image_target_is_mounted_writable_and_released(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "tree"
    (src / "LiveOS").mkdir(parents=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    sh("mksquashfs", str(empty), str(src / "LiveOS" / "squashfs.img"), "-quiet", "-no-progress")
    disk = tmp_path / "disk.img"
    with disk.open("wb") as f:
        f.truncate(200 * MiB)
    sh("sfdisk", "-q", str(disk), input=b"start=2048, type=83\n")
    sh("mkfs.ext4", "-q", "-F", "-E", "offset=1048576", "-d", str(src), str(disk), "190M")

    assert cli("home", "create", str(disk), "--size", "40M", "--no-encrypt") == 0
    assert cli("home", "resize", str(disk), "--by", "8M", "--yes") == 0
    capsys.readouterr()
    assert cli("home", "check", str(disk), "--json") == 0
    out = capsys.readouterr().out
    assert '"size_bytes": 50331648' in out and '"fsck_clean": true' in out
    # Everything attached and mounted on the way was released.
    assert str(disk) not in sh("losetup", "--list", "--noheadings", "--output", "BACK-FILE")
    debugfs = sh("debugfs", "-R", "ls -l /LiveOS", f"{disk}?offset=1048576")
    assert "home.img" in debugfs and "50331648" in debugfs
