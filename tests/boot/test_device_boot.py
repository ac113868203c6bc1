"""Boot proofs of sticks written to a BLOCK DEVICE, as a classroom admin writes /dev/sdX.

    truncate -s 1G disk.img; LD=$(losetup -f --show -P disk.img)
    liveos-iso-to-disk --format ... --reset-mbr --overlay-size-mb 64 --yes ISO $LD
    losetup -d $LD

then the backing file boots in qemu through the stick's own boot loaders, twice: boot 1
writes a marker through dracut's live-rw, boot 2 finds it. Image-file targets hide the
device bugs (a partition the kernel sees at another sector than the writer used, mkfs on
the whole disk): here the kernel's partition table on the loop device is the one written.

* msdos + vfat: SeaBIOS -> mbr.bin -> syslinux on p1 (boot 1); OVMF -> the GRUB EFI loader
  on the same FAT partition -> its EFI/BOOT/grub.cfg (insmod part_msdos, fat) (boot 2).
* msdos + ext4: SeaBIOS -> mbr.bin -> extlinux (boot 1); OVMF -> GRUB on the ESP next
  to the ext4 partition -> ext4 (boot 2).
* --efi (GPT + ESP) + ext4: OVMF -> GRUB on the ESP -> the ext4 partition, twice.

Which loader ran is told by BOOT_IMAGE: syslinux passes `vmlinuz`, GRUB `/syslinux/vmlinuz`.
The fixture ISO carries a real GRUB EFI image (isobuild.grub_efi_loader) and the dracut
initramfs. Each boot is one qemu TCG run (30-60 s on a quiet machine): every boot checks
the marker, the whole kernel command line the init script echoes, and the loader.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from liveos_tools.cow import read_store
from liveos_tools.tools import losetup
from tests.boot.test_iso_boot import OVMF_CODE, OVMF_VARS, boot, uefi_firmware
from tests.boot.test_iso_boot import pytestmark as _needs_guest_tools
from tests.fixtures import isobuild

MIB = 1024 * 1024
TIMEOUT = 900  # TCG on a shared, busy machine: a UEFI boot has taken 3 minutes
# no_timer_check: on a loaded host TCG can fail the kernel's IO-APIC timer check ("IO-APIC +
# timer doesn't work!", a panic); panic=-1 turns any panic into a quick exit, not a hang.
KARGS = "console=ttyS0 rd.emergency=poweroff rd.shell=0 no_timer_check panic=-1"

pytestmark = [
    _needs_guest_tools,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for loop devices"),
    pytest.mark.skipif(
        not (OVMF_CODE.is_file() and OVMF_VARS.is_file()),
        reason="needs OVMF (Debian package ovmf, scripts/setup)",
    ),
    pytest.mark.skipif(
        not Path("/usr/lib/grub/x86_64-efi").is_dir(),
        reason="needs grub-efi-amd64-bin (scripts/setup)",
    ),
]


@pytest.fixture(scope="module")
def iso(tmp_path_factory: pytest.TempPathFactory) -> isobuild.FixtureIso:
    work = tmp_path_factory.mktemp("iso")
    return isobuild.build_iso(
        work / "live.iso", "classic", initramfs=isobuild.dracut_initramfs(), efi_grub=True
    )


@contextmanager
def loop_device(img: Path) -> Iterator[str]:
    """`losetup -f --show -P img`, detached whatever happens."""
    dev = subprocess.run(
        ["losetup", "-f", "--show", "-P", str(img)], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["partx", "--delete", dev], capture_output=True, check=False)
        subprocess.run(["losetup", "-d", dev], capture_output=True, check=False)


def write_to_device(iso: isobuild.FixtureIso, img: Path, size: int, *opts: str) -> tuple[str, str]:
    """Write the stick through a partition-scanned loop device: (UUID, LABEL) it reports."""
    with open(img, "wb") as f:
        f.truncate(size)
    with loop_device(img) as dev:
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "liveos_tools.cli.iso_to_disk",
                *opts,
                "--reset-mbr",
                "--overlay-size-mb",
                "64",
                "--timeout",
                "0",
                "--nomenu",
                "--yes",
                "--extra-kernel-args",
                KARGS,
                str(iso.path),
                dev,
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert res.returncode == 0, res.stdout + res.stderr
        assert " written," in res.stdout, res.stdout
    words = dict(w.split("=", 1) for w in res.stdout.split() if "=" in w)
    assert words["overlay"] == f"overlay-{words['LABEL']}-{words['UUID']}", res.stdout
    return words["UUID"], words["LABEL"]


def has_esp(img: Path) -> bool:
    out = subprocess.run(
        ["sfdisk", "--json", str(img)], capture_output=True, text=True, check=True
    ).stdout
    return any(
        t in out.lower()
        for t in ('"type":"ef"', '"type": "ef"', "c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
    )


def assert_boot(console: str, n: int, uuid: str, fstype: str, loader: str) -> None:
    """Boot n (1 writes the marker, 2+ find it), with our arguments, through `loader`."""
    tail = console[-3000:]
    if n == 1:
        assert "LIVEOS-BOOT1-WROTE" in console, tail
    else:
        assert "LIVEOS-BOOT2-FOUND written on boot 1" in console, tail
    image = {
        "syslinux": "BOOT_IMAGE=vmlinuz initrd=initrd.img ",
        "grub": "BOOT_IMAGE=/syslinux/vmlinuz ",
    }[loader]
    want = (
        f"LIVEOS-ROOT-UP {image}root=live:UUID={uuid} rootfstype={fstype} rw "
        f"rd.live.image rd.live.overlay=UUID={uuid} quiet rhgb {KARGS}"
    )
    assert want in console, tail
    if loader == "grub":
        assert "BdsDxe: starting" in console, tail  # it was OVMF's boot manager


def overlay_use(img: Path, uuid: str, label: str, fstype: str, workdir: Path) -> int:
    """Bytes the kernel allocated in the overlay, read off the written stick offline."""
    out = workdir / "overlay.bin"
    out.unlink(missing_ok=True)
    name = f"LiveOS/overlay-{label}-{uuid}"
    with loop_device(img) as dev:
        parts = losetup.wait_for_partitions(dev)
        part = next(
            p
            for p in parts
            if subprocess.run(
                ["blkid", "-p", "-s", "UUID", "-o", "value", p], capture_output=True, text=True
            ).stdout.strip()
            == uuid
        )
        if fstype == "vfat":
            subprocess.run(
                ["mcopy", "-n", "-i", part, f"::{name}", str(out)], capture_output=True, check=True
            )
        else:  # -c: read-only, the journal of a stick that was never cleanly unmounted
            subprocess.run(
                ["debugfs", "-c", "-R", f"dump /{name} {out}", part],
                capture_output=True,
                check=True,
            )
    return read_store(out).sectors_allocated * 512


@pytest.mark.parametrize(
    ("opts", "fstype", "firmwares"),
    [
        # SeaBIOS -> mbr.bin -> syslinux on p1; then OVMF -> GRUB on the same FAT p1
        (("--format", ",vfat"), "vfat", ("bios", "uefi")),
        # SeaBIOS -> mbr.bin -> extlinux; then OVMF -> GRUB on the ESP -> ext4 on msdos
        (("--format", ",ext4"), "ext4", ("bios", "uefi")),
        # OVMF -> GRUB on the ESP -> ext4 on GPT, twice
        (("--efi", "--format", ",ext4"), "ext4", ("uefi", "uefi")),
    ],
    ids=["msdos-vfat", "msdos-ext4-esp", "gpt-esp-ext4"],
)
def test_stick_written_to_a_device_boots_and_persists(
    iso: isobuild.FixtureIso,
    tmp_path: Path,
    opts: tuple[str, ...],
    fstype: str,
    firmwares: tuple[str, ...],
) -> None:
    img = tmp_path / "disk.img"
    uuid, label = write_to_device(iso, img, 1024 * MIB, *opts)
    if fstype != "vfat":
        assert has_esp(img)  # the only way UEFI firmware reaches an ext4 stick
    for n, firmware in enumerate(firmwares, 1):
        qemu_fw = uefi_firmware(tmp_path) if firmware == "uefi" else []
        console = boot(img, tmp_path / f"{firmware}{n}.txt", qemu_fw, timeout=TIMEOUT)
        assert_boot(console, n, uuid, fstype, "grub" if firmware == "uefi" else "syslinux")
    # boot 1 wrote 4 MiB of random data through live-rw into the overlay on the stick
    assert 4 * MIB < overlay_use(img, uuid, label, fstype, tmp_path) < 64 * MIB
