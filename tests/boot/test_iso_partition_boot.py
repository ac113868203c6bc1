"""The boot proof for the Sugar Labs wiki's command: a stick written into an EXISTING
partition (no --format) boots and keeps what boot 1 wrote.

    liveos-iso-to-disk --reset-mbr --overlay-size-mb N --home-size-mb N --delete-home \\
        --unencrypted-home ISO /dev/loopNp1

The user's stick: an msdos table, one FAT32 partition labelled "MY STICK" (a space: the
writer relabels it MY_STICK) holding a file of its own, no boot code in the MBR and the
partition not active. SeaBIOS -> the mbr.bin that --reset-mbr wrote to the parent disk
-> the partition it marked active -> syslinux -> dracut finds overlay-MY_STICK-<UUID>.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.boot.test_iso_boot import boot, pytestmark  # noqa: F401  (the same skip)
from tests.fixtures import isobuild
from tests.root.test_iso_partition import attached, blkid, format_partition, make_user_stick

USER_FILE = b"keep me\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for loop devices")
def test_stick_written_into_existing_partition_boots_and_persists(tmp_path: Path) -> None:
    initrd = isobuild.dracut_initramfs()
    iso = isobuild.build_iso(tmp_path / "live.iso", "classic", initramfs=initrd)
    img = tmp_path / "stick.img"
    make_user_stick(img, "MY STICK", size=256 * 1024 * 1024)
    notes = tmp_path / "notes.txt"
    notes.write_bytes(USER_FILE)
    with attached(img) as (_loop, part):
        format_partition(part, "MY STICK", {"NOTES.TXT": notes})
        uuid = blkid(part)["UUID"]
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "liveos_tools.cli.iso_to_disk",
                "--reset-mbr",
                "--overlay-size-mb",
                "32",
                "--home-size-mb",
                "16",
                "--delete-home",
                "--unencrypted-home",
                "--timeout",
                "0",
                "--nomenu",
                "--yes",
                "--extra-kernel-args",
                "console=ttyS0 rd.emergency=poweroff rd.shell=0",
                str(iso.path),
                part,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert res.returncode == 0, res.stderr
        assert f"overlay=overlay-MY_STICK-{uuid}" in res.stdout
    # detached: every write the tool made through /dev/loopNp1 is in the image file

    first = boot(img, tmp_path / "console1.txt")
    assert "LIVEOS-BOOT1-WROTE" in first, first[-3000:]
    # the kernel arguments came from our syslinux.cfg on the partition, with its own UUID
    assert f"root=live:UUID={uuid} rootfstype=vfat rw rd.live.image" in first
    assert "BOOT_IMAGE=vmlinuz" in first

    second = boot(img, tmp_path / "console2.txt")
    assert "LIVEOS-BOOT2-FOUND written on boot 1" in second, second[-3000:]

    # the user's file survived the write and two boots
    out = subprocess.run(
        ["mtype", "-i", f"{img}@@{1024 * 1024}", "::NOTES.TXT"], capture_output=True, check=True
    ).stdout
    assert out == USER_FILE
