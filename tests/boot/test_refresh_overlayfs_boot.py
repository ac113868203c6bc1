"""The boot proof of refresh on an OverlayFS stick, through the stick's own boot
loader (extlinux on ext4) and Debian's dracut (dmsquash-live, rd.live.overlay.overlayfs):

1. boot 1 writes a marker and deletes a base file, through dracut's overlayfs (the
   kernel writes the marker into LiveOS/overlay-<LABEL>-<UUID>/ and a whiteout);
2. `refresh` on the host (the stick is ext4, which the host mounts): the new
   squashfs.img holds the marker and not the deleted file; the upper directory is
   empty, ovlwork/ beside it, and `status` shows the kept previous image;
3. boot 2 finds the marker and the deletion in the new base, under the fresh overlay;
4. a copy of the stick whose extlinux default is the "Previous image" entry boots the
   old base with its own upper layer (LiveOS/previous/overlay-<LABEL>-<UUID>, and
   previous/ovlwork as dracut's workdir): the marker and the deletion are there too,
   from the old upper.

Rollback is proven on the host (tests/root/test_refresh_overlayfs.py) and, for the
shared switch, by tests/boot/test_refresh_boot.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.boot.test_iso_boot import boot, write_stick
from tests.boot.test_iso_boot import pytestmark as needs_boot
from tests.fixtures import isobuild
from tests.guestvm import guest_unavailable_reason
from tests.support.shell import cli_process as cli
from tests.support.shell import sh

pytestmark = [
    needs_boot,
    pytest.mark.skipif(os.geteuid() != 0, reason="refresh runs on the host: needs root"),
]

DELETED = "usr/share/fixture/data.txt"
#: the fixture's /sbin/init, which also deletes a base file on boot 1 and reports it
#: on boot 2
INIT = f"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
echo "LIVEOS-ROOT-UP $(/bin/busybox cat /proc/cmdline)"
if [ -f /var/liveos-marker ]; then
    echo "LIVEOS-BOOT2-FOUND $(/bin/busybox cat /var/liveos-marker)"
    if [ -e /{DELETED} ]; then echo LIVEOS-DELETED-IS-BACK; else echo LIVEOS-DELETED-GONE; fi
else
    echo "written on boot 1" > /var/liveos-marker
    /bin/busybox rm /{DELETED}
    /bin/busybox sync
    echo LIVEOS-BOOT1-WROTE
fi
/bin/busybox sync
/bin/busybox poweroff -f
"""


@contextlib.contextmanager
def stick_partition(img: Path, where: Path) -> Iterator[Path]:
    """The stick's first partition (ext4) mounted on the host."""
    loop = sh("losetup", "--find", "--show", "--partscan", img).strip()
    try:
        if not Path(f"{loop}p1").exists():
            subprocess.run(["partx", "--add", loop], check=False)
        where.mkdir(exist_ok=True)
        sh("mount", f"{loop}p1", where)
        try:
            yield where
        finally:
            sh("umount", where)
    finally:
        sh("losetup", "-d", loop)


def test_refresh_overlayfs_stick_boots_with_the_learners_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reason = guest_unavailable_reason()
    assert reason is None, reason
    monkeypatch.setattr(isobuild, "INIT_SCRIPT", INIT)
    initrd = isobuild.dracut_initramfs()
    iso = isobuild.build_iso(tmp_path / "live.iso", "classic", initramfs=initrd)
    img = tmp_path / "stick.img"
    stdout = write_stick(iso.path, img, size="256M", overlay_mb=32, fstype="ext4", overlayfs=True)
    overlay = next(w for w in stdout.split() if w.startswith("overlay=")).split("=", 1)[1]

    first = boot(img, tmp_path / "console1.txt")
    assert "LIVEOS-BOOT1-WROTE" in first, first[-3000:]
    assert "rd.live.overlay.overlayfs" in first.split("LIVEOS-ROOT-UP", 1)[1].splitlines()[0]

    with stick_partition(img, tmp_path / "m1") as root:
        upper = root / "LiveOS" / overlay
        # what dracut's overlayfs wrote: the marker, and a whiteout for the base file
        assert (upper / "var" / "liveos-marker").read_text() == "written on boot 1\n"
        assert (upper / DELETED).is_char_device()

    res = cli("refresh", img, "--yes", "--workdir", tmp_path)
    assert res.returncode == 0, res.stderr
    status = json.loads(cli("status", "--json", img).stdout)
    assert status["refresh"]["previous_bytes"] > 0, status

    with stick_partition(img, tmp_path / "m2") as root:
        live = root / "LiveOS"
        assert (live / overlay).is_dir() and not any((live / overlay).iterdir())
        assert (live / "ovlwork").is_dir()
        assert (live / "previous" / overlay / "var" / "liveos-marker").exists()
        sq = tmp_path / "sq"
        sh("unsquashfs", "-d", sq, live / "squashfs.img")
    # a copy whose default is the previous entry (extlinux has no other way to pick one
    # headless); made before boot 2 changes the new upper
    prev = tmp_path / "prev.img"
    sh("cp", "--sparse=always", img, prev)
    with stick_partition(prev, tmp_path / "mp") as root:
        conf = root / "syslinux" / "extlinux.conf"
        text = conf.read_text()
        assert "label liveos-previous" in text and "default linux" in text, text
        conf.write_text(text.replace("default linux", "default liveos-previous"))
    rootfs = sq / "LiveOS" / "rootfs.img"
    listing = sh("debugfs", "-R", "ls -l /var", rootfs)
    assert "liveos-marker" in listing, listing
    gone = subprocess.run(
        ["debugfs", "-R", f"stat /{DELETED}", str(rootfs)], capture_output=True, text=True
    )
    assert "File not found" in gone.stderr, gone.stderr

    second = boot(img, tmp_path / "console2.txt")
    assert "LIVEOS-BOOT2-FOUND written on boot 1" in second, second[-3000:]
    assert "LIVEOS-DELETED-GONE" in second, second[-3000:]
    up = second.split("LIVEOS-ROOT-UP", 1)[1].splitlines()[0]
    assert "rd.live.squashimg" not in up and "rd.live.overlay.overlayfs" in up, up
    with stick_partition(img, tmp_path / "m3") as root:
        # boot 2 wrote into the fresh upper only what it changed (nothing of boot 1's)
        assert not (root / "LiveOS" / overlay / "var" / "liveos-marker").exists()

    third = boot(prev, tmp_path / "console3.txt")
    assert "LIVEOS-BOOT2-FOUND written on boot 1" in third, third[-3000:]
    assert "LIVEOS-DELETED-GONE" in third, third[-3000:]
    up = third.split("LIVEOS-ROOT-UP", 1)[1].splitlines()[0]
    assert "rd.live.squashimg=previous/squashfs.img" in up, up
    assert f":/LiveOS/previous/{overlay}" in up and "rd.live.overlay.overlayfs" in up, up
    prev.unlink()
