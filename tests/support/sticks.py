"""Build real LiveOS stick images for tests, in userspace (no root, no mounts).

    tree = stick_tree(tmp, label="SOAS", uuid=UUID, overlay="used-c8")
    ext4_image(tree, tmp / "stick.img", label="SOAS", uuid=UUID)       # a filesystem image
    disk_image(tmp / "disk.img", ..., fs="vfat")                          # with a partition table

Overlays come from the kernel-written fixtures (tests/fixtures/cow), so what the
tests read is what the real kernel wrote.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

from tests.support.shell import MiB, sh

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def fixture_overlay(name: str, dest: Path) -> Path:
    with gzip.open(FIXTURES / "cow" / f"{name}.cow.gz", "rb") as src, open(dest, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return dest


def rootfs_image(path: Path, files: dict[str, str] | None = None, size: int = 16 * MiB) -> Path:
    tree = path.parent / (path.name + ".tree")
    for rel, text in (files or {"etc/os-release": "NAME=Test\n"}).items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(text)
    sparse(path, size)
    sh("mkfs.ext4", "-q", "-F", "-L", "Test-Live", "-d", tree, path)
    shutil.rmtree(tree)
    return path


def stick_tree(
    work: Path,
    *,
    label: str,
    uuid: str,
    overlay: str | None = "used-c8",
    layout: str = "nested",
    livedir: str = "LiveOS",
    home: bool = True,
    swap: bool = False,
    overlay_name: str | None = None,
) -> Path:
    """The files of a LiveOS stick in a directory (to put in an image or use as is)."""
    tree = work / "stick-tree"
    live = tree / livedir
    live.mkdir(parents=True)
    if layout == "uncompressed":
        rootfs_image(live / "rootfs.img")
    else:
        src = work / "squash-src"
        if layout == "nested":
            (src / "LiveOS").mkdir(parents=True)
            rootfs_image(src / "LiveOS" / "rootfs.img")
        else:  # flat: the root tree itself
            (src / "etc").mkdir(parents=True)
            (src / "etc" / "os-release").write_text("NAME=Flat\n")
        sh("mksquashfs", src, live / "squashfs.img", "-quiet", "-noappend")
        shutil.rmtree(src)
    if overlay is not None:
        fixture_overlay(overlay, live / (overlay_name or f"overlay-{label}-{uuid}"))
    if home:
        sparse(live / "home.img", 8 * MiB)
        sh("mkfs.ext4", "-q", "-F", "-L", "HOME", live / "home.img")
    if swap:
        sparse(live / "swap.img", 4 * MiB)
        sh("mkswap", live / "swap.img")
    return tree


def ext4_image(tree: Path, path: Path, *, label: str, uuid: str, size: int = 96 * MiB) -> Path:
    sparse(path, size)
    sh("mkfs.ext4", "-q", "-F", "-L", label, "-U", uuid, "-d", tree, path)
    return path


def fat_volume_id(uuid: str) -> str:
    """vfat 'UUIDs' are a 32-bit volume id printed as XXXX-XXXX."""
    return uuid.replace("-", "").upper()


def disk_image(
    path: Path, tree: Path, *, label: str, uuid: str, fs: str = "ext4", size: int = 128 * MiB
) -> Path:
    """A whole-disk image: an msdos partition table with one partition holding `tree`."""
    start = 1 * MiB
    sparse(path, size)
    subprocess.run(
        ["sfdisk", "-q", str(path)],
        input=f"start=2048, type={'c' if fs == 'vfat' else '83'}\n",
        text=True,
        check=True,
        capture_output=True,
    )
    part = path.with_suffix(".part")
    if fs == "ext4":
        ext4_image(tree, part, label=label, uuid=uuid, size=size - start)
    else:
        sparse(part, size - start)
        sh("mkfs.fat", "-F", "32", "-n", label, "-i", fat_volume_id(uuid), part)
        sh("mcopy", "-s", "-i", part, *sorted(tree.iterdir()), "::/")
    with open(path, "r+b") as disk, open(part, "rb") as src:
        disk.seek(start)
        shutil.copyfileobj(src, disk, 1 << 20)
    part.unlink()
    return path
