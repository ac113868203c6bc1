"""refresh / rollback on sticks whose UEFI grub.cfg is on a separate EFI system partition.

Sticks written by the real writer: `--format ,ext4` (msdos: ext4 p1, ESP p2 of type 0xef)
to an image file, and `--format ,ext4 --efi` (GPT: ESP p1, ext4 p2) through a
partition-scanned loop device. The learner's change is put in the overlay offline (the
store format, as tests/root/test_refresh.py does: the host has no device-mapper), and the
ESP is read back with mtools (the host has no vfat).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from liveos_tools import bootentries as be
from liveos_tools import espcfg, mounts, switch
from liveos_tools.errors import ExitCode
from liveos_tools.tools import losetup
from tests.fixtures import isobuild
from tests.root.test_iso_blockdev import pytestmark  # noqa: F401  (root, and the same skip)
from tests.root.test_refresh import (
    LEARNER,
    SWITCH_KILLS,
    assert_allowed,
    learner_copy,
    read_image,
    sha,
    write_store,
)
from tests.support.shell import cli_process as cli

MIB = 1024 * 1024
DISK = 256 * MIB
GRUB = "EFI/BOOT/grub.cfg"


@pytest.fixture(scope="module")
def iso(tmp_path_factory: pytest.TempPathFactory) -> isobuild.FixtureIso:
    return isobuild.build_iso(tmp_path_factory.mktemp("iso") / "classic.iso", "classic")


def sh(*argv: str | Path) -> str:
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True, text=True).stdout


@contextlib.contextmanager
def loop_disk(img: Path) -> Iterator[str]:
    """/dev/loopN over `img` with its partitions; detached whatever happens."""
    loop = losetup.attach(img, partscan=True)
    try:
        losetup.wait_for_partitions(loop, timeout=10.0)
        yield loop
    finally:
        subprocess.run(["partx", "--delete", loop], capture_output=True, check=False)
        with contextlib.suppress(Exception):
            losetup.detach(loop)
        # A detach while something still has a node open (udev's probe of the partitions)
        # completes later; the tool would find the image attached and refuse it (exit 5).
        deadline = time.monotonic() + 20
        while losetup.find_by_file(img) and time.monotonic() < deadline:
            time.sleep(0.1)


def write(iso: isobuild.FixtureIso, img: Path, target: str, *opts: str) -> str:
    """The writer's run; returns the overlay's name."""
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "liveos_tools.cli.iso_to_disk",
            "--format",
            ",ext4",
            *opts,
            "--overlay-size-mb",
            "32",
            "--noverify",
            "--yes",
            str(iso.path),
            target,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return next(w for w in res.stdout.split() if w.startswith("overlay=")).split("=", 1)[1]


def blank(img: Path) -> Path:
    with open(img, "wb") as f:
        f.truncate(DISK)
    return img


def msdos_stick(iso: isobuild.FixtureIso, tmp_path: Path) -> tuple[Path, str, str]:
    """`--format ,ext4` to an image file: (image, overlay name, the ESP as IMAGE@@OFFSET)."""
    img = blank(tmp_path / "stick.img")
    overlay = write(iso, img, str(img))
    return img, overlay, f"{img}@@{partitions(img)['esp']}"


def partitions(img: Path) -> dict[str, int]:
    """{'esp'|'live': byte offset} from the partition table."""
    table = json.loads(sh("sfdisk", "--json", img))["partitiontable"]
    out = {}
    for p in table["partitions"]:
        kind = p["type"].lower()
        esp = kind in ("ef", "c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
        out["esp" if esp else "live"] = p["start"] * table.get("sectorsize", 512)
    return out


def esp_text(where: str) -> str:
    """The ESP's grub.cfg, read with mtools (`IMAGE@@OFFSET` or a partition node)."""
    return sh("mcopy", "-n", "-i", where, f"::/{GRUB}", "-")


def esp_names(where: str) -> list[str]:
    return sh("mdir", "-/", "-b", "-a", "-i", where, "::/").split()


@contextlib.contextmanager
def mounted(node: str, where: Path) -> Iterator[Path]:
    where.mkdir(exist_ok=True)
    sh("mount", node, where)
    try:
        yield where
    finally:
        sh("umount", where)


def put_learner_change(
    live: Path, overlay: str, work: Path, files: dict[str, bytes] = LEARNER
) -> None:
    """Write the learner's files into the stick's overlay, chunk by chunk."""
    ldir = live / "LiveOS"
    out = work / "unsq"
    sh("unsquashfs", "-q", "-n", "-d", out, ldir / "squashfs.img", "LiveOS/rootfs.img")
    base = out / "LiveOS" / "rootfs.img"
    changed = work / "changed.img"
    learner_copy(base, changed, files)
    size = (ldir / overlay).stat().st_size
    assert write_store(base, changed, ldir / overlay, size) > 3
    shutil.rmtree(out)
    changed.unlink()


def files_of(root: Path, overlay: str, esp_node: str) -> switch.StickFiles:
    """The stick's files as the switch sees them, the ESP's grub.cfg included."""
    cfg = espcfg.EspConfig(esp_node, GRUB, root / "LiveOS" / espcfg.BACKUP_DIR / "unused")
    return switch.StickFiles(root, be.Names("LiveOS", overlay), esp=(cfg,))


def check_entries(text: str, uuid: str, overlay: str, *, previous: bool) -> None:
    """Default entries boot the default names; a previous entry (if any) the kept pair."""
    assert be.default_slot(text) is be.Slot.CURRENT, text
    assert "rd.live.squashimg" not in be.strip_previous(text), text
    if not previous:
        assert not be.has_previous(text), text
        return
    assert be.previous_slot(text) is be.Slot.PREVIOUS, text
    block = text.split(be.BEGIN, 1)[1]
    assert "rd.live.dir=LiveOS" in block, block
    assert "rd.live.squashimg=previous/squashfs.img" in block, block
    assert f"rd.live.overlay=UUID={uuid}:/LiveOS/previous/{overlay}" in block, block
    assert "linux /syslinux/vmlinuz " in block and "initrd /syslinux/initrd.img" in block


def test_msdos_image_refresh_rollback_drop_and_dry_run(
    iso: isobuild.FixtureIso, tmp_path: Path
) -> None:
    img, overlay, esp = msdos_stick(iso, tmp_path)
    uuid = overlay.removeprefix("overlay-LIVE_TEST-")
    original = esp_text(esp)
    assert f"rd.live.overlay=UUID={uuid}" in original and be.BEGIN not in original
    with loop_disk(img) as loop, mounted(f"{loop}p1", tmp_path / "mnt") as root:
        put_learner_change(root, overlay, tmp_path)
        old_base = sha(root / "LiveOS" / "squashfs.img")

    # a dry run names the ESP's file and changes no byte of the image
    before = sha(img)
    res = cli("refresh", img, "--dry-run", "--workdir", tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"the EFI system partition p2 of {img}: {GRUB} rewritten" in res.stderr, res.stderr
    assert sha(img) == before

    res = cli("refresh", img, "--yes", "--workdir", tmp_path)
    assert res.returncode == 0, res.stderr
    after = esp_text(esp)
    check_entries(after, uuid, overlay, previous=True)
    assert be.strip_previous(after) == original
    assert not [n for n in esp_names(esp) if n.endswith(".new")]  # no temporary name left
    with loop_disk(img) as loop, mounted(f"{loop}p1", tmp_path / "mnt") as root:
        ldir = root / "LiveOS"
        assert (root / GRUB).read_text() == after  # the ESP says what p1's grub.cfg says
        assert sha(ldir / "previous" / "squashfs.img") == old_base
        assert sha(ldir / "squashfs.img") != old_base
        with read_image(ldir / "squashfs.img", tmp_path / "new") as rootfs:
            for rel, data in LEARNER.items():
                assert (rootfs / rel).read_bytes() == data, rel
        # the text before the first change, kept on the LiveOS partition
        assert (ldir / espcfg.BACKUP_DIR / "p2" / GRUB).read_text() == original
        new_base = sha(ldir / "squashfs.img")

    res = cli("rollback", img, "--yes")
    assert res.returncode == 0, res.stderr
    back = esp_text(esp)
    check_entries(back, uuid, overlay, previous=True)
    with loop_disk(img) as loop, mounted(f"{loop}p1", tmp_path / "mnt") as root:
        ldir = root / "LiveOS"
        assert (root / GRUB).read_text() == back
        assert sha(ldir / "squashfs.img") == old_base  # the default entry: the old pair
        assert sha(ldir / "previous" / "squashfs.img") == new_base

    res = cli("rollback", img, "--drop-previous", "--yes")
    assert res.returncode == 0, res.stderr
    assert esp_text(esp) == original

    res = cli("refresh", img, "--yes", "--no-keep-previous", "--workdir", tmp_path)
    assert res.returncode == 0, res.stderr
    final = esp_text(esp)
    check_entries(final, uuid, overlay, previous=False)
    assert final == original
    with loop_disk(img) as loop, mounted(f"{loop}p1", tmp_path / "mnt") as root:
        assert not (root / "LiveOS" / "previous").exists()
        assert (root / GRUB).read_text() == final


def test_gpt_loop_device_refresh_and_rollback(iso: isobuild.FixtureIso, tmp_path: Path) -> None:
    img = blank(tmp_path / "stick.img")
    with loop_disk(img) as loop:
        overlay = write(iso, img, loop, "--efi")
        uuid = overlay.removeprefix("overlay-LIVE_TEST-")
        losetup.wait_for_partitions(loop, timeout=10.0)
        esp, live = f"{loop}p1", f"{loop}p2"
        assert sh("blkid", "-p", "-s", "PART_ENTRY_TYPE", "-o", "value", esp).strip() == (
            "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
        )
        original = esp_text(esp)
        with mounted(live, tmp_path / "mnt") as root:
            put_learner_change(root, overlay, tmp_path)
            old_base = sha(root / "LiveOS" / "squashfs.img")

        res = cli("refresh", loop, "--dry-run", "--workdir", tmp_path)
        assert res.returncode == 0, res.stderr
        assert f"the EFI system partition {esp}: {GRUB} rewritten" in res.stderr, res.stderr

        res = cli("refresh", loop, "--yes", "--workdir", tmp_path)
        assert res.returncode == 0, res.stderr
        after = esp_text(esp)
        check_entries(after, uuid, overlay, previous=True)
        assert be.strip_previous(after) == original
        assert "insmod part_gpt" in after
        with mounted(live, tmp_path / "mnt") as root:
            assert (root / GRUB).read_text() == after
            assert sha(root / "LiveOS" / "previous" / "squashfs.img") == old_base

        res = cli("rollback", loop, "--yes")
        assert res.returncode == 0, res.stderr
        check_entries(esp_text(esp), uuid, overlay, previous=True)
        with mounted(live, tmp_path / "mnt") as root:
            assert sha(root / "LiveOS" / "squashfs.img") == old_base
            assert (root / GRUB).read_text() == esp_text(esp)

        # a mounted ESP is refused (exit 5) before anything is written. The host has no
        # vfat, so the ESP of a copy is made ext4 for the mount: the check is on the mount.
        copy = tmp_path / "copy.img"
        shutil.copyfile(img, copy)
    with loop_disk(copy) as loop:
        sh("mkfs.ext4", "-q", "-F", f"{loop}p1")
        with mounted(f"{loop}p1", tmp_path / "espmnt"):
            before = sha(copy)
            res = cli("refresh", loop, "--yes", "--workdir", tmp_path)
            assert res.returncode == ExitCode.IN_USE, res.stderr
            assert f"EFI system partition {loop}p1 is mounted at" in res.stderr, res.stderr
            assert "hint: unmount it first" in res.stderr and "Traceback" not in res.stderr
            assert sha(copy) == before


def leftover_root(img: Path) -> tuple[Path, str]:
    """A killed run's own mount of p1 and the ESP's node on its loop device."""
    (dev,) = losetup.find_by_file(img)
    mount = next(m for m in mounts.mounts() if m.source == f"{dev.name}p1")
    return Path(mount.mountpoint), f"{dev.name}p2"


def test_sigkill_at_every_step_leaves_both_partitions_consistent(
    iso: isobuild.FixtureIso, tmp_path: Path
) -> None:
    img, overlay, esp = msdos_stick(iso, tmp_path)
    with loop_disk(img) as loop, mounted(f"{loop}p1", tmp_path / "mnt") as root:
        put_learner_change(root, overlay, tmp_path)
        ldir = root / "LiveOS"
        old = {"base": sha(ldir / "squashfs.img"), "overlay": sha(ldir / overlay)}
    pristine = tmp_path / "pristine.img"
    shutil.copyfile(img, pristine)
    original = esp_text(esp)
    points = [*SWITCH_KILLS, "esp-written"]
    for i, point in enumerate(points):
        res = cli(
            "refresh",
            img,
            "--yes",
            "--workdir",
            tmp_path,
            env={"LIVEOS_TEST_KILL_AT": point},
        )
        assert res.returncode == -9, (point, res.stderr)
        # every entry of every config, on p1 and on the ESP, boots a whole old or new pair
        root, node = leftover_root(img)
        files = files_of(root, overlay, node)
        assert len(files.configs()) == 3, point  # extlinux.conf, grub.cfg, the ESP's
        kinds = {be.default_slot(c.read_text()) for c in files.configs()}
        assert assert_allowed(files, old) in ("old", "new"), (point, kinds)
        if i % 2:  # undo
            res = cli("rollback", img, "--yes")
            want = "old"
            if point in ("refresh-merged", "refresh-built"):
                assert res.returncode == ExitCode.BAD_TARGET, (point, res.stderr)
                want = ""
            else:
                assert res.returncode == 0, (point, res.stderr)
        else:  # finish
            res = cli("refresh", img, "--yes", "--workdir", tmp_path)
            assert res.returncode == 0, (point, res.stderr)
            want = "new"
        text = esp_text(esp)
        assert not [n for n in esp_names(esp) if n.endswith(".new")], point
        with loop_disk(img) as loop, mounted(f"{loop}p1", tmp_path / "mnt") as root:
            files = files_of(root, overlay, f"{loop}p2")
            assert not (root / "LiveOS" / switch.JOURNAL).exists(), point
            assert (root / GRUB).read_text() == text, point  # both partitions agree
            if want:
                assert assert_allowed(files, old) == want, point
            if want == "new" or (want == "old" and point.startswith("switch-")):
                assert be.previous_slot(text) is be.Slot.PREVIOUS, point
            if not want:
                assert text == original, point
        shutil.copyfile(pristine, img)  # back to the very first stick for the next point


def test_target_without_findable_esp_says_so(iso: isobuild.FixtureIso, tmp_path: Path) -> None:
    img, _, _ = msdos_stick(iso, tmp_path)
    with loop_disk(img) as loop, mounted(f"{loop}p1", tmp_path / "mnt") as root:
        # a mounted directory: its ESP is not looked for, and the plan says so
        res = cli("refresh", root, "--dry-run", "--workdir", tmp_path)
        assert res.returncode == 0, res.stderr
        assert "its grub.cfg is not rewritten" in res.stderr, res.stderr
        assert "the EFI system partition p" not in res.stderr
    # a bare filesystem image (p1 alone) has no partition table, so no ESP beside it
    bare = tmp_path / "p1.img"
    at = partitions(img)
    sh(
        "dd",
        f"if={img}",
        f"of={bare}",
        "bs=1M",
        f"skip={at['live'] // MIB}",
        f"count={(at['esp'] - at['live']) // MIB}",
        "conv=sparse",
        "status=none",
    )
    res = cli("refresh", bare, "--dry-run", "--workdir", tmp_path)
    assert res.returncode == 0, res.stderr
    assert "no EFI system partition beside" in res.stderr, res.stderr


def test_update_points_the_esp_at_each_slots_kernel(
    iso: isobuild.FixtureIso, tmp_path: Path
) -> None:
    img, overlay, esp = msdos_stick(iso, tmp_path)
    uuid = overlay.removeprefix("overlay-LIVE_TEST-")
    original = esp_text(esp)
    res = cli("update", "--from", iso.path, img, "--yes")
    assert res.returncode == 0, res.stderr
    text = esp_text(esp)
    assert be.strip_previous(text) == original  # the default slot keeps its own kernel
    block = text.split(be.BEGIN, 1)[1]
    assert "linux /LiveOS/previous/vmlinuz " in block, block
    assert "initrd /LiveOS/previous/initrd.img" in block, block
    assert f"rd.live.overlay=UUID={uuid}:/LiveOS/previous/{overlay}" in block, block
    with loop_disk(img) as loop, mounted(f"{loop}p1", tmp_path / "mnt") as root:
        assert (root / GRUB).read_text() == text
        assert (root / "LiveOS" / "previous" / "vmlinuz").is_file()
    res = cli("rollback", img, "--yes")
    assert res.returncode == 0, res.stderr
    with loop_disk(img) as loop, mounted(f"{loop}p1", tmp_path / "mnt") as root:
        assert (root / GRUB).read_text() == esp_text(esp)


ROLLBACK_KILLS = [
    "rollback-journal",
    "rollback-entries",  # the previous entry gone from every config, the ESP's included
    "rollback-moving",
    "rollback-staged",
    "switch-boot-next",
    "switch-moved-old",
    "switch-boot-previous",
    "switch-moved-new",
    "switch-done",
    "esp-written",
]


def test_sigkill_during_rollback_then_rerun(iso: isobuild.FixtureIso, tmp_path: Path) -> None:
    img, overlay, esp = msdos_stick(iso, tmp_path)
    with loop_disk(img) as loop, mounted(f"{loop}p1", tmp_path / "mnt") as root:
        put_learner_change(root, overlay, tmp_path)
        ldir = root / "LiveOS"
        old = {"base": sha(ldir / "squashfs.img"), "overlay": sha(ldir / overlay)}
    res = cli("refresh", img, "--yes", "--workdir", tmp_path)
    assert res.returncode == 0, res.stderr
    refreshed = tmp_path / "refreshed.img"
    shutil.copyfile(img, refreshed)
    for point in ROLLBACK_KILLS:
        res = cli("rollback", img, "--yes", env={"LIVEOS_TEST_KILL_AT": point})
        assert res.returncode == -9, (point, res.stderr)
        root, node = leftover_root(img)
        assert assert_allowed(files_of(root, overlay, node), old) in ("old", "new"), point
        res = cli("rollback", img, "--yes")
        assert res.returncode == 0, (point, res.stderr)
        text = esp_text(esp)
        assert be.previous_slot(text) is be.Slot.PREVIOUS, point
        with loop_disk(img) as loop, mounted(f"{loop}p1", tmp_path / "mnt") as root:
            assert (root / GRUB).read_text() == text, point
            assert assert_allowed(files_of(root, overlay, f"{loop}p2"), old) == "old", point
        shutil.copyfile(refreshed, img)
