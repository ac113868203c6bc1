"""The boot proof of refresh and rollback, through the stick's own boot loader and
Debian's dracut (dmsquash-live), as tests/boot/test_iso_boot.py boots a written stick.

1. boot 1 writes a marker (and 4 MiB) through the overlay;
2. `refresh` (in the guest kernel, which mounts the stick's FAT): status then shows a
   new, empty overlay;
3. boot 2 finds the marker, now in the new squashfs.img, under the fresh overlay;
4. a copy of the stick whose syslinux default is the "Previous image" entry boots the
   old image with its own overlay (dracut's rd.live.squashimg / rd.live.overlay=...:path);
5. `rollback`, and the default entry boots the old pair again.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.boot.test_iso_boot import boot, pytestmark, write_stick  # noqa: F401  (the same skip)
from tests.fixtures import isobuild
from tests.guestvm import guest_unavailable_reason, run_in_guest

MIB = 1024 * 1024
FOUND = "LIVEOS-BOOT2-FOUND written on boot 1"


def in_guest(share: Path, *commands: str) -> str:
    script = "\n".join(f"{c}; echo EXIT=$?" for c in commands)
    job = run_in_guest(f"cd /run/tmp\n{script}", timeout=900, share=share)
    assert job.rc == 0, job.log[-3000:] + job.console[-2000:]
    codes = [line for line in job.log.splitlines() if line.startswith("EXIT=")]
    assert codes == ["EXIT=0"] * len(commands), job.log[-4000:]
    return job.log


def cli(*args: str) -> str:
    return f"python3 -m liveos_tools.cli.main {' '.join(args)}"


def test_refresh_previous_entry_and_rollback_boot(tmp_path: Path) -> None:
    reason = guest_unavailable_reason()
    assert reason is None, reason
    initrd = isobuild.dracut_initramfs()
    iso = isobuild.build_iso(tmp_path / "live.iso", "classic", initramfs=initrd)
    share = tmp_path / "share"
    share.mkdir()
    img = share / "stick.img"
    stdout = write_stick(iso.path, img, size="256M", overlay_mb=32)
    overlay = next(w for w in stdout.split() if w.startswith("overlay=")).split("=", 1)[1]
    uuid = overlay.removeprefix("overlay-LIVE_TEST-")

    first = boot(img, tmp_path / "console1.txt")
    assert "LIVEOS-BOOT1-WROTE" in first, first[-3000:]

    in_guest(
        share,
        cli("refresh", str(img), "--yes", "--workdir", "/run/tmp"),
        cli("status", "--json", str(img), f"> {share}/s1.json"),
    )
    data = json.loads((share / "s1.json").read_text())
    assert (data["state"], data["total_bytes"]) == ("new", 32 * MIB), data  # fresh, same size

    # a copy whose default is the previous entry (syslinux has no other way to pick one
    # headless); made before boot 2 changes the new overlay
    prev = share / "prev.img"
    subprocess.run(["cp", "--sparse=always", str(img), str(prev)], check=True)
    at = f"{prev}@@{MIB}"
    cfg = subprocess.run(
        ["mtype", "-i", at, "::/syslinux/syslinux.cfg"], capture_output=True, text=True, check=True
    ).stdout
    assert "label liveos-previous" in cfg and "default linux" in cfg, cfg
    edited = tmp_path / "syslinux.cfg"
    edited.write_text(cfg.replace("default linux", "default liveos-previous"))
    subprocess.run(["mcopy", "-o", "-i", at, str(edited), "::/syslinux/syslinux.cfg"], check=True)

    second = boot(img, tmp_path / "console2.txt")
    assert FOUND in second, second[-3000:]  # the marker is in the new image now
    assert "rd.live.squashimg" not in second.split("LIVEOS-ROOT-UP", 1)[1].splitlines()[0]

    third = boot(prev, tmp_path / "console3.txt")
    assert FOUND in third, third[-3000:]  # the old image, with its own overlay
    up = third.split("LIVEOS-ROOT-UP", 1)[1].splitlines()[0]
    assert "rd.live.squashimg=previous/squashfs.img" in up, up
    assert f"rd.live.overlay=UUID={uuid}:/LiveOS/previous/{overlay}" in up, up
    prev.unlink()

    in_guest(
        share,
        cli("rollback", str(img), "--yes"),
        cli("status", "--json", str(img), f"> {share}/s2.json"),
    )
    data = json.loads((share / "s2.json").read_text())
    assert data["state"] == "valid" and data["used_bytes"] > 4 * MIB, data  # the old overlay

    fourth = boot(img, tmp_path / "console4.txt")
    assert FOUND in fourth, fourth[-3000:]
    up = fourth.split("LIVEOS-ROOT-UP", 1)[1].splitlines()[0]
    assert "rd.live.squashimg" not in up and f"rd.live.overlay=UUID={uuid}" in up, up
