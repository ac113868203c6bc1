"""The boot proof of `update`: a stick written from release A moves to release B.

Release B is a directory (LiveOS/squashfs.img + isolinux/ kernel and initrd) whose root
prints RELEASE-B. Boot 1 (A) writes a marker; `update --from B` (in the guest kernel:
vfat); boot 2 runs B with a fresh overlay (no marker); the "Previous image" entry boots
A with its own kernel and overlay and finds the marker.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.boot.test_iso_boot import boot, pytestmark, write_stick  # noqa: F401  (the same skip)
from tests.boot.test_refresh_boot import FOUND, MIB, cli, in_guest
from tests.fixtures import isobuild
from tests.guestvm import guest_unavailable_reason


def release_b(dest: Path, initrd: Path) -> Path:
    work = dest / "work"
    tree = work / "rootfs-tree"
    isobuild._rootfs_tree(tree)
    init = tree / "sbin" / "init"
    up = 'echo "LIVEOS-ROOT-UP'
    init.write_text(isobuild.INIT_SCRIPT.replace(up, f"echo RELEASE-B\n{up}"))
    sq = work / "sq" / "LiveOS"
    sq.mkdir(parents=True)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", "Anaconda", "-d", str(tree), str(sq / "rootfs.img"), "24M"],
        check=True,
    )
    src = dest / "B"
    (src / "LiveOS").mkdir(parents=True)
    out = src / "LiveOS" / "squashfs.img"
    subprocess.run(
        [
            "mksquashfs",
            str(sq.parent),
            str(out),
            "-comp",
            "gzip",
            "-noappend",
            "-quiet",
            "-no-progress",
        ],
        check=True,
    )
    (src / "isolinux").mkdir()
    shutil.copyfile(isobuild.guest_kernel()[1], src / "isolinux" / "vmlinuz")
    shutil.copyfile(initrd, src / "isolinux" / "initrd.img")
    shutil.rmtree(work)
    return src


def test_update_boots_the_new_release_and_the_previous_entry_the_old(tmp_path: Path) -> None:
    reason = guest_unavailable_reason()
    assert reason is None, reason
    initrd = isobuild.dracut_initramfs()
    iso = isobuild.build_iso(tmp_path / "a.iso", "classic", initramfs=initrd)
    share = tmp_path / "share"
    share.mkdir()
    b = release_b(share, initrd)
    img = share / "stick.img"
    write_stick(iso.path, img, size="256M", overlay_mb=32)

    first = boot(img, tmp_path / "console1.txt")
    assert "LIVEOS-BOOT1-WROTE" in first and "RELEASE-B" not in first, first[-3000:]

    in_guest(share, cli("update", "--from", str(b), str(img), "--yes"))
    prev = share / "prev.img"
    subprocess.run(["cp", "--sparse=always", str(img), str(prev)], check=True)
    at = f"{prev}@@{MIB}"
    cfg = subprocess.run(
        ["mtype", "-i", at, "::/syslinux/syslinux.cfg"], capture_output=True, text=True, check=True
    ).stdout
    assert "kernel /LiveOS/previous/vmlinuz" in cfg, cfg
    edited = tmp_path / "syslinux.cfg"
    edited.write_text(cfg.replace("default linux", "default liveos-previous"))
    subprocess.run(["mcopy", "-o", "-i", at, str(edited), "::/syslinux/syslinux.cfg"], check=True)

    second = boot(img, tmp_path / "console2.txt")
    assert "RELEASE-B" in second and "LIVEOS-BOOT1-WROTE" in second, second[-3000:]

    third = boot(prev, tmp_path / "console3.txt")
    assert FOUND in third and "RELEASE-B" not in third, third[-3000:]
    up = third.split("LIVEOS-ROOT-UP", 1)[1].splitlines()[0]
    assert "BOOT_IMAGE=/LiveOS/previous/vmlinuz" in up, up
    assert "rd.live.squashimg=previous/squashfs.img" in up, up
