"""Boot proof of refresh on a stick whose UEFI grub.cfg is on a separate EFI system
partition (GPT + ESP + ext4, written through a partition-scanned loop device):
OVMF -> GRUB on the ESP -> dracut on the ext4 partition.

The learner's marker is put in the overlay offline (the kernel's store format, as
tests/root/test_refresh.py writes it), which spares the boot that would write it; then
`refresh` runs on the host (ext4 LiveOS partition, the ESP through mtools), and

1. the refreshed stick boots through the ESP's default entry: the marker is found in the
   new image, and the command line names the default files;
2. a COPY whose ESP grub.cfg defaults to the "Previous image" entry (`set default=` edited
   with mtools, as tests/boot/test_refresh_boot.py does for syslinux) boots the old image
   with its own overlay, where the marker is.

Two boots, each one OVMF + TCG run.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from liveos_tools import bootentries as be
from liveos_tools.tools import losetup
from tests.boot.test_device_boot import (  # noqa: F401  (the module's fixture ISO and skips)
    KARGS,
    TIMEOUT,
    iso,
    loop_device,
    pytestmark,
    write_to_device,
)
from tests.boot.test_iso_boot import boot, uefi_firmware
from tests.fixtures import isobuild
from tests.root.test_refresh_esp import esp_text, partitions, put_learner_change
from tests.support.shell import cli_process as cli

MIB = 1024 * 1024
MARKER = {"var/liveos-marker": b"written on boot 1\n"}
FOUND = "LIVEOS-BOOT2-FOUND written on boot 1"


def root_line(console: str) -> str:
    assert "LIVEOS-ROOT-UP" in console, console[-3000:]
    return console.split("LIVEOS-ROOT-UP", 1)[1].splitlines()[0]


def test_refreshed_gpt_stick_boots_both_pairs_through_the_esp(
    iso: isobuild.FixtureIso,  # noqa: F811
    tmp_path: Path,
) -> None:
    img = tmp_path / "disk.img"
    uuid, label = write_to_device(iso, img, 512 * MIB, "--efi", "--format", ",ext4")
    overlay = f"overlay-{label}-{uuid}"
    with loop_device(img) as dev:
        _esp, live = sorted(losetup.wait_for_partitions(dev))
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        subprocess.run(["mount", live, str(mnt)], check=True)
        try:
            put_learner_change(mnt, overlay, tmp_path, MARKER)
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    deadline = time.monotonic() + 20  # a detach under udev's probe completes later
    while losetup.find_by_file(img) and time.monotonic() < deadline:
        time.sleep(0.1)

    res = cli("refresh", img, "--yes", "--workdir", tmp_path)
    assert res.returncode == 0, res.stderr
    esp = f"{img}@@{partitions(img)['esp']}"
    text = esp_text(esp)
    assert be.previous_slot(text) is be.Slot.PREVIOUS, text
    assert 'set default="0"' in text, text

    prev = tmp_path / "prev.img"
    subprocess.run(["cp", "--sparse=always", str(img), str(prev)], check=True)
    edited = tmp_path / "grub.cfg"
    edited.write_text(text.replace('set default="0"', 'set default="liveos-previous"'))
    prev_esp = f"{prev}@@{partitions(prev)['esp']}"
    subprocess.run(["mcopy", "-o", "-i", prev_esp, str(edited), "::/EFI/BOOT/grub.cfg"], check=True)

    console = boot(img, tmp_path / "new.txt", uefi_firmware(tmp_path), timeout=TIMEOUT)
    assert FOUND in console, console[-3000:]  # the marker is in the new image now
    assert "BdsDxe: starting" in console  # OVMF's boot manager, then GRUB on the ESP
    line = root_line(console)
    assert line.startswith(" BOOT_IMAGE=/syslinux/vmlinuz "), line
    assert "rd.live.squashimg" not in line and f"rd.live.overlay=UUID={uuid} " in line, line
    assert KARGS in line, line

    console = boot(prev, tmp_path / "prev.txt", uefi_firmware(tmp_path), timeout=TIMEOUT)
    assert FOUND in console, console[-3000:]  # the old image, with its own overlay
    line = root_line(console)
    assert "rd.live.dir=LiveOS rd.live.squashimg=previous/squashfs.img" in line, line
    assert f"rd.live.overlay=UUID={uuid}:/LiveOS/previous/{overlay}" in line, line
