"""The boot proof: a stick written by liveos-iso-to-disk boots under Debian's dracut
(dmsquash-live) through its own boot loader, and keeps what boot 1 wrote.

SeaBIOS -> our MBR code (syslinux mbr.bin) -> syslinux on the FAT partition -> the
kernel arguments we wrote -> dracut finds overlay-<LABEL>-<UUID> by name. A boot is
judged only by marker lines on the serial console under a timeout (qemu's exit
status means nothing; a misnamed overlay makes dracut wait for Enter forever).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from liveos_tools.cow import read_store
from tests.fixtures import isobuild
from tests.guestvm import guest_unavailable_reason, run_in_guest

BOOT_TIMEOUT = 300
MIB = 1024 * 1024

pytestmark = pytest.mark.skipif(
    not (isobuild.GUEST_CACHE / "kver").is_file()
    or shutil.which("dracut") is None
    or shutil.which("qemu-system-x86_64") is None,
    reason="needs the guest kernel, dracut-core/dracut-live and qemu (scripts/setup)",
)


def boot(
    img: Path, console: Path, firmware: Sequence[str] = (), timeout: float = BOOT_TIMEOUT
) -> str:
    """Boot the disk image through its own boot loader (SeaBIOS, or the `firmware` qemu
    arguments: see uefi_firmware) and return what the serial console showed."""
    return run_qemu(
        console, *firmware, "-drive", f"file={img},format=raw,if=virtio", timeout=timeout
    )


def run_qemu(console: Path, *args: str, timeout: float = BOOT_TIMEOUT) -> str:
    """qemu (TCG, 1 GiB, one CPU, no display) with `args` (firmware, drives), its serial
    console into `console`; what the console showed."""
    argv = [
        "qemu-system-x86_64",
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-m",
        "1024",
        "-smp",
        "1",
        "-nodefaults",
        "-display",
        "none",
        "-monitor",
        "none",
        "-no-reboot",
        "-serial",
        f"file:{console}",
        *args,
    ]
    # A hang ends at the timeout; the boot is judged by the markers the callers check.
    start = time.monotonic()
    with contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False
        )
    print(f"boot {console.name}: {time.monotonic() - start:.0f} s")
    return console.read_text(errors="replace")


#: Debian's ovmf package: the UEFI firmware, and the template of its variable store.
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS.fd")


def uefi_firmware(workdir: Path) -> list[str]:
    """qemu arguments for OVMF, with a writable copy of its variables (a machine's NVRAM)."""
    nvram = workdir / "OVMF_VARS.fd"
    if not nvram.exists():
        shutil.copyfile(OVMF_VARS, nvram)
    return [
        "-drive",
        f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
        "-drive",
        f"if=pflash,format=raw,file={nvram}",
    ]


def write_stick(
    iso: Path,
    img: Path,
    *,
    size: str,
    overlay_mb: int,
    fstype: str = "vfat",
    overlayfs: bool = False,
) -> str:
    """liveos-iso-to-disk of the fixture ISO onto a stick image (vfat, or `fstype`) that
    boots straight into dracut on the serial console; its stdout. `overlayfs`: OverlayFS
    persistence instead of a dm overlay."""
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "liveos_tools.cli.iso_to_disk",
            "--format",
            f"{size},{fstype}",
            "--reset-mbr",
            *(["--overlayfs"] if overlayfs else []),
            "--overlay-size-mb",
            str(overlay_mb),
            "--timeout",
            "0",
            "--nomenu",
            "--yes",
            "--extra-kernel-args",
            "console=ttyS0 rd.emergency=poweroff rd.shell=0",
            str(iso),
            str(img),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_written_stick_boots_and_persists(tmp_path: Path) -> None:
    initrd = isobuild.dracut_initramfs()
    iso = isobuild.build_iso(tmp_path / "live.iso", "classic", initramfs=initrd)
    img = tmp_path / "stick.img"
    stdout = write_stick(iso.path, img, size="512M", overlay_mb=64)
    line = next(w for w in stdout.split() if w.startswith("overlay="))
    overlay = line.removeprefix("overlay=")
    uuid = overlay.removeprefix("overlay-LIVE_TEST-")

    first = boot(img, tmp_path / "console1.txt")
    assert "LIVEOS-BOOT1-WROTE" in first, first[-3000:]
    # the kernel arguments came from our syslinux.cfg, through our MBR and syslinux
    assert f"root=live:UUID={uuid} rootfstype=vfat rw rd.live.image" in first
    assert "BOOT_IMAGE=vmlinuz" in first  # syslinux sets BOOT_IMAGE; qemu -kernel would not

    second = boot(img, tmp_path / "console2.txt")
    assert "LIVEOS-BOOT2-FOUND written on boot 1" in second, second[-3000:]

    # liveos-overlay status on the stick itself, in the guest kernel (the host has no
    # vfat): it attaches the image read-only, mounts the FAT and reads the overlay.
    reason = guest_unavailable_reason()
    assert reason is None, reason
    job = run_in_guest(
        f"python3 -m liveos_tools.cli.main status --json {img}; echo EXIT=$?", timeout=600
    )
    assert job.rc == 0 and "EXIT=0" in job.log, job.log[-3000:] + job.console[-2000:]
    data = json.loads(job.log[: job.log.rindex("EXIT=")])
    assert (data["state"], data["name_matches"], data["expected_name"]) == (
        "valid",
        True,
        overlay,
    )
    assert (data["medium"]["fstype"], data["medium"]["label"]) == ("vfat", "LIVE_TEST")
    # boot 1 wrote a marker and 4 MiB of random data through live-rw
    assert 4 * MIB < data["used_bytes"] < 64 * MIB, data
    print(f"guest status of the stick: {job.seconds:.1f} s, {data['sectors_allocated']} sectors")
    # ... and the same overlay read off the FAT in userspace gives the same numbers.
    out = tmp_path / "overlay.bin"
    subprocess.run(
        ["mcopy", "-n", "-i", f"{img}@@{MIB}", f"::LiveOS/{overlay}", str(out)], check=True
    )
    offline = read_store(out)
    assert (offline.sectors_allocated, offline.total_sectors, offline.metadata_sectors) == (
        data["sectors_allocated"],
        data["total_sectors"],
        data["metadata_sectors"],
    )
