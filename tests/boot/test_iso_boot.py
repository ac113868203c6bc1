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
from pathlib import Path

import pytest

from tests.fixtures import isobuild

BOOT_TIMEOUT = 300
MIB = 1024 * 1024

pytestmark = pytest.mark.skipif(
    not (isobuild.GUEST_CACHE / "kver").is_file() or shutil.which("dracut") is None
    or shutil.which("qemu-system-x86_64") is None,
    reason="needs the guest kernel, dracut-core/dracut-live and qemu (scripts/setup)",
)


def boot(img: Path, console: Path) -> str:
    argv = [
        "qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "1",
        "-nodefaults", "-display", "none", "-monitor", "none", "-no-reboot",
        "-serial", f"file:{console}",
        "-drive", f"file={img},format=raw,if=virtio",
    ]  # fmt: skip
    # A hang ends at the timeout; the boot is judged by the markers below.
    with contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=BOOT_TIMEOUT, check=False)
    return console.read_text(errors="replace")


def test_written_stick_boots_and_persists(tmp_path: Path) -> None:
    initrd = isobuild.dracut_initramfs()
    iso = isobuild.build_iso(tmp_path / "live.iso", "classic", initramfs=initrd)
    img = tmp_path / "stick.img"
    res = subprocess.run(
        [sys.executable, "-m", "liveos_tools.cli.iso_to_disk", "--format", "512M",
         "--reset-mbr", "--overlay-size-mb", "64", "--timeout", "0", "--nomenu", "--yes",
         "--extra-kernel-args", "console=ttyS0 rd.emergency=poweroff rd.shell=0",
         str(iso.path), str(img)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    line = next(w for w in res.stdout.split() if w.startswith("overlay="))
    overlay = line.removeprefix("overlay=")
    uuid = overlay.removeprefix("overlay-LIVE_TEST-")

    first = boot(img, tmp_path / "console1.txt")
    assert "LIVEOS-BOOT1-WROTE" in first, first[-3000:]
    # the kernel arguments came from our syslinux.cfg, through our MBR and syslinux
    assert f"root=live:UUID={uuid} rootfstype=vfat rw rd.live.image" in first
    assert "BOOT_IMAGE=vmlinuz" in first  # syslinux sets BOOT_IMAGE; qemu -kernel would not

    second = boot(img, tmp_path / "console2.txt")
    assert "LIVEOS-BOOT2-FOUND written on boot 1" in second, second[-3000:]

    # liveos-overlay status on the overlay afterwards: the host has no vfat, so the
    # overlay is read out of the FAT with mtools first (read-only on the stick).
    out = tmp_path / "overlay.bin"
    subprocess.run(["mcopy", "-n", "-i", f"{img}@@{MIB}", f"::LiveOS/{overlay}", str(out)],
                   check=True)
    status = subprocess.run(
        [sys.executable, "-m", "liveos_tools.cli.main", "status", "--json", str(out)],
        capture_output=True, text=True, check=False,
    )
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    text = json.dumps(data)
    assert '"valid"' in text
    used = _find(data, "used_bytes")
    # boot 1 wrote a marker and 4 MiB of random data through live-rw
    assert used is not None and 4 * MIB < used < 64 * MIB, text


def _find(obj: object, key: str) -> int | None:
    if isinstance(obj, dict):
        if key in obj and isinstance(obj[key], int):
            return obj[key]
        for v in obj.values():
            found = _find(v, key)
            if found is not None:
                return found
    if isinstance(obj, list):
        for v in obj:
            found = _find(v, key)
            if found is not None:
                return found
    return None
