"""`du` and `compact` through the CLI on a stick directory (uncompressed rootfs.img).

The kernel's acceptance of the compacted store is proven in the guest
(tests/guest/test_space_kernel.py); here: the plan, the result read back through the
merged view against the image the host kernel wrote, --restore byte for byte, and a
SIGKILL at every step.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from liveos_tools.cow import StoreState, read_store
from liveos_tools.ext4map import Ext4Map
from liveos_tools.merge import MergedView
from tests.support import killable
from tests.support.space_images import build_scenario

OVERLAY = "overlay-STICK-1234"


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*killable.argv_prefix(env), *args],
        capture_output=True,
        text=True,
        env=killable.child_env(env),
        timeout=300,
    )


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def stick(tmp_path: Path) -> dict[str, Path]:
    sc = build_scenario(tmp_path / "sc", 4096)
    root = tmp_path / "stick"
    (root / "LiveOS").mkdir(parents=True)
    base, store, changed = sc["base"], sc["store"], sc["changed"]
    assert isinstance(base, Path) and isinstance(store, Path) and isinstance(changed, Path)
    shutil.copyfile(base, root / "LiveOS/rootfs.img")
    shutil.copyfile(store, root / "LiveOS" / OVERLAY)
    return {"root": root, "overlay": root / "LiveOS" / OVERLAY, "changed": changed}


def _same_as_changed(rootfs: Path, overlay: Path, changed: Path) -> None:
    """Every in-use block of the image the host kernel wrote reads the same through
    the (new) store."""
    fd = os.open(changed, os.O_RDONLY)
    try:
        fs = Ext4Map(lambda n, o: os.pread(fd, n, o))
        bs = fs.sb.block_size
        with MergedView(rootfs, overlay) as view:
            for b in range(fs.sb.blocks_count):
                if fs.in_use(b):
                    assert view.pread(bs, b * bs) == os.pread(fd, bs, b * bs), b
    finally:
        os.close(fd)


def test_du_then_compact_then_restore(stick: dict[str, Path]) -> None:
    root, overlay, changed = stick["root"], stick["overlay"], stick["changed"]
    before = _sha(overlay)
    res = _cli("du", str(root), "--json")
    assert res.returncode == 0, res.stderr
    du1 = json.loads(res.stdout)
    assert du1["reclaimable"]["unchanged"] == 3 * 4096
    reclaim = du1["reclaimable_bytes"]
    assert reclaim > 75 * 4096

    res = _cli("economize", str(root), "--json")
    assert res.returncode == 0, res.stderr
    costs = {c["path"]: c["bytes"] for c in json.loads(res.stdout)["consumers"]}
    assert costs["/home"] == (-(-40_000 // 4096) + -(-123_457 // 4096)) * 4096
    assert costs["/var/log"] == 2 * 4096  # z.log, 8 KiB

    res = _cli("compact", str(root), "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "gives back" in res.stderr and _sha(overlay) == before

    res = _cli("compact", str(root), "--yes")
    assert res.returncode == 0, res.stderr
    assert (root / "LiveOS" / f"{OVERLAY}.before-compact").is_file()
    assert _sha(root / "LiveOS" / f"{OVERLAY}.before-compact") == before
    rep = read_store(overlay, full=True)
    assert rep.state is StoreState.VALID
    assert rep.size_bytes == os.path.getsize(root / "LiveOS" / f"{OVERLAY}.before-compact")
    assert rep.exceptions * 4096 == du1["data_bytes"] - reclaim
    _same_as_changed(root / "LiveOS/rootfs.img", overlay, changed)

    res = _cli("du", str(root), "--json")
    du2 = json.loads(res.stdout)
    assert du2["reclaimable_bytes"] == 0
    assert du2["top_files"] == du1["top_files"] and du2["files_bytes"] == du1["files_bytes"]

    res = _cli("compact", str(root), "--yes")
    assert res.returncode == 2 and "before-compact" in res.stderr  # one backup at a time

    res = _cli("compact", str(root), "--restore", "--yes")
    assert res.returncode == 0, res.stderr
    assert _sha(overlay) == before
    assert sorted(p.name for p in (root / "LiveOS").iterdir()) == [OVERLAY, "rootfs.img"]


@pytest.mark.parametrize("point", ["compact-written", "compact-verified", "compact-exchanged"])
def test_sigkill_leaves_old_or_new(stick: dict[str, Path], point: str) -> None:
    root, overlay, changed = stick["root"], stick["overlay"], stick["changed"]
    before = _sha(overlay)
    res = _cli("compact", str(root), "--yes", env={"LIVEOS_TEST_KILL_AT": point})
    assert res.returncode == -9, res.stderr
    if _sha(overlay) != before:  # the new store is in place: whole and valid
        assert read_store(overlay, full=True).state is StoreState.VALID
        _same_as_changed(root / "LiveOS/rootfs.img", overlay, changed)
    # the next command settles what the kill left, and restore brings the old one back
    res = _cli("compact", str(root), "--restore", "--yes")
    if res.returncode == 0:
        assert _sha(overlay) == before
    else:  # killed before the switch: there was nothing to undo
        assert res.returncode == 4 and "no compact to undo" in res.stderr, res.stderr
    res = _cli("compact", str(root), "--yes")
    assert res.returncode == 0, res.stderr
    _same_as_changed(root / "LiveOS/rootfs.img", overlay, changed)
    names = {p.name for p in (root / "LiveOS").iterdir()}
    assert names == {OVERLAY, f"{OVERLAY}.before-compact", f".{OVERLAY}.compact.json", "rootfs.img"}


@pytest.mark.parametrize("point", ["compact-written:INT", "compact-verified:INT"])
def test_ctrl_c_leaves_the_old_store(stick: dict[str, Path], point: str) -> None:
    root, overlay = stick["root"], stick["overlay"]
    before = _sha(overlay)
    res = _cli("compact", str(root), "--yes", env={"LIVEOS_TEST_KILL_AT": point})
    assert res.returncode == 9, res.stderr
    assert "Traceback" not in res.stderr
    if point.startswith("compact-written"):  # before the record: nothing is left behind
        assert _sha(overlay) == before
        assert {p.name for p in (root / "LiveOS").iterdir()} == {OVERLAY, "rootfs.img"}
    res = _cli("compact", str(root), "--yes")  # and the next run completes
    assert res.returncode == 0, res.stderr
    assert _sha(root / "LiveOS" / f"{OVERLAY}.before-compact") == before
