"""(a) the running live system, built the way dracut builds it, and a vfat stick image.

Inside the guest kernel: the stick is mounted at /run/initramfs/live, the base is
the rootfs.img inside squashfs.img on a read-only loop device, and `live-rw` is
`snapshot <base> <overlay> PO 8` over the stick's overlay file. Status must come
from the kernel and equal `dmsetup status live-rw`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from liveos_tools.cli.main import main
from liveos_tools.errors import ExitCode
from liveos_tools.media import LIVE_ROOT, ImageLayout, OverlayKind, Source, open_medium
from liveos_tools.tasks.status import OverlayState, build_status
from liveos_tools.tools import dmsetup, losetup
from tests.support.shell import sh
from tests.support.sticks import disk_image, ext4_image, stick_tree

pytestmark = pytest.mark.guest

UUID = "0b1e5e6c-7a2d-4c41-9c0e-5f7f1d2a3b4c"
CMDLINE = f"root=live:UUID={UUID} rootfstype=ext4 rw rd.live.image rd.live.overlay=UUID={UUID}"


@contextlib.contextmanager
def live_system(tmp_path: Path, overlay: str) -> Iterator[Path]:
    tree = stick_tree(tmp_path, label="SOAS", uuid=UUID, overlay=overlay)
    img = ext4_image(tree, tmp_path / "stick.img", label="SOAS", uuid=UUID)
    squash_mnt = tmp_path / "squash"
    squash_mnt.mkdir()
    with contextlib.ExitStack() as stack:
        stick_loop = losetup.attach(img)
        stack.callback(losetup.detach, stick_loop)
        LIVE_ROOT.mkdir(parents=True, exist_ok=True)
        sh("mount", "-t", "ext4", stick_loop, str(LIVE_ROOT))
        stack.callback(sh, "umount", str(LIVE_ROOT))
        squash_loop = losetup.attach(LIVE_ROOT / "LiveOS" / "squashfs.img", readonly=True)
        stack.callback(losetup.detach, squash_loop)
        sh("mount", "-t", "squashfs", "-o", "ro", squash_loop, str(squash_mnt))
        stack.callback(sh, "umount", str(squash_mnt))
        base = losetup.attach(squash_mnt / "LiveOS" / "rootfs.img", readonly=True)
        stack.callback(losetup.detach, base)
        overlay_file = LIVE_ROOT / "LiveOS" / f"overlay-SOAS-{UUID}"
        cow = losetup.attach(overlay_file)
        stack.callback(losetup.detach, cow)
        sectors = os.path.getsize(squash_mnt / "LiveOS" / "rootfs.img") // 512
        dmsetup.create("live-rw", dmsetup.snapshot_table_line(sectors, base, cow))
        stack.callback(dmsetup.remove, "live-rw")
        yield overlay_file


def write_through_live_rw(chunks: int) -> None:
    node = dmsetup.info("live-rw").node
    fd = os.open(node, os.O_WRONLY | os.O_SYNC)
    try:
        for i in range(chunks):
            try:
                os.pwrite(fd, b"\x42" * 4096, i * 4096)
            except OSError:
                break
    finally:
        os.close(fd)


def test_a_running_live_system(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with live_system(tmp_path, "fresh-c8") as overlay_file:
        write_through_live_rw(300)
        kernel = dmsetup.status("live-rw")[0].params
        with open_medium(None, cmdline=CMDLINE) as medium:
            assert (medium.source, medium.live_dm) == (Source.LIVE, "live-rw")
            assert medium.overlay_path == overlay_file
            assert medium.overlay_kind is OverlayKind.DM
            assert medium.image_layout is ImageLayout.NESTED
            assert medium.overlay_name_problem is None
            assert medium.boot_args["rd.live.overlay"] == f"UUID={UUID}"
            report = build_status(medium)
        o = report.overlay
        assert o.read_from == "kernel"
        assert f"{o.sectors_allocated}/{o.total_sectors} {o.metadata_sectors}" == kernel
        assert o.exceptions == 300
        # The CLI with no TARGET finds the same live system.
        assert main(["status", "--json"]) == ExitCode.OK
        doc = json.loads(capsys.readouterr().out)
        assert (doc["medium"]["source"], doc["read_from"], doc["exceptions"]) == (
            "live",
            "kernel",
            300,
        )
        # Fill it: the kernel says Overflow and status says so, with exit code 3.
        write_through_live_rw(5000)
        assert dmsetup.status("live-rw")[0].params == "Overflow"
        with open_medium(None, cmdline=CMDLINE) as medium:
            overflowed = build_status(medium)
        assert overflowed.overlay.state is OverlayState.OVERFLOW
        assert overflowed.exit_code == ExitCode.BROKEN
        assert main(["status"]) == ExitCode.BROKEN
        assert "Overflow" not in capsys.readouterr().err


def test_d_vfat_disk_image(tmp_path: Path) -> None:
    fat_uuid = "5A0B-C0DE"
    tree = stick_tree(tmp_path, label="SOAS", uuid=fat_uuid, overlay="used-c16")
    disk = disk_image(tmp_path / "disk.img", tree, label="SOAS", uuid=fat_uuid, fs="vfat")
    with open_medium(str(disk)) as medium:
        assert medium.volume is not None
        assert (medium.volume.fstype, medium.volume.label, medium.volume.uuid) == (
            "vfat",
            "SOAS",
            fat_uuid,
        )
        assert medium.overlay_name_problem is None
        report = build_status(medium)
    assert (report.overlay.sectors_allocated, report.overlay.total_sectors) == (11248, 16384)
