"""ext4map against debugfs on real images of every layout mke2fs makes (no root needed).

For every block: in use exactly when debugfs `testb` says so; owned by the inode
debugfs `icheck` names (directories and the journal as metadata); blocks icheck finds
no inode for are superblocks, descriptors, bitmaps or inode tables. Paths match `ncheck`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from liveos_tools.errors import CorruptError
from liveos_tools.ext4map import META_BY_CODE, Ext4Map, Meta, parse_superblock
from tests.support.space_images import batched, debugfs, make_tree

pytestmark = pytest.mark.skipif(shutil.which("debugfs") is None, reason="needs e2fsprogs")

FILES = {
    "/bin/tiny": 10,
    "/bin/small": 5000,
    "/usr/lib/mid.so": 70_000,
    "/usr/lib/big.bin": 1_300_000,  # double-indirect with 1 KiB blocks
    "/var/log/x.log": 20_000,
    "/home/u/doc.txt": 3000,
}
LAYOUTS = {
    "ext4-4k": ("mkfs.ext4", "-b", "4096"),
    "ext4-1k": ("mkfs.ext4", "-b", "1024"),
    "ext4-meta_bg": ("mkfs.ext4", "-b", "1024", "-O", "meta_bg,^resize_inode"),
    "ext4-no-flex": ("mkfs.ext4", "-b", "4096", "-O", "^flex_bg"),
    "ext4-inline": ("mkfs.ext4", "-b", "4096", "-O", "inline_data"),
    "ext3": ("mkfs.ext3", "-b", "1024"),
    "ext2": ("mkfs.ext2", "-b", "4096"),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_owners_matchdebugfs(tmp_path: Path, layout: str) -> None:
    tree = tmp_path / "tree"
    make_tree(tree, FILES)
    for i in range(300):  # a directory big enough for an htree index (dir_index)
        (tree / "many" / f"entry-with-a-long-name-{i:04d}").parent.mkdir(exist_ok=True)
        (tree / "many" / f"entry-with-a-long-name-{i:04d}").write_bytes(b"y" * (i % 7))
    os.symlink("/usr/lib/mid.so", tree / "bin/fastlink")
    os.symlink("/" + "x" * 200, tree / "bin/slowlink")
    image = tmp_path / "fs.img"
    mkfs, *opts = LAYOUTS[layout]
    subprocess.run(
        [mkfs, "-q", "-F", *opts, "-d", str(tree), str(image), "24M"],
        check=True,
        capture_output=True,
    )
    with open(image, "rb") as f:
        fs = Ext4Map(lambda n, o: os.pread(f.fileno(), n, o), os.path.getsize(image))
        fs.paths()
    n = fs.sb.blocks_count
    first = fs.sb.first_data_block
    text = debugfs(image, f"testb {max(first, 1)} {n - max(first, 1)}")
    used = {int(b) for b in re.findall(r"Block (\d+) marked in use", text)}
    for b in range(max(first, 1), n):
        assert fs.in_use(b) == (b in used), b
    blocks = sorted(used)
    text = debugfs(image, *batched("icheck", blocks))
    owners = {int(b): who for b, who in re.findall(r"^(\d+)\t(.*)$", text, re.M)}
    for b in blocks:
        code, who = fs.owner[b], owners[b]
        meta = META_BY_CODE.get(code)
        if who == "<block not found>":
            assert meta in (Meta.SUPERBLOCK, Meta.BITMAPS, Meta.INODE_TABLES), (b, meta)
        elif meta is Meta.DIRECTORIES:
            assert debugfs(image, f"stat <{who}>").find("Type: directory") >= 0, (b, who)
        elif meta is Meta.JOURNAL:
            assert who == "8", b
        elif meta is Meta.SUPERBLOCK:
            assert who == "7", b  # the resize inode's reserved descriptor blocks
        else:
            assert str(code) == who, (b, code, who)
    paths = fs.paths()
    inos = sorted(paths)
    text = debugfs(image, *batched("ncheck", inos))
    names: dict[int, set[str]] = {}
    for ino, path in re.findall(r"^(\d+)\t(/.*)$", text, re.M):
        names.setdefault(int(ino), set()).add(path)
    assert paths and all(p in names[i] for i, p in paths.items())
    for rel in FILES:
        assert rel in paths.values(), rel


def test_not_ext_is_refused() -> None:
    with pytest.raises(CorruptError, match="not ext2/3/4"):
        parse_superblock(bytes(1024))


def test_damaged_superblock_is_refused(tmp_path: Path) -> None:
    image = tmp_path / "fs.img"
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image), "8M"], check=True, capture_output=True)
    raw = bytearray(image.read_bytes()[1024:2048])
    raw[0x20:0x24] = (0).to_bytes(4, "little")  # blocks per group
    with pytest.raises(CorruptError, match="impossible"):
        parse_superblock(bytes(raw))
