"""The merged view against the real kernel: sha256 of the snapshot device == sha256 of the view.

Runs inside the guest kernel (tests/guestvm.py). Each scenario writes through a real
dm-snapshot (random data, unaligned writes that make the kernel copy partial chunks,
a base with data, zero blocks and holes), hashes the kernel's block device, takes the
snapshot down, and hashes the offline merged view of the same base and store.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import random
import shutil
import stat
import subprocess
import uuid
from collections.abc import Iterable
from pathlib import Path

import pytest

from liveos_tools.cow import RESET_BYTES, StoreState, read_store
from liveos_tools.merge import MergedView
from liveos_tools.tools import mount as mount_tool
from tests.support.kernel_snap import MiB, Snap, make_file, snapshot
from tests.support.store_writer import raw_table, write_store

pytestmark = pytest.mark.guest

COW_FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "cow"


def _name() -> str:
    return f"lt-{uuid.uuid4().hex[:8]}"


def _sha_fd(fd: int) -> str:
    h = hashlib.sha256()
    while block := os.read(fd, MiB):
        h.update(block)
    return h.hexdigest()


def kernel_sha(snap: Snap) -> str:
    assert stat.S_ISBLK(os.stat(snap.node).st_mode), f"{snap.node} is not a block device"
    fd = os.open(snap.node, os.O_RDONLY)
    try:
        return _sha_fd(fd)
    finally:
        os.close(fd)


def view_sha(base: Path, cow: Path) -> str:
    with MergedView(base, cow) as view, view.reader() as r:
        h = hashlib.sha256()
        while block := r.read(MiB):
            h.update(block)
        return h.hexdigest()


def image_sha(base: Path, cow: Path, tmp: Path) -> str:
    """The same through write_image (sparse), then the file's bytes."""
    out = tmp / "merged.img"
    with MergedView(base, cow) as view:
        view.write_image(out)
    fd = os.open(out, os.O_RDONLY)
    try:
        return _sha_fd(fd)
    finally:
        os.close(fd)
        out.unlink()


def applied_sha(base: Path, cow: Path, tmp: Path) -> str:
    """The same through apply_to() over a plain copy of the base (refresh's fast road)."""
    out = tmp / "applied.img"
    shutil.copyfile(base, out)
    fd = os.open(out, os.O_RDWR)
    try:
        with MergedView(base, cow) as view:
            view.apply_to(fd)
        os.lseek(fd, 0, os.SEEK_SET)
        return _sha_fd(fd)
    finally:
        os.close(fd)
        out.unlink()


def noise(n: int) -> bytes:
    # os.urandom: Python's own generator is many times slower under qemu's TCG.
    return os.urandom(n)


def random_base(path: Path, size: int, rng: random.Random) -> Path:
    """Random 64 KiB pieces, zero pieces and holes."""
    make_file(path, size)
    with open(path, "r+b") as f:
        for off in range(0, size, 64 * 1024):
            kind = rng.random()
            if kind < 0.4:
                continue
            f.seek(off)
            n = min(64 * 1024, size - off)
            f.write(bytes(n) if kind < 0.5 else noise(n))
    return path


def base_and_cow(
    tmp: Path, seed: int, size: int, cow_size: int
) -> tuple[random.Random, Path, Path]:
    rng = random.Random(seed)
    return rng, random_base(tmp / "base", size, rng), make_file(tmp / "cow", cow_size)


def scatter_writes(snap: Snap, rng: random.Random, count: int, *, size: int) -> None:
    """Writes of 512 B to 3 chunks at random sector offsets (partial chunks get copied)."""
    fd = os.open(snap.node, os.O_WRONLY)
    try:
        for _ in range(count):
            length = rng.choice([512, 4096, snap.chunk * 512, 3 * snap.chunk * 512])
            off = rng.randrange(0, (size - length) // 512) * 512
            os.pwrite(fd, noise(length), off)
        os.fsync(fd)
    finally:
        os.close(fd)


def sequential_chunks(snap: Snap, chunks: Iterable[int], *, sync: bool = False) -> int:
    """Whole-chunk writes. With sync (O_SYNC) an overflow shows as EIO on the write
    itself, and the writes stop there. Returns how many got in."""
    cb = snap.chunk * 512
    done = 0
    fd = os.open(snap.node, os.O_WRONLY | (os.O_SYNC if sync else 0))
    try:
        for c in chunks:
            try:
                os.pwrite(fd, noise(cb), c * cb)
            except OSError:
                break
            done += 1
        if not sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    return done


# Several areas at chunk 8 here; the kernel-written fixtures below add 16 and 32.
@pytest.mark.parametrize(("chunk", "writes"), [(8, 500), (32, 200)])
def test_several_areas_and_partial_last_chunk(tmp_path: Path, chunk: int, writes: int) -> None:
    cb = chunk * 512
    # Not a whole number of chunks: the last chunk of the device is partial.
    size = 8 * MiB + 3 * 512
    rng, base, cow = base_and_cow(tmp_path, chunk, size, 12 * MiB)
    with snapshot(_name(), base, cow, chunk=chunk) as snap:
        scatter_writes(snap, rng, writes, size=size)
        # ...and the partial last chunk itself.
        fd = os.open(snap.node, os.O_WRONLY)
        os.pwrite(fd, b"\xee" * 512, size - 512)
        os.close(fd)
        live = kernel_sha(snap)
    report = read_store(cow)
    assert report.current_area >= 1 or chunk > 8, "the scenario must span several areas"
    with MergedView(base, cow) as view:
        assert (size - 1) // cb in view.exceptions()
    assert view_sha(base, cow) == live
    assert image_sha(base, cow, tmp_path) == live
    assert applied_sha(base, cow, tmp_path) == live


def test_store_reopened_and_written_again(tmp_path: Path) -> None:
    size = 8 * MiB
    rng, base, cow = base_and_cow(tmp_path, 7, size, 16 * MiB)
    with snapshot(_name(), base, cow) as snap:
        scatter_writes(snap, rng, 250, size=size)
    with snapshot(_name(), base, cow) as snap:
        scatter_writes(snap, rng, 250, size=size)
        live = kernel_sha(snap)
    assert view_sha(base, cow) == live


def test_reset_then_reused_with_stale_areas(tmp_path: Path) -> None:
    size = 16 * MiB
    _, base, cow = base_and_cow(tmp_path, 11, size, 8 * MiB)
    with snapshot(_name(), base, cow) as snap:
        assert sequential_chunks(snap, range(1400)) == 1400
    with open(cow, "r+b") as f:  # dracut's reset
        f.write(bytes(RESET_BYTES))
    with snapshot(_name(), base, cow) as snap:
        sequential_chunks(snap, range(3000, 3100))
        live = kernel_sha(snap)
    with open(cow, "rb") as f:
        f.seek(5 * 257 * 4096 + 4096)
        assert f.read(16).strip(b"\0"), "stale areas must remain beyond the reset"
    assert read_store(cow).exceptions == 100
    assert view_sha(base, cow) == live
    with snapshot(_name(), base, cow) as snap:  # what the next boot sees
        assert kernel_sha(snap) == live


def test_full_overflowed_po_store(tmp_path: Path) -> None:
    size = 8 * MiB
    _, base, cow = base_and_cow(tmp_path, 13, size, MiB)
    with snapshot(_name(), base, cow) as snap:
        got = sequential_chunks(snap, range(0, 2048, 3), sync=True)
        assert 0 < got < 1000
        assert snap.status_params() == "Overflow"
        live = kernel_sha(snap)  # PO refuses writes only: reads go on
    assert read_store(cow).state is StoreState.FULL
    assert view_sha(base, cow) == live
    with snapshot(_name(), base, cow) as snap:  # the boot after it
        assert kernel_sha(snap) == live


def test_duplicate_old_chunks_read_as_the_kernel_resolves_them(tmp_path: Path) -> None:
    rng = random.Random(17)
    base = random_base(tmp_path / "base", 4 * MiB, rng)
    cow = tmp_path / "cow"
    write_store(cow, MiB, [])
    # Damage: duplicates where the first entry wins, and where a later entry joins
    # an earlier run and so wins instead (merge.py's docstring).
    table = [(6, 40), (5, 10), (6, 11), (20, 12), (20, 30), (21, 13), (100, 41)]
    raw_table(cow, table)
    with open(cow, "r+b") as f:
        for _, new in table:
            f.seek(new * 4096)
            f.write(noise(4096))
    with MergedView(base, cow) as view:
        assert view.exceptions()[6] == 11
        assert view.exceptions()[20] == 12
    with snapshot(_name(), base, cow) as snap:
        live = kernel_sha(snap)
    assert view_sha(base, cow) == live
    assert applied_sha(base, cow, tmp_path) == live


def test_ext4_written_through_a_dracut_like_live_rw(tmp_path: Path) -> None:
    base = make_file(tmp_path / "rootfs.img", 32 * MiB)
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "os-release").write_text("NAME=base\n")
    (tree / "old.bin").write_bytes(noise(2 * MiB))
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "Live", "-d", str(tree), str(base)], check=True)
    cow = make_file(tmp_path / "overlay", 32 * MiB)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    # dracut's table: 0 <size> snapshot <base-loop> <overlay-loop> PO 8
    with snapshot("live-rw-" + _name(), base, cow, chunk=8, overflow=True) as snap:
        mount_tool.mount(snap.node, mnt, fstype="ext4", options="rw")
        try:
            (mnt / "home.txt").write_text("learner's work\n")
            (mnt / "big.bin").write_bytes(noise(3 * MiB))
            (mnt / "old.bin").unlink()
            (mnt / "etc" / "os-release").write_text("NAME=changed\n")
        finally:
            mount_tool.umount(mnt)
        live = kernel_sha(snap)
    assert read_store(cow).exceptions > 100
    assert view_sha(base, cow) == live
    assert image_sha(base, cow, tmp_path) == live
    assert applied_sha(base, cow, tmp_path) == live


# Each activation costs several tool runs, slow under TCG: the fixtures that add to the
# scenarios above (used-c8's shape is covered by the chunk-8 test).
FIXTURES = ["used-c16", "used-c32", "reopened-c8", "overflow-PO", "reset-reused"]


def test_kernel_written_fixture_stores(tmp_path: Path) -> None:
    # scripts/make-cow-fixtures wrote them over an all-zero 128 MiB base: reproducible.
    # These use at most its first 18 MiB; a shorter zero base shows the same chunks
    # and keeps the guest's hashing short.
    base = make_file(tmp_path / "base", 24 * MiB)
    for name in FIXTURES:
        cow = tmp_path / f"{name}.cow"
        with gzip.open(COW_FIXTURES / f"{name}.cow.gz", "rb") as src, open(cow, "wb") as dst:
            shutil.copyfileobj(src, dst)
        chunk = read_store(cow).chunk_sectors
        with snapshot(_name(), base, cow, chunk=chunk) as snap:
            live = kernel_sha(snap)
        assert view_sha(base, cow) == live, name
        cow.unlink()
