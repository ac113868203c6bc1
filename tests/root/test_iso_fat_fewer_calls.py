"""The writer's batched mtools calls (issue 13, speed) against real FAT images: one mmd for
many directories, one mcopy for many files, one mshowfat for several paths, and the head of
a file read with one mshowfat must give what the one-by-one calls gave."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from liveos_tools.tools import mtools
from liveos_tools.writer.dest import FatDest

MIB = 1 << 20


def make_fat(path: Path, size_mib: int, bits: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size_mib * MIB)
    subprocess.run(
        ["mkfs.fat", "-F", str(bits), "-n", "T", str(path)], check=True, capture_output=True
    )


def dirs(img: Path) -> set[str]:
    out = subprocess.run(
        ["mdir", "-/", "-b", "-a", "-i", str(img), "::/"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {line[3:-1] for line in out.split() if line.endswith("/")}


@pytest.mark.parametrize("bits", [16, 32])
def test_mkdir_makes_every_level_once_and_keeps_existing(tmp_path: Path, bits: int) -> None:
    img = tmp_path / "fat.img"
    make_fat(img, 64, bits)
    subprocess.run(["mmd", "-i", str(img), "::/SYSLINUX"], check=True)  # another spelling
    subprocess.run(["mcopy", "-i", str(img), "-", "::/SYSLINUX/keep"], input=b"kept", check=True)
    d = FatDest(str(img), 0, tmp_path)
    d.mkdir("LiveOS", "syslinux", "EFI/BOOT", "images", "EFI/BOOT", ".")
    d.mkdir("a/b/c")
    assert dirs(img) == {"LiveOS", "SYSLINUX", "EFI", "EFI/BOOT", "images", "a", "a/b", "a/b/c"}
    keep = subprocess.run(
        ["mtype", "-i", str(img), "::/syslinux/keep"], check=True, capture_output=True
    ).stdout
    assert keep == b"kept"


def test_mkdir_falls_back_when_the_listing_is_stale(tmp_path: Path) -> None:
    img = tmp_path / "fat.img"
    make_fat(img, 64, 16)
    d = FatDest(str(img), 0, tmp_path)
    d.mkdir("x")
    subprocess.run(["mmd", "-i", str(img), "::/y"], check=True)  # behind the cache's back
    d.mkdir("y/z")  # the one mmd fails on y; the careful way makes y/z
    assert dirs(img) == {"x", "y", "y/z"}


def test_copy_many_clusters_many_and_read_head(tmp_path: Path) -> None:
    img = tmp_path / "fat.img"
    make_fat(img, 64, 32)
    srcs = []
    for name, size in (("one.c32", 5000), ("two.c32", 3 * MIB + 7), ("three.c32", 1)):
        p = tmp_path / name
        p.write_bytes(os.urandom(size))
        srcs.append(p)
    d = FatDest(str(img), 0, tmp_path)
    d.mkdir("syslinux")
    d.copy_host_files("syslinux", srcs)
    for p in srcs:
        got = subprocess.run(
            ["mtype", "-i", str(img), f"::/syslinux/{p.name}"], check=True, capture_output=True
        ).stdout
        assert got == p.read_bytes()
    paths = [f"syslinux/{p.name}" for p in srcs] + ["syslinux", "/"]
    assert mtools.clusters_many(img, 0, paths) == [mtools.clusters(img, 0, p) for p in paths]
    assert d.read_head("syslinux/two.c32", 64 * 1024) == srcs[1].read_bytes()[: 64 * 1024]
    # shorter than asked: every allocated cluster (the tail is the cluster's padding)
    head = d.read_head("syslinux/one.c32", 64 * 1024)
    assert head[:5000] == srcs[0].read_bytes()
    assert len(head) == d.allocated("syslinux/one.c32")
