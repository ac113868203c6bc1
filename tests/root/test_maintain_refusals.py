"""repair / grow / reset on the host: refusals, dry runs, reset, grow and early crash points.

Needs root and loop devices (ext4 images); no device-mapper, so the repair steps
that need the kernel's snapshot are in tests/guest/test_maintain_kernel.py. Every
refusal must leave every file byte-identical and exit with its documented code.
The `build_stick` helper is shared with the guest tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from liveos_tools.cow import MAGIC, RESET_BYTES, StoreState, read_store
from liveos_tools.errors import ExitCode
from tests.support.shell import MiB, sh
from tests.support.shell import cli_process as cli

LABEL = "LIVE"
UUID = "1234-ABCD"
OVERLAY = f"overlay-{LABEL}-{UUID}"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@dataclass(frozen=True)
class Stick:
    root: Path  # the directory that holds LiveOS/
    rootfs: Path  # a copy of the rootfs.img inside squashfs.img (the snapshot's base)
    files: dict[str, str]  # name -> sha256 of the files in the base

    @property
    def overlay(self) -> Path:
        return self.root / "LiveOS" / OVERLAY


def build_stick(
    where: Path, *, overlay_bytes: int = 8 * MiB, rootfs_bytes: int = 64 * MiB, nested: bool = True
) -> Stick:
    """A LiveOS directory: squashfs.img holding LiveOS/rootfs.img (ext4 with files)."""
    tree = where / "tree"
    (tree / "etc").mkdir(parents=True)
    files = {}
    for i in range(8):
        data = hashlib.sha256(str(i).encode()).digest() * (512 * (i + 1))
        (tree / "etc" / f"file{i}").write_bytes(data)
        files[f"etc/file{i}"] = hashlib.sha256(data).hexdigest()
    rootfs = where / "rootfs.img"
    with open(rootfs, "wb") as f:
        f.truncate(rootfs_bytes)
    sh("mkfs.ext4", "-q", "-F", "-b", "4096", "-L", "root", "-d", tree, rootfs)
    live = where / "stick" / "LiveOS"
    live.mkdir(parents=True)
    if nested:
        sq = where / "sq"
        (sq / "LiveOS").mkdir(parents=True)
        shutil.copy(rootfs, sq / "LiveOS" / "rootfs.img")
        sh("mksquashfs", sq, live / "squashfs.img", "-noappend", "-quiet", "-no-progress")
        shutil.rmtree(sq)
    else:
        shutil.copy(rootfs, live / "rootfs.img")
    with open(live / OVERLAY, "wb") as f:
        f.write(bytes(overlay_bytes))
    shutil.rmtree(tree)
    return Stick(where / "stick", rootfs, files)


def fake_store(path: Path, *, valid: bool, exceptions: int, chunk: int = 8) -> None:
    """A store as the kernel leaves it, written by hand (the host has no dm)."""
    cb = chunk * 512
    epa = cb // 16
    with open(path, "r+b") as f:
        f.write(struct.pack("<IIII", MAGIC, int(valid), 1, chunk))
        for i in range(exceptions):
            area, index = divmod(i, epa)
            area_chunk = 1 + (epa + 1) * area
            f.seek(area_chunk * cb + index * 16)
            f.write(struct.pack("<QQ", 100 + i, area_chunk + 1 + index))


def tree_hashes(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def assert_refused(res: subprocess.CompletedProcess[str], code: ExitCode, words: str) -> None:
    assert res.returncode == code, (res.returncode, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert lines[-2].startswith("error: ") or lines[-1].startswith("error: "), res.stderr
    assert words in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


@contextlib.contextmanager
def loop_attached(path: Path) -> Iterator[str]:
    loop = sh("losetup", "--find", "--show", path).strip()
    try:
        yield loop
    finally:
        sh("losetup", "-d", loop)


@contextlib.contextmanager
def ext4_stick_mount(where: Path, size: int) -> Iterator[Path]:
    """A small ext4 'stick' image mounted read-write (for free-space limits)."""
    img = where / "small.img"
    with open(img, "wb") as f:
        f.truncate(size)
    sh("mkfs.ext4", "-q", "-F", "-m", "0", img)
    mnt = where / "small"
    mnt.mkdir()
    sh("mount", "-o", "loop", img, mnt)
    try:
        yield mnt
    finally:
        sh("umount", mnt)


pytestmark = [pytest.mark.root, needs_root]


@pytest.fixture
def stick(tmp_path: Path) -> Stick:
    s = build_stick(tmp_path)
    fake_store(s.overlay, valid=False, exceptions=40)
    return s


def test_dry_runs_change_nothing(stick: Stick, tmp_path: Path) -> None:
    bk = tmp_path / "bk"
    before = tree_hashes(tmp_path)
    for args in (["repair"], ["grow", "--by", "4M"], ["reset"]):
        res = cli(*args, stick.root, "--dry-run", "--backup-dir", bk)
        assert res.returncode == 0, res.stderr
        assert "dry run: nothing was changed" in res.stderr
    res = cli("repair", stick.root, "--dry-run", "--backup-dir", bk)
    # every command and every byte range it would write
    assert f"write {stick.overlay} bytes 4..8 (4 bytes): valid = 1" in res.stderr
    assert "run: e2fsck -f -y" in res.stderr and "run: e2fsck -f -n" in res.stderr
    assert "mount -t squashfs -o ro <loop>" in res.stderr
    assert "snapshot <base-loop>" in res.stderr and "PO 8" in res.stderr
    assert tree_hashes(tmp_path) == before
    assert not bk.exists()


def test_refusals_leave_every_byte(stick: Stick, tmp_path: Path) -> None:
    bk = tmp_path / "bk"
    before = tree_hashes(tmp_path)
    with loop_attached(stick.overlay):
        for args in (["repair"], ["reset"]):
            assert_refused(
                cli(*args, stick.root, "--yes", "--backup-dir", bk),
                ExitCode.IN_USE,
                "is in use: attached to /dev/loop",
            )
    # no terminal and no --yes: refuse to write without asking
    assert_refused(cli("reset", stick.root, "--backup-dir", bk), ExitCode.ABORTED, "--yes")
    assert_refused(cli("grow", "--to", "4M", stick.root, "--yes"), ExitCode.USAGE, "shrink")
    assert_refused(cli("grow", "--by", "1T", stick.root, "--yes"), ExitCode.NO_SPACE, "free")
    assert tree_hashes(tmp_path) == before
    # a corrupt header: repair will not touch it
    with open(stick.overlay, "r+b") as f:
        f.write(b"XXXX")
    before = tree_hashes(tmp_path)
    assert_refused(
        cli("repair", stick.root, "--yes", "--backup-dir", bk), ExitCode.CORRUPT, "bad magic"
    )
    # wrong file type: an OverlayFS directory cannot be grown or repaired
    stick.overlay.unlink()
    (stick.root / "LiveOS" / OVERLAY).mkdir()
    before = tree_hashes(tmp_path)
    assert_refused(cli("grow", "--by", "4M", stick.root, "--yes"), ExitCode.USAGE, "OverlayFS")
    assert_refused(cli("repair", stick.root, "--yes"), ExitCode.USAGE, "OverlayFS")
    # ...nor compacted, measured by du or remixed: the same exit code for each
    assert_refused(cli("compact", stick.root, "--yes"), ExitCode.USAGE, "OverlayFS")
    assert_refused(cli("du", stick.root), ExitCode.USAGE, "OverlayFS")
    out = tmp_path / "out.iso"
    assert_refused(cli("remix", stick.root, "-o", out, "--yes"), ExitCode.USAGE, "OverlayFS")
    assert tree_hashes(tmp_path) == before
    assert not bk.exists()


def test_grow_space_limits_on_a_small_stick(tmp_path: Path) -> None:
    with ext4_stick_mount(tmp_path, 48 * MiB) as mnt:
        live = mnt / "LiveOS"
        live.mkdir()
        ovl = live / OVERLAY
        ovl.write_bytes(bytes(4 * MiB))
        fake_store(ovl, valid=True, exceptions=10)
        before = hashlib.sha256(ovl.read_bytes()).hexdigest()
        res = cli("grow", "--by", "64M", ovl, "--yes", "--backup-dir", tmp_path / "bk")
        assert_refused(res, ExitCode.NO_SPACE, "needs more than")
        assert hashlib.sha256(ovl.read_bytes()).hexdigest() == before
        res = cli("grow", "--by", "8M", ovl, "--yes", "--backup-dir", tmp_path / "bk")
        assert res.returncode == 0, res.stderr
        data = ovl.read_bytes()
        assert len(data) == 12 * MiB
        assert hashlib.sha256(data[: 4 * MiB]).hexdigest() == before
        assert not any(data[4 * MiB :])
        # real zeros, not a hole: every block of the new part is allocated
        assert os.stat(ovl).st_blocks * 512 >= 12 * MiB
        assert read_store(ovl).total_bytes == 12 * MiB


def test_grow_beyond_the_fat_limit_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from liveos_tools.errors import NoSpaceError
    from liveos_tools.tasks import grow

    ovl = tmp_path / OVERLAY
    ovl.write_bytes(bytes(MiB))
    fake_store(ovl, valid=True, exceptions=3)
    # The host kernel has no vfat; the limit is checked on the filesystem type.
    monkeypatch.setattr(grow, "_fstype", lambda path, medium: "vfat")
    with pytest.raises(NoSpaceError, match="FAT limit") as err:
        grow.check_grow(ovl, None, to_bytes=4 * 1024 * MiB)
    assert err.value.code == ExitCode.NO_SPACE
    assert "--to 4095M" in (err.value.hint or "")
    facts = grow.check_grow(ovl, None, to_bytes=4 * 1024 * MiB - 1)
    assert facts.new_size == 4 * 1024 * MiB - 4096


def test_reset_backs_up_and_restore_undoes_it(stick: Stick, tmp_path: Path) -> None:
    bk = tmp_path / "bk"
    fake_store(stick.overlay, valid=True, exceptions=300)
    original = stick.overlay.read_bytes()
    res = cli("reset", stick.root, "--yes", "--backup-dir", bk)
    assert res.returncode == 0, res.stderr
    assert "every change stored in the overlay" in res.stderr
    data = stick.overlay.read_bytes()
    assert not any(data[:RESET_BYTES]) and data[RESET_BYTES:] == original[RESET_BYTES:]
    assert read_store(stick.overlay).state is StoreState.NEW
    (backup,) = bk.glob("*.lobak")
    res = cli("repair", "--restore", backup, "--yes")
    assert res.returncode == 0, res.stderr
    assert "sha256 verified" in res.stderr
    assert stick.overlay.read_bytes() == original


def test_restore_refuses_a_foreign_or_damaged_backup(stick: Stick, tmp_path: Path) -> None:
    bk = tmp_path / "bk"
    res = cli("reset", stick.root, "--yes", "--backup-dir", bk)
    assert res.returncode == 0, res.stderr
    (backup,) = bk.glob("*.lobak")
    other = tmp_path / "overlay-OTHER-1"
    other.write_bytes(bytes(MiB))
    before = tree_hashes(tmp_path)
    assert_refused(cli("repair", "--restore", backup, other, "--yes"), ExitCode.USAGE, "belongs to")
    damaged = tmp_path / "damaged.lobak"
    data = bytearray(backup.read_bytes())
    data[-1] ^= 0xFF
    damaged.write_bytes(data)
    before = tree_hashes(tmp_path)
    assert_refused(cli("repair", "--restore", damaged, "--yes"), ExitCode.CORRUPT, "checksum")
    assert tree_hashes(tmp_path) == before


def test_reset_overlayfs_dir_keeps_the_dirs(stick: Stick) -> None:
    stick.overlay.unlink()
    upper = stick.root / "LiveOS" / OVERLAY
    (upper / "etc").mkdir(parents=True)
    (upper / "etc" / "hosts").write_text("x")
    work = stick.root / "LiveOS" / "ovlwork"
    (work / "work").mkdir(parents=True)
    res = cli("reset", stick.root, "--yes")
    assert res.returncode == 0, res.stderr
    assert upper.is_dir() and work.is_dir()
    assert list(upper.iterdir()) == [] and list(work.iterdir()) == []


def test_repair_without_device_mapper_changes_nothing(stick: Stick, tmp_path: Path) -> None:
    from liveos_tools.tasks.repair import _has_device_mapper

    if _has_device_mapper():
        pytest.skip("this kernel has device-mapper")
    before = tree_hashes(tmp_path)
    # refused before asking (no --yes, no terminal): exit 7, not 9
    for extra in ((), ("--yes",)):
        res = cli("repair", stick.root, *extra, "--backup-dir", tmp_path / "bk")
        assert_refused(res, ExitCode.TOOL_MISSING, "this kernel has no device-mapper")
        assert "hint: load it (modprobe dm_snapshot)" in res.stderr
        assert "needs confirmation" not in res.stderr
    # a dry run still shows the plan, and says why it would not run
    res = cli("repair", stick.root, "--dry-run", "--backup-dir", tmp_path / "bk")
    assert res.returncode == 0, res.stderr
    assert "note: this kernel has no device-mapper: the repair cannot run here" in res.stderr
    assert tree_hashes(tmp_path) == before


def test_damaged_table_says_what_it_drops_and_asks(stick: Stick, tmp_path: Path) -> None:
    with open(stick.overlay, "r+b") as f:
        f.seek(4096 + 30 * 16)
        f.write(struct.pack("<QQ", 999, 2))  # entry 30 reuses entry 0's data chunk
    before = tree_hashes(tmp_path)
    res = cli("repair", stick.root, "--dry-run", "--backup-dir", tmp_path / "bk")
    assert res.returncode == 0, res.stderr
    assert (
        "destroys: the exception table is damaged at area 0 entry 30 (entry reuses data chunk 2)"
        ": the last 10 recorded changes are dropped" in res.stderr
    )
    assert f"write {stick.overlay} bytes 4576..8192 (3616 bytes): zeros: table end" in res.stderr
    from liveos_tools.tasks.repair import _has_device_mapper

    assert_refused(
        cli("repair", stick.root, "--backup-dir", tmp_path / "bk"),
        *(
            (ExitCode.ABORTED, "needs confirmation")
            if _has_device_mapper()
            else (ExitCode.TOOL_MISSING, "no device-mapper")
        ),
    )
    assert tree_hashes(tmp_path) == before
