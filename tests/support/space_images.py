"""Helpers for du/compact tests: ext images, their changed copies, and stores made from them.

`diff_store` turns (base image, changed image) into a snapshot store holding every chunk
that differs, plus chosen chunks copied unchanged (what the kernel stores when a block is
rewritten with the same bytes), written with liveos_tools.cowwrite.
"""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

from liveos_tools.cow import Geometry
from liveos_tools.cowwrite import write_store


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
