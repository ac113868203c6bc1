"""du on a base image and a store holding what the host kernel's ext4 wrote to a copy.

The changed copy is written through a real ext4 mount (the host kernel allocates the
blocks); the store holds every chunk that differs from the base, plus some unchanged
chunks, as the kernel keeps after a rewrite with identical bytes.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from liveos_tools.cow import read_store
from liveos_tools.ext4map import Meta
from liveos_tools.tasks import du
from tests.support.space_images import batched, build_scenario, debugfs

BS = 4096


def _blocks(n: int) -> int:
    return -(-n // BS)


@pytest.fixture(params=[4096, 1024], ids=["4k-blocks", "1k-blocks"])
def scenario(tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, object]:
    return build_scenario(tmp_path, request.param)


def oracle(base: Path, changed: Path, chunks: dict[int, bytes], bs: int) -> dict[str, int]:
    """The du rule computed with debugfs (testb, icheck, ncheck) on the merged image."""
    cb = 4096
    span = {c: list(range(c * cb // bs, ((c + 1) * cb - 1) // bs + 1)) for c in chunks}
    blocks = sorted({b for bl in span.values() for b in bl})
    text = debugfs(changed, *(f"testb {b}" for b in blocks))
    used = {int(b) for b in re.findall(r"Block (\d+) marked in use", text)}
    used.add(0)  # the boot block / superblock: debugfs's testb refuses block 0
    text = debugfs(changed, *batched("icheck", blocks))
    owners = {int(b): who for b, who in re.findall(r"^(\d+)\t(.*)$", text, re.M)}
    result = {"deleted": 0, "unchanged": 0, "other": 0}
    by_ino: dict[str, int] = {}
    with open(base, "rb") as f:
        for c, data in chunks.items():
            first = next((b for b in span[c] if b in used), None)
            f.seek(c * cb)
            if first is None:
                result["deleted"] += 1
            elif f.read(cb) == data:
                result["unchanged"] += 1
            elif owners[first].isdigit():
                by_ino[owners[first]] = by_ino.get(owners[first], 0) + 1
            else:
                result["other"] += 1
    names = {}
    text = debugfs(changed, *batched("ncheck", sorted(map(int, by_ino))))
    for ino, path in re.findall(r"^(\d+)\t(/.*)$", text, re.M):
        names.setdefault(ino, path)
    for ino, n in by_ino.items():
        key = names.get(ino, f"inode {ino}")
        result[key] = result.get(key, 0) + n
    return result


def test_du_attributes_every_chunk(scenario: dict[str, object]) -> None:
    base, store = scenario["base"], scenario["store"]
    assert isinstance(base, Path) and isinstance(store, Path)
    kept = scenario["kept"]
    assert isinstance(kept, dict)
    chunks = scenario["chunks"]
    assert isinstance(chunks, dict)
    rep = du.du_store(base, store, exact=True)
    du.check_sum(rep)
    # here no block the base had free was written back with the base's bytes, so the
    # default (compare only where the base used the blocks) finds the same
    assert du.du_store(base, store) == rep
    assert rep.data_chunks == len(chunks) == read_store(store).exceptions
    changed, bs = scenario["changed"], scenario["block"]
    assert isinstance(changed, Path) and isinstance(bs, int)
    want = oracle(base, changed, chunks, bs)
    assert rep.deleted_chunks == want.pop("deleted")
    assert rep.unchanged_chunks == want.pop("unchanged")
    for path, n in rep.files.items():
        assert want.pop(path) == n, path
    # what is left in the oracle is metadata: directories (icheck names their inode), the
    # journal (inode 8), superblocks, bitmaps and inode tables
    assert sum(want.values()) == rep.metadata_chunks
    assert rep.metadata[Meta.INODE_TABLES] > 0 and rep.metadata[Meta.DIRECTORIES] > 0
    if bs != BS:
        return
    # 4 KiB blocks = chunks: every block of a kept file is its own chunk
    for rel, data in kept.items():
        assert rep.files[rel] == _blocks(len(data)), rel
    assert rep.files["/etc/conf"] == 2
    assert rep.unchanged_chunks == 3
    assert rep.deleted_chunks >= _blocks(200_000) + _blocks(100_000)
    assert "/usr/lib/big.bin" not in rep.files
    js = rep.to_json(depth=1, top=2)
    assert js["data_bytes"] == len(chunks) * BS
    assert js["top_files"][0] == {"path": "/home/a/y.bin", "bytes": _blocks(123_457) * BS}
    dirs = {d["path"]: d["bytes"] for d in js["directories"]}
    assert dirs["/home"] == (_blocks(40_000) + _blocks(123_457)) * BS
    assert js["files_bytes"] + js["metadata_bytes"] + js["reclaimable_bytes"] == js["data_bytes"]
