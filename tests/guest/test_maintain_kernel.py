"""repair and grow against the real kernel (runs inside the qemu guest, tests/guestvm.py).

The stick: an ext4 rootfs.img with files, inside squashfs.img (mksquashfs), inside
LiveOS/ of a stick directory, with an overlay the kernel itself broke by filling it
through a mounted snapshot: `P` ends Invalid (valid=0 on disk), `PO` ends Overflow
(full, valid=1 on disk).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from liveos_tools.cow import StoreState, read_store
from liveos_tools.errors import ExitCode
from tests.root.test_maintain_refusals import MiB, Stick, build_stick, cli
from tests.support.kernel_snap import make_file, snapshot

pytestmark = pytest.mark.guest


def _name() -> str:
    return f"lt-{uuid.uuid4().hex[:8]}"


def _umount(mnt: Path) -> None:
    if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def break_overlay(stick: Stick, tmp: Path, *, overflow: bool) -> tuple[dict[str, str], str]:
    """Write files through a mounted snapshot, sync, then fill it until the kernel gives up."""
    kept: dict[str, str] = {}
    mnt = tmp / "mnt"
    mnt.mkdir(exist_ok=True)
    with snapshot(_name(), stick.rootfs, stick.overlay, overflow=overflow) as snap:
        subprocess.run(["mount", "-t", "ext4", snap.node, str(mnt)], check=True)
        try:
            for i in range(6):
                data = os.urandom(48 * 1024 + i)
                (mnt / f"kept{i}").write_bytes(data)
                kept[f"kept{i}"] = hashlib.sha256(data).hexdigest()
            os.sync()
            with contextlib.suppress(OSError):
                fd = os.open(mnt / "big", os.O_WRONLY | os.O_CREAT)
                try:
                    for _ in range(256):
                        os.write(fd, os.urandom(MiB))
                        os.fsync(fd)
                finally:
                    os.close(fd)
        finally:
            _umount(mnt)
        state = snap.status_params()
    return kept, state


def check_healthy(stick: Stick, tmp: Path, kept: dict[str, str]) -> str:
    """Activate as dracut would; numbers, a clean e2fsck -n, and the kept files intact."""
    mnt = tmp / "mnt"
    mnt.mkdir(exist_ok=True)
    with snapshot(_name(), stick.rootfs, stick.overlay, overflow=True) as snap:
        status = snap.status_params()
        assert re.fullmatch(r"\d+/\d+ \d+", status), status
        fsck = subprocess.run(["e2fsck", "-f", "-n", snap.node], capture_output=True, text=True)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        subprocess.run(["mount", "-o", "ro,noload", snap.node, str(mnt)], check=True)
        try:
            for name, digest in kept.items():
                assert hashlib.sha256((mnt / name).read_bytes()).hexdigest() == digest, name
            for name, digest in stick.files.items():
                assert hashlib.sha256((mnt / name).read_bytes()).hexdigest() == digest, name
        finally:
            _umount(mnt)
    return status


def no_leftovers(stick: Stick) -> None:
    names = subprocess.run(["dmsetup", "ls"], capture_output=True, text=True).stdout
    assert "liveos-repair-" not in names, names
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert str(stick.overlay) not in loops and "liveos-repair-" not in loops, loops


@pytest.mark.parametrize("overflow", [False, True], ids=["P-invalid", "PO-overflow"])
def test_repair_brings_back_a_broken_overlay(tmp_path: Path, overflow: bool) -> None:
    stick = build_stick(tmp_path)
    kept, state = break_overlay(stick, tmp_path, overflow=overflow)
    report = read_store(stick.overlay)
    if overflow:
        assert state == "Overflow" and report.state is StoreState.FULL and report.valid
    else:
        assert state == "Invalid" and report.state is StoreState.INVALID
        assert stick.overlay.read_bytes()[4:8] == bytes(4)
    res = cli("repair", stick.root, "--yes", "--backup-dir", tmp_path / "bk")
    assert res.returncode == 0, res.stderr
    assert "is grown to" in res.stderr  # it was full: grown first, and the user told
    assert "e2fsck -f -n: exit 0" in res.stderr
    after = read_store(stick.overlay, full=True)
    assert after.state is StoreState.VALID and after.size_bytes > report.size_bytes
    status = check_healthy(stick, tmp_path, kept)
    assert status == after.kernel_status()
    no_leftovers(stick)


def test_online_grow_lets_a_live_snapshot_write_past_its_old_end(tmp_path: Path) -> None:
    base = make_file(tmp_path / "base", 64 * MiB)
    cow = make_file(tmp_path / "overlay-LIVE-1234", 4 * MiB)
    with snapshot(_name(), base, cow, overflow=True) as snap:
        assert snap.write_chunks(0, 930) == 930
        alloc, total = (int(x) for x in snap.status_params().split()[0].split("/"))
        assert alloc / total > 0.9 and total == 8192
        old_free = (total - alloc) // 8
        res = cli("grow", "--by", "8M", cow, "--yes", "--backup-dir", tmp_path / "bk")
        assert res.returncode == 0, res.stderr
        assert "losetup --set-capacity" in res.stderr
        # no reactivation: the same live snapshot, now allowed past its old end
        written = snap.write_chunks(2000, old_free + 1000)
        assert written == old_free + 1000
        alloc2, total2 = (int(x) for x in snap.status_params().split()[0].split("/"))
        assert total2 == 24576 and alloc2 > total
    assert read_store(cow).state is StoreState.VALID


# Every announced step of repair is killed (process group) and re-run in
# test_leftovers_repair.py; here: restore after a kill inside a step's write order.
KILL_POINTS = [
    ("repair", "grow-partial"),
    ("repair", "repair-header"),
    ("repair", "repair-base"),
    ("repair", "repair-fsck-fix"),
    ("repair", "repair-done"),
    ("grow", "grow-partial"),
]


def test_sigkill_at_every_step_then_restore_is_byte_exact(tmp_path: Path) -> None:
    stick = build_stick(tmp_path)
    break_overlay(stick, tmp_path, overflow=False)
    original = stick.overlay.read_bytes()
    for i, (command, point) in enumerate(KILL_POINTS):
        bk = tmp_path / f"bk{i}"
        stick.overlay.write_bytes(original)
        args = ["--grow-by", "16M"] if command == "repair" else ["--by", "16M"]
        res = cli(
            command,
            stick.root,
            "--yes",
            "--backup-dir",
            bk,
            *args,
            env={"LIVEOS_TEST_KILL_AT": point},
        )
        assert res.returncode == -9, (point, res.stderr)
        now = stick.overlay.read_bytes()
        if point == "repair-done":
            assert read_store(stick.overlay).state is StoreState.VALID, point
        elif point in ("repair-backup", "grow-partial", "grow-synced", "repair-header"):
            # the original, maybe valid=1, maybe with zeros appended: nothing else
            assert now[:4] == original[:4] and now[8 : len(original)] == original[8:], point
            assert not any(now[len(original) :]), point
        (backup,) = bk.glob("*.lobak")
        res = cli("repair", "--restore", backup, "--yes")
        assert res.returncode == 0, (point, res.stderr)
        assert stick.overlay.read_bytes() == original, point
        no_leftovers(stick)


def test_refusal_failure_and_ctrl_c_leave_the_original(tmp_path: Path) -> None:
    stick = build_stick(tmp_path)
    break_overlay(stick, tmp_path, overflow=False)
    original = stick.overlay.read_bytes()
    bk = tmp_path / "bk"
    with snapshot(_name(), stick.rootfs, stick.overlay, overflow=False):
        res = cli("repair", stick.root, "--yes", "--backup-dir", bk)
        assert res.returncode == ExitCode.IN_USE, res.stderr
        assert "held by dm-" in res.stderr
    assert stick.overlay.read_bytes() == original
    assert not bk.exists()
    # e2fsck failing (a fake one: no real e2fsck fails on demand): restored, and it says so
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "e2fsck").write_text("#!/bin/sh\necho 'fake: uncorrected' >&2\nexit 4\n")
    (fake / "e2fsck").chmod(0o755)
    path = f"{fake}:{os.environ['PATH']}"
    res = cli("repair", stick.root, "--yes", "--backup-dir", bk, env={"PATH": path})
    assert res.returncode == ExitCode.TOOL_FAILED, res.stderr
    assert "4 (errors were left uncorrected)" in res.stderr
    assert "the original overlay was restored from" in res.stderr
    assert "byte for byte (checksums verified)" in res.stderr
    assert stick.overlay.read_bytes() == original
    no_leftovers(stick)
    # Ctrl-C after e2fsck changed things: torn down and restored
    res = cli(
        "repair",
        stick.root,
        "--yes",
        "--backup-dir",
        bk,
        env={"LIVEOS_TEST_KILL_AT": "repair-fsck-fix:INT"},
    )
    assert res.returncode == ExitCode.ABORTED, res.stderr
    assert "interrupted: the original overlay was restored" in res.stderr
    assert stick.overlay.read_bytes() == original
    no_leftovers(stick)
