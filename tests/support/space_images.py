"""Helpers for du/compact tests: ext images, their changed copies, and stores made from them.

`diff_store` turns (base image, changed image) into a snapshot store holding every chunk
that differs, plus chosen chunks copied unchanged (what the kernel stores when a block is
rewritten with the same bytes), written with liveos_tools.cowwrite.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

from liveos_tools.cow import Geometry
from liveos_tools.cowwrite import write_store


def debugfs(image: Path, *requests: str) -> str:
    """debugfs's answers to several requests, one process (the test oracle of du)."""
    out = subprocess.run(
        ["debugfs", "-f", "-", str(image)],
        input="\n".join(requests) + "\n",
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "DEBUGFS_PAGER": "__none__"},
    )
    return out.stdout


def batched(command: str, items: list[int], size: int = 200) -> list[str]:
    """`command a b c ...` split into lines debugfs accepts (its lines are limited)."""
    return [
        f"{command} " + " ".join(map(str, items[i : i + size])) for i in range(0, len(items), size)
    ]


def make_tree(root: Path, files: dict[str, int], seed: int = 1) -> dict[str, bytes]:
    """Files of the given sizes with random bytes; returns path -> content."""
    rnd = random.Random(seed)
    out = {}
    for rel, size in files.items():
        p = root / rel.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        data = rnd.randbytes(size)
        p.write_bytes(data)
        out[rel] = data
    return out


def mkfs(image: Path, size_mib: int, tree: Path | None = None, *opts: str) -> None:
    argv = ["mkfs.ext4", "-q", "-F", *opts]
    if tree is not None:
        argv += ["-d", str(tree)]
    subprocess.run([*argv, str(image), f"{size_mib}M"], check=True, capture_output=True)


def diff_store(
    base: Path,
    changed: Path,
    store: Path,
    *,
    chunk_sectors: int = 8,
    size_bytes: int | None = None,
    extra_unchanged: list[int] = (),  # type: ignore[assignment]
) -> dict[int, bytes]:
    """Write `store`; returns old_chunk -> data of every exception in it."""
    cb = chunk_sectors * 512
    chunks: dict[int, bytes] = {}
    with open(base, "rb") as a, open(changed, "rb") as b:
        n = os.fstat(b.fileno()).st_size // cb
        for c in range(n):
            x, y = a.read(cb), b.read(cb)
            if x != y or c in extra_unchanged:
                chunks[c] = y
    total = size_bytes or (len(chunks) * 2 + 64) * cb
    write_store(store, Geometry(chunk_sectors, total), sorted(chunks.items()))
    return chunks


def build_scenario(tmp_path: Path, block: int) -> dict[str, object]:
    """base.img, changed.img (written through a real ext4 mount: needs root), and a
    store of their difference plus three unchanged chunks."""
    tree = tmp_path / "tree"
    base_files = make_tree(tree, {"/usr/lib/big.bin": 300_000, "/etc/conf": 5000}, seed=3)
    base = tmp_path / "base.img"
    mkfs(base, 64, tree, "-b", str(block))
    changed = tmp_path / "changed.img"
    shutil.copyfile(base, changed)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(changed), str(mnt)], check=True)
    try:
        kept = make_tree(
            mnt,
            {"/home/a/x.bin": 40_000, "/home/a/y.bin": 123_457, "/var/log/z.log": 8192},
            seed=4,
        )
        gone = make_tree(mnt, {"/tmp/junk/1.bin": 200_000, "/tmp/junk/2.bin": 100_000}, seed=5)
        subprocess.run(["sync"], check=True)
        for rel in gone:
            (mnt / rel.lstrip("/")).unlink()
        # overwrite a base file in place with new bytes (its blocks stay where they were)
        with open(mnt / "etc/conf", "r+b") as f:
            f.write(b"\xaa" * 5000)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    # the unchanged chunks: big.bin's first 3 blocks, as a rewrite with the same bytes
    out = subprocess.run(
        ["debugfs", "-R", "bmap /usr/lib/big.bin 0", str(base)],
        capture_output=True,
        text=True,
        check=True,
    )
    first = int(out.stdout.split()[-1])
    store = tmp_path / "overlay"
    chunks = diff_store(base, changed, store, extra_unchanged=[first, first + 1, first + 2])
    return {
        "base": base,
        "store": store,
        "changed": changed,
        "kept": kept,
        "chunks": chunks,
        "block": block,
        "base_files": base_files,
    }
