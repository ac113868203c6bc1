"""Finding a LiveOS from every kind of target, on real images with real loop devices.

(b) a mounted stick directory, (c) a block device, (d) a disk image with a
partition table, (e) an overlay file. (a), the running live system, needs
device-mapper and is in tests/guest/test_locate_live.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from liveos_tools.cli.main import main
from liveos_tools.errors import ExitCode, TargetError
from liveos_tools.media import HomeKind, ImageLayout, OverlayKind, Source, open_medium
from liveos_tools.tasks.status import build_status
from tests.support.sticks import MiB, disk_image, ext4_image, sparse, stick_tree

UUID = "6f825b1f-336a-4c93-87a7-e05c2570d855"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def stick_img(tmp_path: Path) -> Path:
    tree = stick_tree(tmp_path, label="SOAS", uuid=UUID, overlay="used-c8", swap=True)
    return ext4_image(tree, tmp_path / "stick.img", label="SOAS", uuid=UUID)


@contextlib.contextmanager
def loop(path: Path, *args: str) -> Iterator[str]:
    dev = subprocess.run(
        ["losetup", "-f", "--show", *args, str(path)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=True)


@contextlib.contextmanager
def mounted(dev: str, where: Path) -> Iterator[Path]:
    where.mkdir()
    subprocess.run(["mount", "-o", "ro", dev, str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def check_medium(medium: object, source: Source) -> None:
    from liveos_tools.media import Medium

    assert isinstance(medium, Medium)
    assert medium.source is source
    assert medium.volume is not None
    assert (medium.volume.label, medium.volume.uuid) == ("SOAS", UUID)
    assert medium.overlay_path is not None
    assert medium.overlay_path.name == f"overlay-SOAS-{UUID}"
    assert medium.overlay_kind is OverlayKind.DM
    assert medium.overlay_name_problem is None
    assert medium.image_layout is ImageLayout.NESTED
    assert medium.home_kind is HomeKind.PLAIN
    assert medium.swap_path is not None
    report = build_status(medium)
    # used-c8's kernel status, recorded in tests/fixtures/cow/used-c8.json
    assert (report.overlay.sectors_allocated, report.overlay.total_sectors) == (4832, 8192)


def test_b_mounted_directory(stick_img: Path, tmp_path: Path) -> None:
    with loop(stick_img) as dev, mounted(dev, tmp_path / "mnt") as mnt:
        with open_medium(str(mnt)) as medium:
            check_medium(medium, Source.DIRECTORY)
        with open_medium(str(mnt / "LiveOS")) as medium:  # the LiveOS dir itself works too
            check_medium(medium, Source.DIRECTORY)


def test_c_block_device_unmounted_and_mounted(stick_img: Path, tmp_path: Path) -> None:
    before = sha(stick_img)
    with loop(stick_img) as dev:
        with open_medium(dev) as medium:
            check_medium(medium, Source.DEVICE)
        with mounted(dev, tmp_path / "mnt"), open_medium(dev) as medium:
            check_medium(medium, Source.DEVICE)
            assert medium.root == tmp_path / "mnt"  # reuses the existing mount
    assert sha(stick_img) == before, "reading a stick must not change it"


def test_d_disk_image_with_partition_table(tmp_path: Path) -> None:
    tree = stick_tree(tmp_path, label="SOAS", uuid=UUID, overlay="used-c8", swap=True)
    disk = disk_image(tmp_path / "disk.img", tree, label="SOAS", uuid=UUID, fs="ext4")
    before = sha(disk)
    with open_medium(str(disk)) as medium:
        check_medium(medium, Source.IMAGE)
    assert sha(disk) == before


def test_d_whole_disk_device(tmp_path: Path) -> None:
    tree = stick_tree(tmp_path, label="SOAS", uuid=UUID, overlay="used-c8", swap=True)
    disk = disk_image(tmp_path / "disk.img", tree, label="SOAS", uuid=UUID, fs="ext4")
    with loop(disk, "-P") as dev, open_medium(dev) as medium:
        check_medium(medium, Source.DEVICE)
        assert medium.volume is not None and medium.volume.device == f"{dev}p1"


def test_e_overlay_file(stick_img: Path, tmp_path: Path) -> None:
    overlay_in_stick = f"LiveOS/overlay-SOAS-{UUID}"
    with (
        loop(stick_img) as dev,
        mounted(dev, tmp_path / "mnt") as mnt,
        open_medium(str(mnt / overlay_in_stick)) as medium,
    ):
        check_medium(medium, Source.OVERLAY_FILE)
    # An overlay file on its own, away from any stick.
    lone = tmp_path / "copy-of-overlay"
    lone.write_bytes((tmp_path / "stick-tree" / "LiveOS" / f"overlay-SOAS-{UUID}").read_bytes())
    with open_medium(str(lone)) as medium:
        assert (medium.source, medium.overlay_kind, medium.root) == (
            Source.OVERLAY_FILE,
            OverlayKind.DM,
            None,
        )
        assert build_status(medium).overlay.sectors_allocated == 4832


def test_misnamed_overlay_is_reported(tmp_path: Path) -> None:
    tree = stick_tree(tmp_path, label="SOAS", uuid=UUID, overlay_name="overlay-OLD-1234")
    img = ext4_image(tree, tmp_path / "stick.img", label="SOAS", uuid=UUID)
    with open_medium(str(img)) as medium:
        assert medium.overlay_path is not None and medium.overlay_path.name == "overlay-OLD-1234"
        assert medium.overlay_name_problem is not None
        assert f"overlay-SOAS-{UUID}" in medium.overlay_name_problem
        report = build_status(medium)
        assert any("dracut will not find the overlay" in w for w in report.warnings)


@pytest.mark.parametrize(
    ("layout", "expected"),
    [("flat", ImageLayout.FLAT), ("uncompressed", ImageLayout.UNCOMPRESSED)],
)
def test_other_image_layouts(tmp_path: Path, layout: str, expected: ImageLayout) -> None:
    tree = stick_tree(tmp_path, label="SOAS", uuid=UUID, layout=layout, home=False)
    img = ext4_image(tree, tmp_path / "stick.img", label="SOAS", uuid=UUID)
    with open_medium(str(img)) as medium:
        assert medium.image_layout is expected
        assert medium.home_kind is HomeKind.ABSENT


def test_overlayfs_directory_overlay(tmp_path: Path) -> None:
    tree = stick_tree(tmp_path, label="SOAS", uuid=UUID, overlay=None, home=False)
    ovl = tree / "LiveOS" / f"overlay-SOAS-{UUID}"
    (ovl / "overlayfs" / "etc").mkdir(parents=True)
    (ovl / "overlayfs" / "etc" / "hostname").write_bytes(b"x" * 10000)
    (tree / "LiveOS" / "ovlwork").mkdir()
    img = ext4_image(tree, tmp_path / "stick.img", label="SOAS", uuid=UUID)
    with open_medium(str(img)) as medium:
        assert medium.overlay_kind is OverlayKind.OVERLAYFS_DIR
        overlay = build_status(medium).overlay
        assert overlay.used_bytes >= 10000 and overlay.read_from == "directory"


def test_cli_status_json_and_exit_codes(
    stick_img: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", str(stick_img), "--json"]) == ExitCode.OK
    doc = json.loads(capsys.readouterr().out)
    assert {
        k: doc[k]
        for k in (
            "state",
            "valid",
            "chunk_sectors",
            "exceptions",
            "sectors_allocated",
            "total_sectors",
            "metadata_sectors",
        )
    } == {
        "state": "valid",
        "valid": True,
        "chunk_sectors": 8,
        "exceptions": 600,
        "sectors_allocated": 4832,
        "total_sectors": 8192,
        "metadata_sectors": 32,
    }
    assert doc["medium"]["label"] == "SOAS" and doc["name_matches"] is True


@pytest.mark.parametrize(
    ("fixture", "code", "state"),
    [
        ("overflow-PO", ExitCode.BROKEN, "full"),
        ("invalid-P", ExitCode.BROKEN, "invalid"),
        ("demo-60pct", ExitCode.OK, "valid"),
        ("fresh-c8", ExitCode.OK, "valid"),
    ],
)
def test_cli_exit_code_per_state(
    tmp_path: Path,
    fixture: str,
    code: ExitCode,
    state: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tree = stick_tree(tmp_path, label="SOAS", uuid=UUID, overlay=fixture, home=False)
    img = ext4_image(tree, tmp_path / "stick.img", label="SOAS", uuid=UUID)
    assert main(["status", str(img), "--json"]) == code
    assert json.loads(capsys.readouterr().out)["state"] == state


def test_not_a_liveos(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty-tree"
    empty.mkdir()
    img = ext4_image(empty, tmp_path / "plain.img", label="DATA", uuid=UUID, size=16 * MiB)
    before = sha(img)
    assert main(["status", str(img)]) == ExitCode.BAD_TARGET
    err = capsys.readouterr().err
    assert err.startswith("error: no LiveOS directory on") and "hint:" in err
    assert sha(img) == before
    with pytest.raises(TargetError), open_medium(str(sparse(tmp_path / "zeros.img", 0))):
        pass


def test_a_filesystem_the_kernel_cannot_mount_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from liveos_tools.tools.mount import kernel_filesystems

    if "vfat" in kernel_filesystems():
        pytest.skip("this kernel mounts vfat; the guest tests cover vfat sticks")
    tree = stick_tree(tmp_path, label="SOAS", uuid="5A0B-C0DE", home=False)
    disk = disk_image(tmp_path / "disk.img", tree, label="SOAS", uuid="5A0B-C0DE", fs="vfat")
    before = sha(disk)
    assert main(["status", str(disk)]) == ExitCode.BAD_TARGET
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: this kernel cannot mount vfat filesystems")
    assert err[1] == "hint: load its module (modprobe vfat) or use a system with vfat support"
    assert sha(disk) == before


def test_an_image_mounted_elsewhere_is_never_attached_twice(
    stick_img: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with loop(stick_img) as dev, mounted(dev, tmp_path / "mnt"):
        # Reading goes through the existing device and mount...
        with open_medium(str(stick_img)) as medium:
            assert medium.root == tmp_path / "mnt"
            assert medium.volume is not None and medium.volume.device == dev
        # ...and a writing command refuses instead of mounting it a second time.
        assert main(["reset", str(stick_img), "--yes"]) == ExitCode.IN_USE
        err = capsys.readouterr().err
        assert f"is in use: attached to {dev} ({dev} mounted at {tmp_path / 'mnt'})" in err
        overlay = tmp_path / "mnt" / "LiveOS" / f"overlay-SOAS-{UUID}"
        assert overlay.read_bytes()[:4] == b"SnAp"


def test_a_damaged_squashfs_is_reported_not_fatal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = stick_tree(tmp_path, label="SOAS", uuid=UUID, home=False)
    with open(tree / "LiveOS" / "squashfs.img", "r+b") as f:
        f.write(bytes(4096))
    img = ext4_image(tree, tmp_path / "stick.img", label="SOAS", uuid=UUID)
    assert main(["status", str(img), "--json"]) == ExitCode.OK
    doc = json.loads(capsys.readouterr().out)
    assert doc["medium"]["image_layout"] == "unknown"
    assert any("squashfs.img could not be read" in w for w in doc["warnings"])


def test_a_label_with_a_space_is_read_exactly_and_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = stick_tree(
        tmp_path, label="MY STICK", uuid=UUID, home=False, overlay_name=f"overlay-MY_STICK-{UUID}"
    )
    img = ext4_image(tree, tmp_path / "stick.img", label="MY STICK", uuid=UUID)
    assert main(["status", str(img), "--json"]) == ExitCode.OK
    doc = json.loads(capsys.readouterr().out)
    assert doc["medium"]["label"] == "MY STICK"  # blkid prints MY\ STICK
    assert doc["name_matches"] is False
    assert any("has a space" in w for w in doc["warnings"])
