"""repair / grow / reset: the reviewer's findings, reproduced on the host (ext4 loop images).

Each test is the reproduction of a finding and asserts the corrected result: the exit
code, the error and hint, and that every byte that must not change did not.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from liveos_tools.cow import MAGIC, RESET_BYTES, StoreState, read_store
from liveos_tools.errors import ExitCode
from tests.root.test_maintain_refusals import (
    LABEL,
    OVERLAY,
    MiB,
    Stick,
    assert_refused,
    build_stick,
    cli,
    fake_store,
    sh,
    tree_hashes,
)
from tests.support.sticks import ext4_image

#: ext4 wants a real UUID; the overlay keeps its name (the only overlay there is used).
FS_UUID = "0b5f4a3e-1111-4222-8333-444455556666"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def stick(tmp_path: Path) -> Stick:
    s = build_stick(tmp_path)
    fake_store(s.overlay, valid=True, exceptions=300)
    return s


@contextlib.contextmanager
def mounted(image: Path, where: Path, *options: str) -> Iterator[Path]:
    where.mkdir(exist_ok=True)
    sh("mount", "-o", ",".join(("loop", *options)), image, where)
    try:
        yield where
    finally:
        sh("umount", where)


def path_without(tmp_path: Path, hidden: str) -> str:
    """A PATH holding links to every program on the current PATH except `hidden`."""
    bindir = tmp_path / f"no-{hidden}"
    bindir.mkdir()
    for d in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(d):
            continue
        for entry in os.scandir(d):
            target = bindir / entry.name
            if entry.name != hidden and not target.exists() and os.access(entry.path, os.X_OK):
                target.symlink_to(os.path.realpath(entry.path))
    assert not (bindir / hidden).exists() and (bindir / "mount").exists()
    return str(bindir)


# --- finding 3: no losetup means no in-use check, so no write -------------------------------


def test_without_losetup_reset_and_grow_refuse(stick: Stick, tmp_path: Path) -> None:
    env = {"PATH": path_without(tmp_path, "losetup")}
    before = tree_hashes(stick.root)
    loop = sh("losetup", "--find", "--show", stick.overlay).strip()
    try:
        for args in (["reset", "--yes"], ["grow", "--by", "1M", "--yes"], ["repair", "--yes"]):
            res = cli(*args, stick.root, "--backup-dir", tmp_path / "bk", env=env)
            assert_refused(res, ExitCode.TOOL_MISSING, "losetup is not installed")
            assert "hint: install it: apt-get install mount" in res.stderr
    finally:
        sh("losetup", "-d", loop)
    assert tree_hashes(stick.root) == before
    assert not (tmp_path / "bk").exists()


# --- finding 5: grow refuses a corrupt store ---------------------------------------------------


def test_grow_refuses_corrupt_stores_and_grows_new_ones(stick: Stick, tmp_path: Path) -> None:
    bk = tmp_path / "bk"
    original = stick.overlay.read_bytes()
    damaged = {
        "truncated": original[:100000],
        "bad magic": b"XXXX" + original[4:],
        "empty": b"",
        "garbage header": os.urandom(16) + original[16:],
    }
    for what, data in damaged.items():
        stick.overlay.write_bytes(data)
        before = tree_hashes(tmp_path)
        res = cli("grow", "--by", "1M", stick.root, "--yes", "--backup-dir", bk)
        assert_refused(res, ExitCode.CORRUPT, "is corrupt")
        assert "growing it would hide the damage" in res.stderr, what
        assert "liveos-overlay repair" in res.stderr, what
        assert tree_hashes(tmp_path) == before, what
        assert stick.overlay.stat().st_size == len(data), what
    assert not bk.exists()
    # a new (all-zero) store and an invalid one may be grown
    for what, data in (("new", bytes(4 * MiB)), ("invalid", original)):
        stick.overlay.write_bytes(data)
        if what == "invalid":
            fake_store(stick.overlay, valid=False, exceptions=30)
            data = stick.overlay.read_bytes()
        res = cli("grow", "--by", "1M", stick.root, "--yes", "--backup-dir", bk)
        assert res.returncode == 0, (what, res.stderr)
        grown = stick.overlay.read_bytes()
        assert len(grown) == len(data) + MiB and grown[: len(data)] == data, what
        assert not any(grown[len(data) :]), what
    assert read_store(stick.overlay, full=True).state is StoreState.INVALID


# --- findings 4, 13: restore through an image plans read-only and finds the image again ------


def test_restore_through_an_image(stick: Stick, tmp_path: Path) -> None:
    img = ext4_image(stick.root, tmp_path / "a-fs.img", label=LABEL, uuid=FS_UUID)
    original_overlay = stick.overlay.read_bytes()
    bk = tmp_path / "bk"
    res = cli("reset", img, "--yes", "--backup-dir", bk)
    assert res.returncode == 0, res.stderr
    # the message names the image, not the temporary mount point
    assert f"reset: {img}: LiveOS/{OVERLAY} is empty" in res.stderr
    assert "liveos-rw-" not in res.stderr.splitlines()[-1]
    (backup,) = bk.glob("*.lobak")
    before = sha(img)
    # a dry run and the no-terminal refusal both leave the image byte-identical
    res = cli("repair", "--restore", backup, img, "--dry-run")
    assert res.returncode == 0, res.stderr
    assert sha(img) == before
    res = cli("repair", "--restore", backup, img)
    assert_refused(res, ExitCode.ABORTED, "--yes")
    assert sha(img) == before
    res = cli("repair", "--restore", backup)
    assert_refused(res, ExitCode.ABORTED, "--yes")
    assert sha(img) == before
    # without TARGET: the backup names the image and the overlay inside it
    res = cli("repair", "--restore", backup, "--yes")
    assert res.returncode == 0, res.stderr
    assert "sha256 verified" in res.stderr
    with mounted(img, tmp_path / "mnt", "ro") as mnt:
        assert (mnt / "LiveOS" / OVERLAY).read_bytes() == original_overlay


# --- finding 6: restore checks the overlay is as the operation left it -----------------------


def boot_writes_a_store(overlay: Path) -> None:
    """What the next boot does to a reset overlay: a new header and some exceptions."""
    with open(overlay, "r+b") as f:
        f.write(struct.pack("<IIII", MAGIC, 1, 1, 8))
        f.seek(4096)
        f.write(struct.pack("<QQ", 5, 2) + struct.pack("<QQ", 6, 3))


def test_restore_refuses_an_overlay_booted_since(stick: Stick, tmp_path: Path) -> None:
    bk = tmp_path / "bk"
    original = stick.overlay.read_bytes()
    res = cli("reset", stick.root, "--yes", "--backup-dir", bk)
    assert res.returncode == 0, res.stderr
    (backup,) = bk.glob("*.lobak")
    boot_writes_a_store(stick.overlay)
    booted = stick.overlay.read_bytes()
    before = tree_hashes(tmp_path)
    res = cli("repair", "--restore", backup, "--yes")
    assert_refused(res, ExitCode.CORRUPT, "is no longer as the reset")
    assert "bytes 0..65536 changed since the reset" in res.stderr
    assert "--force" in res.stderr
    assert tree_hashes(tmp_path) == before
    # --force restores, after a pre-restore backup of what it overwrites
    res = cli("repair", "--restore", backup, "--yes", "--force")
    assert res.returncode == 0, res.stderr
    assert stick.overlay.read_bytes() == original
    (pre,) = bk.glob("*.pre-restore.*.lobak")
    assert f"what the restore overwrote is kept in {pre}" in res.stderr
    # ... and that restore is itself undoable, byte for byte
    res = cli("repair", "--restore", pre, "--yes")
    assert res.returncode == 0, res.stderr
    assert stick.overlay.read_bytes() == booted


def test_restore_of_an_untouched_grow_and_reset(stick: Stick, tmp_path: Path) -> None:
    bk = tmp_path / "bk"
    original = stick.overlay.read_bytes()
    res = cli("grow", "--by", "2M", stick.root, "--yes", "--backup-dir", bk)
    assert res.returncode == 0, res.stderr
    (backup,) = bk.glob("*.grow.*.lobak")
    # a boot used the new space: cutting it off would break the store
    with open(stick.overlay, "r+b") as f:
        f.seek(len(original) + 4096)
        f.write(b"data")
    res = cli("repair", "--restore", backup, "--yes")
    assert_refused(res, ExitCode.CORRUPT, "changed since the grow")
    assert len(stick.overlay.read_bytes()) == len(original) + 2 * MiB
    with open(stick.overlay, "r+b") as f:
        f.seek(len(original) + 4096)
        f.write(bytes(4))
    res = cli("repair", "--restore", backup, "--yes")
    assert res.returncode == 0, res.stderr
    assert stick.overlay.read_bytes() == original


# --- finding 8: a read-only mount is refused before anything is written ---------------------


def test_read_only_mount_is_refused_before_any_write(stick: Stick, tmp_path: Path) -> None:
    img = ext4_image(stick.root, tmp_path / "ro.img", label=LABEL, uuid=FS_UUID)
    before = sha(img)
    with mounted(img, tmp_path / "ro", "ro") as mnt:
        bk = mnt / "liveos-backups"
        for args in (["reset", "--yes"], ["grow", "--by", "1M", "--yes"]):
            res = cli(*args, mnt, "--backup-dir", tmp_path / "bk")
            assert_refused(res, ExitCode.IN_USE, f"the stick is mounted read-only at {mnt}")
            assert f"hint: remount it read-write (mount -o remount,rw {mnt})" in res.stderr
            assert not bk.exists() and not (tmp_path / "bk").exists()
    assert sha(img) == before


# --- finding 11: a damaged squashfs.img -------------------------------------------------------


def test_damaged_squashfs_blocks_only_repair(stick: Stick, tmp_path: Path) -> None:
    squash = stick.root / "LiveOS" / "squashfs.img"
    with open(squash, "r+b") as f:
        f.write(b"\0" * 4096)
    res = cli("status", stick.root)
    assert res.returncode == 0, res.stderr
    res = cli("grow", "--by", "1M", stick.root, "--yes", "--backup-dir", tmp_path / "bk")
    assert res.returncode == 0, res.stderr
    before = tree_hashes(tmp_path)
    res = cli("repair", stick.root, "--yes", "--backup-dir", tmp_path / "bk2")
    assert_refused(res, ExitCode.CORRUPT, f"the live image {squash} cannot be read")
    assert tree_hashes(tmp_path) == before
    res = cli("reset", stick.root, "--yes", "--backup-dir", tmp_path / "bk")
    assert res.returncode == 0, res.stderr
    assert not any(stick.overlay.read_bytes()[:RESET_BYTES])


# --- findings 12, 15: absurd sizes; Ctrl-C during a grow says what state it left ------------


def test_absurd_size_and_interrupted_grow(stick: Stick, tmp_path: Path) -> None:
    before = tree_hashes(tmp_path)
    res = cli("grow", "--by", "9" * 300 + ".5", stick.root, "--yes")
    assert_refused(res, ExitCode.USAGE, "too many digits")
    assert tree_hashes(tmp_path) == before
    original = stick.overlay.read_bytes()
    res = cli(
        "grow",
        "--by",
        "4M",
        stick.root,
        "--yes",
        "--backup-dir",
        tmp_path / "bk",
        env={"LIVEOS_TEST_KILL_AT": "grow-partial:INT"},
    )
    assert_refused(res, ExitCode.ABORTED, "interrupted: ")
    assert "may have zeros appended past its old end" in res.stderr
    (backup,) = (tmp_path / "bk").glob("*.lobak")
    assert (
        f"hint: that is harmless (it works as before): run grow again, or cut them off with "
        f"liveos-overlay repair --restore {backup}" in res.stderr
    )
    now = stick.overlay.read_bytes()
    assert now[: len(original)] == original and not any(now[len(original) :])
    res = cli("repair", "--restore", backup, "--yes")
    assert res.returncode == 0, res.stderr
    assert stick.overlay.read_bytes() == original


def test_reset_of_a_copy_outside_a_stick(tmp_path: Path) -> None:
    """An overlay file on its own (no LiveOS around it) still resets and restores."""
    ovl = tmp_path / OVERLAY
    ovl.write_bytes(bytes(2 * MiB))
    fake_store(ovl, valid=True, exceptions=5)
    original = ovl.read_bytes()
    res = cli("reset", ovl, "--yes", "--backup-dir", tmp_path / "bk")
    assert res.returncode == 0, res.stderr
    assert f"reset: {ovl} is empty" in res.stderr
    (backup,) = (tmp_path / "bk").glob("*.lobak")
    res = cli("repair", "--restore", backup, "--yes")
    assert res.returncode == 0, res.stderr
    assert ovl.read_bytes() == original
    shutil.rmtree(tmp_path / "bk")
