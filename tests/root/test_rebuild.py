"""The rebuild pipeline on real images (root, loop devices, ext4 and squashfs on the host).

The stick: LiveOS/squashfs.img (real mksquashfs, lz4) holding LiveOS/rootfs.img (ext4),
and an overlay that turns that base into a second image the host kernel wrote: a copy
of the base, loop-mounted, changed (a file added, a base file deleted, a file written
and deleted), unmounted. The overlay holds exactly the 4 KiB chunks that differ, laid
out like the kernel's store (tests/support/store_writer.py). So the merged view must
equal the changed image byte for byte; the guest tests prove the view against the
kernel's own snapshot device.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from liveos_tools import mounts
from liveos_tools.errors import CorruptError, ExitCode, NoSpaceError
from liveos_tools.media import ImageLayout, open_medium
from liveos_tools.merge import merged, open_base
from liveos_tools.rebuild import (
    check_clean,
    make_squashfs,
    remove_scratch,
    scratch_image,
    squashfs_compressor,
    zero_free_blocks,
)
from liveos_tools.tools import losetup
from liveos_tools.tools.squashfs import read_superblock
from tests.support.store_writer import write_store

MiB = 1024 * 1024
CB = 4096
KEPT = b"LEARNER-KEPT-" * 300  # added through the overlay, must survive
DOOMED = b"BASE-DOOMED-" * 300  # in the base, deleted through the overlay
FLEETING = b"WRITTEN-THEN-GONE-" * 300  # written and deleted through the overlay


def sh(*argv: str | Path) -> str:
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True).stdout.decode()


def sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MiB):
            h.update(block)
    return h.hexdigest()


@dataclass
class Stick:
    root: Path
    squashfs: Path
    overlay: Path
    base: Path  # the base rootfs.img (a copy kept outside the squashfs)
    changed: Path  # the image the overlay turns the base into


@contextlib.contextmanager
def _mounted(image: Path, where: Path) -> Iterator[Path]:
    where.mkdir(exist_ok=True)
    sh("mount", "-o", "loop", image, where)
    try:
        yield where
    finally:
        sh("umount", where)


def _change(image: Path, mnt: Path, *, dirty_copy: Path | None = None) -> None:
    """Change the filesystem through the host kernel; optionally copy it while mounted
    (after a sync), the way a stick pulled from a running system holds it."""
    with _mounted(image, mnt):
        (mnt / "home.txt").write_bytes(KEPT)
        (mnt / "doomed.bin").unlink()
        (mnt / "fleeting.bin").write_bytes(FLEETING)
        os.sync()
        (mnt / "fleeting.bin").unlink()
        (mnt / "etc" / "os-release").write_text("NAME=changed\n")
        os.sync()
        if dirty_copy is not None:
            shutil.copyfile(image, dirty_copy)


def _store_from_diff(base: Path, changed: Path, overlay: Path) -> int:
    chunks = []
    with open(base, "rb") as a, open(changed, "rb") as b:
        chunk = 0
        while True:
            x, y = a.read(CB), b.read(CB)
            if not x and not y:
                break
            if x != y:
                chunks.append((chunk, y))
            chunk += 1
    write_store(overlay, (len(chunks) + len(chunks) // 256 + 16) * CB, chunks)
    return len(chunks)


def build_stick(tmp: Path, *, dirty: bool = False) -> Stick:
    tree = tmp / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "os-release").write_text("NAME=base\n")
    (tree / "doomed.bin").write_bytes(DOOMED)
    (tree / "data.bin").write_bytes(os.urandom(3 * MiB))
    base = tmp / "base-rootfs.img"
    with open(base, "wb") as f:
        f.truncate(64 * MiB)
    # 4 KiB blocks like a real rootfs.img (mke2fs picks 1 KiB for one this small).
    sh("mkfs.ext4", "-q", "-F", "-b", "4096", "-L", "Root", "-d", tree, base)
    changed = tmp / "changed.img"
    shutil.copyfile(base, changed)
    if dirty:
        scratch = tmp / "mounted.img"
        shutil.copyfile(base, scratch)
        _change(scratch, tmp / "mnt", dirty_copy=changed)
        scratch.unlink()
    else:
        _change(changed, tmp / "mnt")
    stick = tmp / "stick"
    (stick / "LiveOS").mkdir(parents=True)
    stage = tmp / "stage"
    (stage / "LiveOS").mkdir(parents=True)
    os.link(base, stage / "LiveOS" / "rootfs.img")
    squashfs = stick / "LiveOS" / "squashfs.img"
    sh("mksquashfs", stage, squashfs, "-comp", "lz4", "-no-progress", "-quiet")
    shutil.rmtree(stage)
    overlay = stick / "LiveOS" / "overlay-Stick-1234-5678"
    assert _store_from_diff(base, changed, overlay) > 10
    return Stick(stick, squashfs, overlay, base, changed)


def free_block_ranges(image: Path) -> list[tuple[int, int]]:
    """[first, last] free block ranges from dumpe2fs's per-group "Free blocks:" lines."""
    out = []
    for line in sh("dumpe2fs", image).splitlines():
        m = re.match(r"\s+Free blocks: (.*)", line)
        if not m:
            continue
        for part in filter(None, (p.strip() for p in m.group(1).split(","))):
            lo, _, hi = part.partition("-")
            out.append((int(lo), int(hi or lo)))
    return out


def test_whole_pipeline_on_a_real_stick(tmp_path: Path) -> None:
    stick = build_stick(tmp_path)
    workdir = tmp_path / "work"
    workdir.mkdir()
    seen: list[tuple[int, int]] = []
    with open_medium(str(stick.root)) as medium:
        assert medium.image_layout is ImageLayout.NESTED
        with merged(medium) as view:
            mountpoint = Path(view.base_path).parent.parent
            assert mountpoint.is_dir()
            # the fast road: unsquashfs unpacks the base, the overlay's chunks go over it
            assert view.packed_base == (stick.squashfs, "LiveOS/rootfs.img")
            image = scratch_image(view, workdir, progress=lambda d, t: seen.append((d, t)))
            exc_bytes = len(view.exceptions()) * CB
            # ...and the plain road (write_image) gives the same bytes
            view.packed_base = None
            plain = scratch_image(view, workdir)
    # open_base let go of everything: mount point gone, squashfs.img not attached.
    assert not mountpoint.exists()
    assert not losetup.find_by_file(stick.squashfs)
    assert exc_bytes > 0
    assert seen[-1] == (64 * MiB + exc_bytes, 64 * MiB + exc_bytes)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert sha(plain) == sha(image)
    remove_scratch(plain)
    assert image.relative_to(workdir).parts[1:] == ("LiveOS", "rootfs.img")

    assert sha(image) == sha(stick.changed), "the merged view is the changed image"
    data = image.read_bytes()
    assert KEPT in data and DOOMED in data and FLEETING in data

    check_clean(image)
    before = image.read_bytes()
    zero_free_blocks(image)
    data = image.read_bytes()
    assert KEPT in data
    assert DOOMED not in data, "deleted base data must not be shipped"
    assert FLEETING not in data, "deleted overlay data must not be shipped"
    fsck = subprocess.run(["e2fsck", "-f", "-n", str(image)], capture_output=True)
    assert fsck.returncode == 0, fsck.stdout.decode()
    # Only free blocks changed (4 KiB blocks: CB is the filesystem's block size)...
    free = free_block_ranges(image)
    changed_blocks = [
        b
        for b in range(len(data) // CB)
        if data[b * CB : (b + 1) * CB] != before[b * CB : (b + 1) * CB]
    ]
    assert changed_blocks, "zeroing must have had something to do"
    # ...or the superblock and group descriptors (e2fsck records its check there).
    not_free = [b for b in changed_blocks if not any(lo <= b <= hi for lo, hi in free)]
    assert not_free in ([], [0], [0, 1]), not_free
    assert os.stat(image).st_blocks * 512 < len(data) // 2

    assert squashfs_compressor(stick.squashfs) == "lz4"
    dest = tmp_path / "out" / "squashfs.img.new"
    dest.parent.mkdir()
    sq_seen: list[tuple[int, int]] = []
    make_squashfs(image, dest, compressor="lz4", progress=lambda d, t: sq_seen.append((d, t)))
    assert sq_seen[-1] == (64 * MiB, 64 * MiB)
    assert read_superblock(dest).compressor == "lz4"
    assert [p.name for p in image.parent.parent.iterdir()] == ["LiveOS"], "staging tree left"

    listing = sh("unsquashfs", "-l", "-d", "", dest).split()
    assert [p for p in listing if p.startswith("/")] == ["/LiveOS", "/LiveOS/rootfs.img"]
    sh("unsquashfs", "-no-progress", "-d", tmp_path / "x", dest)
    unpacked = tmp_path / "x" / "LiveOS" / "rootfs.img"
    assert sha(unpacked) == sha(image)
    with _mounted(unpacked, tmp_path / "check") as mnt:
        assert (mnt / "home.txt").read_bytes() == KEPT
        assert (mnt / "etc" / "os-release").read_text() == "NAME=changed\n"
        assert not (mnt / "doomed.bin").exists()
        assert len((mnt / "data.bin").read_bytes()) == 3 * MiB
    remove_scratch(image)
    assert list(workdir.iterdir()) == []


def test_a_dirty_journal_is_replayed_on_the_scratch_copy(tmp_path: Path) -> None:
    stick = build_stick(tmp_path, dirty=True)
    state = sh("dumpe2fs", "-h", stick.changed)
    assert "needs_recovery" in state, "the copy should need journal recovery"
    with open_medium(str(stick.root)) as medium, merged(medium) as view:
        image = scratch_image(view, tmp_path)
    check_clean(image)
    zero_free_blocks(image)
    assert "needs_recovery" not in sh("dumpe2fs", "-h", image)
    data = image.read_bytes()
    assert KEPT in data and DOOMED not in data
    assert subprocess.run(["e2fsck", "-f", "-n", str(image)], capture_output=True).returncode == 0


def test_damage_preen_will_not_fix_is_corrupt_exit_10(tmp_path: Path) -> None:
    stick = build_stick(tmp_path)
    with open_medium(str(stick.root)) as medium, merged(medium) as view:
        image = scratch_image(view, tmp_path)
    # Two files claiming the same block: e2fsck -p stops ("UNEXPECTED INCONSISTENCY").
    stat = sh("debugfs", "-R", "blocks /data.bin", image).split()
    sh("debugfs", "-w", "-R", f"set_inode_field /home.txt block[0] {stat[0]}", image)
    with pytest.raises(CorruptError) as exc:
        check_clean(image)
    assert exc.value.code == ExitCode.CORRUPT
    assert exc.value.hint is not None and "repair" in exc.value.hint


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    img = tmp_path / "small.img"
    with open(img, "wb") as f:
        f.truncate(8 * MiB)
    sh("mkfs.ext4", "-q", "-F", img)
    where = tmp_path / "small"
    with _mounted(img, where) as mounted:
        yield mounted


def test_workdir_without_room_is_exit_6_before_writing(tmp_path: Path, small_fs: Path) -> None:
    stick = build_stick(tmp_path)
    with (
        open_medium(str(stick.root)) as medium,
        merged(medium) as view,
        pytest.raises(NoSpaceError) as exc,
    ):
        scratch_image(view, small_fs)
    assert exc.value.code == ExitCode.NO_SPACE
    assert int(exc.value.code) == 6
    assert re.search(r"MiB needed, .* free", exc.value.message)
    assert sorted(p.name for p in small_fs.iterdir()) == ["lost+found"]


def test_mksquashfs_out_of_space_leaves_no_partial_image(tmp_path: Path, small_fs: Path) -> None:
    image = tmp_path / "LiveOS" / "rootfs.img"
    image.parent.mkdir()
    image.write_bytes(os.urandom(16 * MiB))  # incompressible: cannot fit in 8 MiB
    dest = small_fs / "squashfs.img.new"
    with pytest.raises(NoSpaceError):
        make_squashfs(image, dest, compressor="lz4")
    assert not dest.exists()
    assert sorted(p.name for p in image.parent.iterdir()) == ["rootfs.img"]


def test_open_base_lets_go_when_the_body_fails(tmp_path: Path) -> None:
    stick = build_stick(tmp_path)
    seen: list[Path] = []
    with (
        open_medium(str(stick.root)) as medium,
        pytest.raises(RuntimeError),
        open_base(medium) as rootfs,
    ):
        seen.append(rootfs)
        assert rootfs.is_file()
        raise RuntimeError("boom")
    where = seen[0].parent.parent
    assert not where.exists()
    assert not losetup.find_by_file(stick.squashfs)
    assert not [m for m in mounts.mounts() if m.mountpoint == str(where)]
