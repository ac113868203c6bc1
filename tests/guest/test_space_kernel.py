"""du and compact against the real kernel (runs inside the qemu guest, tests/guestvm.py).

Files are written through a mounted dm snapshot, so the store is the kernel's own:
du must attribute each surviving file's chunks to its path exactly and count deleted
and rewritten-unchanged chunks as reclaimable; compact's store must be loaded by the
kernel, with a clean e2fsck through it and every surviving file intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from liveos_tools.cow import read_store
from tests.root.test_maintain_refusals import MiB, build_stick, cli
from tests.support.kernel_snap import snapshot

pytestmark = pytest.mark.guest
BS = 4096


def _name() -> str:
    return f"lt-{uuid.uuid4().hex[:8]}"


def _blocks(n: int) -> int:
    return -(-n // BS)


def _umount(mnt: Path) -> None:
    if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def _write(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _data_chunks(status: str) -> int:
    m = re.fullmatch(r"(\d+)/\d+ (\d+)", status)
    assert m, status
    return (int(m.group(1)) - int(m.group(2))) // 8


def test_du_attributes_the_kernels_chunks(tmp_path: Path) -> None:
    stick = build_stick(tmp_path, overlay_bytes=16 * MiB, rootfs_bytes=64 * MiB)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    sizes = {"a/one.bin": 40_000, "a/b/two.bin": 123_457, "c/three.bin": 300_000}
    gone = {"gone/g1": 200_000, "gone/g2": 70_000}
    with snapshot(_name(), stick.rootfs, stick.overlay) as snap:
        subprocess.run(["mount", "-t", "ext4", snap.node, str(mnt)], check=True)
        try:
            for rel, n in {**sizes, **gone}.items():
                _write(mnt / rel, os.urandom(n))
            same = (mnt / "etc/file7").read_bytes()  # 16 KiB: rewritten with the same bytes
            with open(mnt / "etc/file7", "r+b") as f:
                f.write(same)
            with open(mnt / "etc/file3", "r+b") as f:  # 8 KiB: overwritten in place
                f.write(b"\x42" * 8192)
            os.sync()
            for rel in gone:
                (mnt / rel).unlink()
            os.sync()
        finally:
            _umount(mnt)
        kernel_chunks = _data_chunks(snap.status_params())
    res = cli("du", stick.root, "--json", "--top", "50")
    assert res.returncode == 0, res.stderr
    rep = json.loads(res.stdout)
    assert rep["data_bytes"] == kernel_chunks * BS
    files = {f["path"]: f["bytes"] for f in rep["top_files"]}
    for rel, n in sizes.items():
        assert files[f"/{rel}"] == _blocks(n) * BS, rel
    assert files["/etc/file3"] == 2 * BS
    assert "/etc/file7" not in files
    assert rep["reclaimable"]["unchanged"] >= 4 * BS
    assert rep["reclaimable"]["deleted"] >= (_blocks(200_000) + _blocks(70_000)) * BS
    assert (
        rep["files_bytes"] + rep["metadata_bytes"] + rep["reclaimable_bytes"] == (rep["data_bytes"])
    )
    text = cli("du", stick.root)
    assert text.returncode == 0 and "/c/three.bin" in text.stdout, text.stderr


def test_learner_removes_an_activity_and_compacts(tmp_path: Path) -> None:
    stick = build_stick(tmp_path, overlay_bytes=240 * MiB, rootfs_bytes=320 * MiB, nested=False)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    kept: dict[str, str] = {}
    activity = 200 * MiB
    with snapshot(_name(), stick.rootfs, stick.overlay) as snap:
        subprocess.run(["mount", "-t", "ext4", snap.node, str(mnt)], check=True)
        try:
            for i in range(3):
                kept[f"home/liveuser/work{i}.odt"] = _write(
                    mnt / f"home/liveuser/work{i}.odt", os.urandom(MiB + 1000 * i)
                )
            act = mnt / "usr/share/sugar/activities/Big.activity"
            for i in range(20):  # not random: urandom is slow under TCG, any non-zero will do
                _write(act / f"part{i}.bin", bytes([i + 1]) * (activity // 20))
            os.sync()
            subprocess.run(["rm", "-rf", str(act)], check=True)
            kept["home/liveuser/after.txt"] = _write(mnt / "home/liveuser/after.txt", b"x" * 5000)
            os.sync()
        finally:
            _umount(mnt)
    before = read_store(stick.overlay)
    res = cli("du", stick.root, "--json")
    assert res.returncode == 0, res.stderr
    rep = json.loads(res.stdout)
    assert rep["reclaimable"]["deleted"] >= 0.95 * activity

    res = cli("compact", stick.root, "--yes")
    assert res.returncode == 0, res.stderr
    after = read_store(stick.overlay, full=True)
    assert after.size_bytes == before.size_bytes and after.chunk_sectors == 8
    assert before.used_bytes - after.used_bytes >= 0.95 * activity

    # the kernel loads the compacted store as dracut would, and it is healthy
    with snapshot(_name(), stick.rootfs, stick.overlay) as snap:
        assert snap.status_params() == after.kernel_status()
        fsck = subprocess.run(["e2fsck", "-f", "-n", snap.node], capture_output=True, text=True)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        subprocess.run(["mount", "-o", "ro,noload", snap.node, str(mnt)], check=True)
        try:
            for rel, digest in {**kept, **stick.files}.items():
                assert hashlib.sha256((mnt / rel).read_bytes()).hexdigest() == digest, rel
            assert not (mnt / "usr/share/sugar/activities/Big.activity").exists()
        finally:
            _umount(mnt)

    res = cli("compact", stick.root, "--restore", "--yes")
    assert res.returncode == 0, res.stderr
    assert read_store(stick.overlay, full=True).exceptions == before.exceptions


def test_du_of_the_running_system_reads_the_kernels_view(tmp_path: Path) -> None:
    """A snapshot named live-rw, mounted and written: `du` with no TARGET reads it as the
    running live system (the device itself, the table from the store's loop device)."""
    stick = build_stick(tmp_path, overlay_bytes=16 * MiB, rootfs_bytes=64 * MiB)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    sizes = {"home/liveuser/a.bin": 90_000, "var/log/messages": 12_345}
    with snapshot("live-rw", stick.rootfs, stick.overlay) as snap:
        subprocess.run(["mount", "-t", "ext4", snap.node, str(mnt)], check=True)
        try:
            for rel, n in sizes.items():
                _write(mnt / rel, os.urandom(n))
            os.sync()
            res = cli("du", "--json")
            kernel_chunks = _data_chunks(snap.status_params())
        finally:
            _umount(mnt)
    assert res.returncode == 0, res.stderr
    rep = json.loads(res.stdout)
    assert rep["target"] == "live"
    assert rep["data_bytes"] == kernel_chunks * BS
    files = {f["path"]: f["bytes"] for f in rep["top_files"]}
    for rel, n in sizes.items():
        assert files[f"/{rel}"] == _blocks(n) * BS, rel
    assert rep["fs_clean"] is False  # mounted: the warning says so
