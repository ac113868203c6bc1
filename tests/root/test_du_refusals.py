"""du and compact on bad input: one error line, a hint, the documented exit code, no change."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from liveos_tools.cow import Geometry
from liveos_tools.cowwrite import write_store
from liveos_tools.errors import ExitCode, InUseError
from liveos_tools.media import Source, open_medium
from liveos_tools.tasks import compact
from tests.root.test_du_compact_host import OVERLAY
from tests.root.test_maintain_refusals import assert_refused, cli, ext4_stick_mount
from tests.support.space_images import build_scenario


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    return build_scenario(tmp_path_factory.mktemp("du-refusals"), 4096)


def _stick(where: Path, scenario: dict[str, object], *, link: bool = False) -> Path:
    base, store = scenario["base"], scenario["store"]
    assert isinstance(base, Path) and isinstance(store, Path)
    (where / "LiveOS").mkdir(parents=True)
    if link:  # the base stays where it is (read only): the stick holds just the overlay
        (where / "LiveOS/rootfs.img").symlink_to(base)
    else:
        shutil.copyfile(base, where / "LiveOS/rootfs.img")
    shutil.copyfile(store, where / "LiveOS" / OVERLAY)
    return where


def test_base_not_ext(tmp_path: Path) -> None:
    root = tmp_path / "s"
    (root / "LiveOS").mkdir(parents=True)
    rootfs = root / "LiveOS/rootfs.img"
    rootfs.write_bytes(b"\x55" * (8 << 20))  # no ext superblock
    write_store(
        root / "LiveOS" / OVERLAY,
        Geometry(8, 64 * 4096),
        [(10, b"a" * 4096), (11, b"b" * 4096)],
    )
    before = _hashes(root)
    assert_refused(cli("du", root), ExitCode.CORRUPT, "not ext2/3/4")
    assert_refused(cli("compact", root, "--yes"), ExitCode.CORRUPT, "not ext2/3/4")
    assert _hashes(root) == before


def test_corrupt_overlay(tmp_path: Path, scenario: dict[str, object]) -> None:
    root = _stick(tmp_path / "s", scenario)
    with open(root / "LiveOS" / OVERLAY, "r+b") as f:
        f.seek(4096 + 8)  # the first exception's new_chunk: past the end of the store
        f.write((1 << 40).to_bytes(8, "little"))
    before = _hashes(root)
    assert_refused(cli("du", root), ExitCode.CORRUPT, "past the end")
    assert_refused(cli("compact", root, "--yes"), ExitCode.CORRUPT, "past the end")
    assert _hashes(root) == before


def test_damaged_squashfs(tmp_path: Path, scenario: dict[str, object]) -> None:
    root = _stick(tmp_path / "s", scenario)
    (root / "LiveOS/rootfs.img").unlink()
    (root / "LiveOS/squashfs.img").write_bytes(b"hsqs" + bytes(8188))
    before = _hashes(root)
    res = cli("du", root)
    assert res.returncode in (ExitCode.CORRUPT, ExitCode.USAGE), res.stderr
    assert "Traceback" not in res.stderr and res.stderr.startswith("error: ")
    assert _hashes(root) == before


def test_compact_without_room(tmp_path: Path, scenario: dict[str, object]) -> None:
    store = scenario["store"]
    assert isinstance(store, Path)
    with ext4_stick_mount(tmp_path, 3 * 1024 * 1024) as mnt:
        root = _stick(mnt / "s", scenario, link=True)
        # fill the stick so that the new store (as big as the old) cannot fit beside it
        free = shutil.disk_usage(mnt).free
        (mnt / "filler").write_bytes(bytes(max(0, free - store.stat().st_size // 2)))
        before = _hashes(root)
        res = cli("compact", root, "--yes")
        assert_refused(res, ExitCode.NO_SPACE, "free")
        assert _hashes(root) == before


def test_compact_refuses_an_attached_overlay(tmp_path: Path, scenario: dict[str, object]) -> None:
    root = _stick(tmp_path / "s", scenario)
    loop = subprocess.run(
        ["losetup", "--find", "--show", str(root / "LiveOS" / OVERLAY)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        assert_refused(cli("compact", root, "--yes"), ExitCode.IN_USE, "in use")
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)


def test_compact_refuses_the_running_system(tmp_path: Path, scenario: dict[str, object]) -> None:
    root = _stick(tmp_path / "s", scenario)
    with open_medium(str(root)) as medium:
        live = medium._replace(source=Source.LIVE)
        with pytest.raises(InUseError, match="running live system"):
            compact.plan_compact(live)
