"""A writing command on a stick *image* or *device*, killed while open_medium holds it
attached and mounted read-write (/tmp/liveos-rw-*): the same command again clears that
loop device and mount (recorded before they were made: name, backing file, diskseq,
mount point) and finishes, with no manual cleanup. A user's own loop device of the image,
or one attached again under the recorded name, is refused (exit 5) and left as it is.
The "reboot" (kernel state gone, /run pointers gone) leaves only the journal beside the
image, which the next run drops.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from liveos_tools import mounts
from liveos_tools.errors import ExitCode
from liveos_tools.media import open_medium
from liveos_tools.tasks import leftovers as lf
from liveos_tools.tools import losetup
from tests.guest.test_leftovers_repair import run_killed
from tests.root.test_maintain_refusals import assert_refused
from tests.support.shell import MiB, sh
from tests.support.shell import cli_process as cli
from tests.support.sticks import disk_image, ext4_image, stick_tree

pytestmark = pytest.mark.root

UUID = "3f0c6a52-1b5a-4f1e-9a57-6f1d2b9c0a11"
GROWN = 16 * MiB


def loops_of(img: Path) -> list[str]:
    return [d.name for d in losetup.find_by_file(img)]


def mounts_of(img: Path) -> list[str]:
    """Mount points of the image's loop devices or their partitions."""
    devs = {n for d in loops_of(img) for n in (d, *losetup.partitions(d))}
    return [m.mountpoint for m in mounts.mounts() if m.source in devs]


def release(img: Path) -> None:
    """Unmount and detach whatever holds the image (test cleanup, also on failure)."""
    for where in reversed(mounts_of(img)):
        subprocess.run(["umount", where], check=False)
        with_tmp = Path(where)
        if with_tmp.name.startswith("liveos-"):
            shutil.rmtree(with_tmp, ignore_errors=True)
    for dev in loops_of(img):
        subprocess.run(["losetup", "-d", dev], check=False)


def journals(img: Path) -> list[Path]:
    return sorted(img.parent.glob(f".{img.name}.open.*.run"))


@pytest.fixture(params=["disk", "ext4"])
def pristine(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A stick image: a partitioned disk, or a bare ext4 filesystem (no partition table)."""
    tree = stick_tree(tmp_path / "w", label="SOAS", uuid=UUID, overlay="used-c8", home=False)
    if request.param == "disk":
        return disk_image(tmp_path / "pristine.img", tree, label="SOAS", uuid=UUID)
    return ext4_image(tree, tmp_path / "pristine.img", label="SOAS", uuid=UUID)


@pytest.fixture
def img(pristine: Path, tmp_path: Path) -> Iterator[Path]:
    work = tmp_path / "stick"
    work.mkdir()
    path = work / "STICK.img"
    sh("cp", "--sparse=always", pristine, path)
    try:
        yield path
    finally:
        release(path)
        for pointer in lf.RUNS.glob("*") if lf.RUNS.is_dir() else []:
            if str(tmp_path) in pointer.read_text():
                pointer.unlink()


def overlay_size(img: Path) -> int:
    with open_medium(str(img)) as medium:
        assert medium.overlay_path is not None
        return medium.overlay_path.stat().st_size


def grow_args(target: str | Path, bk: Path) -> list[str]:
    return ["grow", str(target), "--to", "16M", "--yes", "--backup-dir", str(bk)]


def assert_killed_holding(img: Path) -> None:
    """What the dead run left: its loop device and its read-write temporary mount."""
    assert len(loops_of(img)) == 1, loops_of(img)
    held = mounts_of(img)
    assert len(held) == 1 and Path(held[0]).name.startswith("liveos-rw-"), held
    assert len(journals(img)) == 1


def assert_cleared_and_done(img: Path, res: subprocess.CompletedProcess[str]) -> None:
    assert res.returncode == 0, res.stderr
    assert "found what an interrupted run left on STICK.img" in res.stderr, res.stderr
    assert "note: unmounted /tmp/liveos-rw-" in res.stderr, res.stderr
    assert "note: detached /dev/loop" in res.stderr, res.stderr
    assert loops_of(img) == [] and mounts_of(img) == []
    assert not sh("losetup", "-j", img).strip()
    assert journals(img) == []


def test_grow_killed_at_every_step_clears_its_image_loop_and_mount(
    img: Path, tmp_path: Path
) -> None:
    args = grow_args(img, tmp_path / "bk")
    clean = tmp_path / "clean.img"
    sh("cp", "--sparse=always", img, clean)
    for k in range(1, 5):
        sh("cp", "--sparse=always", clean, img)
        rc, err = run_killed(args, k)
        assert rc == -9, (k, rc, err)
        assert_killed_holding(img)
        res = cli(*args)
        assert_cleared_and_done(img, res)
        assert overlay_size(img) == GROWN, k
        assert loops_of(img) == [] and mounts_of(img) == []
    part = sh("losetup", "--find", "--show", "--partscan", img).strip()
    try:
        node = (losetup.wait_for_partitions(part) or [part])[0]
        subprocess.run(["e2fsck", "-fn", node], check=True, capture_output=True)
    finally:
        sh("losetup", "-d", part)


def test_reset_killed_once_mounted_finishes_on_the_next_run(img: Path, tmp_path: Path) -> None:
    args = ["reset", str(img), "--yes", "--backup-dir", str(tmp_path / "bk")]
    rc, err = run_killed(args, 1)
    assert rc == -9, err
    assert_killed_holding(img)
    assert_cleared_and_done(img, cli(*args))


def test_a_users_own_loop_device_is_refused_and_kept(img: Path, tmp_path: Path) -> None:
    mine = sh("losetup", "--find", "--show", img).strip()
    res = cli(*grow_args(img, tmp_path / "bk"))
    assert_refused(res, ExitCode.IN_USE, f"is in use: attached to {mine}")
    assert "losetup -d DEVICE" in res.stderr and "found what" not in res.stderr
    assert loops_of(img) == [mine]
    assert overlay_size_unchanged(img, mine)


def overlay_size_unchanged(img: Path, loop: str) -> bool:
    """Read through the user's own loop device (read-only open reuses it)."""
    sh("losetup", "-d", loop)
    return overlay_size(img) < GROWN


def test_a_reattach_under_the_recorded_name_is_not_ours(img: Path, tmp_path: Path) -> None:
    """Killed; then the loop is detached by hand and the image attached again at the same
    name by someone else: the name and file match the journal, its diskseq does not."""
    args = grow_args(img, tmp_path / "bk")
    rc, err = run_killed(args, 1)
    assert rc == -9, err
    (loop,) = loops_of(img)
    release(img)
    sh("losetup", loop, img)
    res = cli(*args)
    assert_refused(res, ExitCode.IN_USE, f"is in use: attached to {loop}")
    assert "found what" not in res.stderr and "detached" not in res.stderr
    # Kept attached; the record, naming nothing of ours that is still there, is dropped.
    assert loops_of(img) == [loop] and journals(img) == []
    sh("losetup", "-d", loop)
    res = cli(*args)
    assert res.returncode == 0, res.stderr
    assert journals(img) == [] and overlay_size(img) == GROWN


def test_after_a_reboot_the_journal_on_disk_is_dropped_and_the_job_done(
    img: Path, tmp_path: Path
) -> None:
    args = grow_args(img, tmp_path / "bk")
    rc, err = run_killed(args, 2)
    assert rc == -9, err
    assert_killed_holding(img)
    # What a restart loses: the mount, the loop device, /run/liveos-tools (our pointers).
    release(img)
    for pointer in lf.RUNS.glob("*") if lf.RUNS.is_dir() else []:
        if str(tmp_path) in pointer.read_text():
            pointer.unlink()
    (journal,) = journals(img)
    boot = lf._boot_id()
    journal.write_text(journal.read_text().replace(boot, "0" * len(boot)))  # another boot
    assert "did not finish" not in cli("status", img).stdout  # status makes no change...
    assert journals(img) == [journal]  # ...and leaves the record alone
    res = cli(*args)
    assert res.returncode == 0, res.stderr
    assert "found what" not in res.stderr  # nothing was left to clear
    assert journals(img) == [] and loops_of(img) == [] and mounts_of(img) == []
    assert overlay_size(img) == GROWN


def test_killed_between_attach_and_mount(img: Path, tmp_path: Path) -> None:
    """A journal with only the loop device leased and attached (killed before mounting)."""
    rec = lf.Recorder(img.parent, img, str(img))
    loop = rec.attach(img, readonly=False)
    assert rec.journal is not None
    me = lf._owner(os.getpid())
    rec.journal.path.write_text(
        rec.journal.path.read_text().replace(me, f"{me.split()[0]} 1 0")  # a dead owner
    )
    res = cli(*grow_args(img, tmp_path / "bk"))
    assert res.returncode == 0, res.stderr
    assert f"note: detached {loop}" in res.stderr
    assert loops_of(img) == [] and journals(img) == []


def test_a_device_target_keeps_the_users_loop_but_clears_our_mount(
    img: Path, tmp_path: Path
) -> None:
    """TARGET is a block device (here the user's own loop device): our temporary mount of
    it is recorded (mount point, device, its diskseq) and cleared; the device stays."""
    dev = sh("losetup", "--find", "--show", "--partscan", img).strip()
    args = grow_args(dev, tmp_path / "bk")
    rc, err = run_killed(args, 1)
    assert rc == -9, err
    assert len(mounts_of(img)) == 1
    res = cli(*args)
    assert res.returncode == 0, res.stderr
    assert "note: unmounted /tmp/liveos-rw-" in res.stderr and "detached" not in res.stderr
    assert loops_of(img) == [dev] and mounts_of(img) == []
    assert not list(lf.MEDIA.glob(f".{Path(dev).name}.open.*.run"))
    sh("losetup", "-d", dev)
    assert overlay_size(img) == GROWN


def test_home_create_on_an_image_killed_once_mounted(img: Path) -> None:
    args = ["home", "create", str(img), "--size", "16M", "--no-encrypt", "--yes"]
    rc, err = run_killed(args, 1)
    assert rc == -9, err
    assert_killed_holding(img)
    assert_cleared_and_done(img, cli(*args))
    with open_medium(str(img)) as medium:
        assert medium.home_path is not None and medium.home_path.stat().st_size == 16 * MiB


def test_what_another_killed_run_left_inside_the_mount_is_cleared_first(
    img: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A killed repair's loop device over the overlay *inside* the leftover mount holds
    it busy. grow refuses, naming the interrupted repair (leftovers.md); the writable open
    repair does on the same image detaches that loop device first (its journal stays, for
    repair to finish), then the mount and the image's loop device."""
    args = grow_args(img, tmp_path / "bk")
    rc, err = run_killed(args, 1)
    assert rc == -9, err
    (where,) = mounts_of(img)
    (overlay,) = Path(where, "LiveOS").glob("overlay-*")
    bkdir = tmp_path / "repair-bk"
    bkdir.mkdir()
    inner = lf.start(bkdir, "repair", overlay, "feedc0de", target=str(img))
    me = lf._owner(os.getpid())
    inner.path.write_text(inner.path.read_text().replace(me, f"{me.split()[0]} 1 0"))
    loop = losetup.find_free()
    inner = lf.lease(inner, "loop", loop, os.path.realpath(overlay))
    losetup.attach(overlay, device=loop)
    inner = lf.attached(inner, loop)
    try:
        res = cli(*args)
        assert_refused(res, ExitCode.IN_USE, "interrupted repair")
        assert mounts_of(img) == [where] and any(d.name == loop for d in losetup.list_devices())
        capfd.readouterr()
        with open_medium(str(img), writable=True) as medium:
            assert medium.root is not None and str(medium.root) != where
            said = capfd.readouterr().err
            assert f"note: detached {loop}" in said and f"note: unmounted {where}" in said
            assert not any(d.name == loop and d.back_file for d in losetup.list_devices())
        assert loops_of(img) == [] and mounts_of(img) == [] and journals(img) == []
        assert inner.path.exists()  # repair's own record, for repair to finish
    finally:
        if any(d.name == loop and d.back_file for d in losetup.list_devices()):
            subprocess.run(["losetup", "-d", loop], check=False)
