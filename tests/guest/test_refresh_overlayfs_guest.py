"""refresh and rollback of a vfat OverlayFS stick (the upper layer in an image file,
LiveOS/overlay-<LABEL>-<UUID> holding overlayfs/ and ovlwork/), under the guest kernel,
which has vfat: the learner's changes are made through the kernel's overlayfs, and the
new squashfs.img must show the kernel's merged view (tests/root/test_refresh_overlayfs.py
does the same on ext4 sticks, on the host).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.root.test_refresh_overlayfs import (
    OVERLAY,
    OStick,
    build_base,
    kernel_view,
    learn_through_kernel,
    make_overlay,
    mounted,
    new_image_view,
    upper_raw,
    write_configs,
)
from tests.support.shell import MiB, sh

pytestmark = pytest.mark.guest


def test_vfat_overlay_image_refresh_and_rollback(tmp_path: Path) -> None:
    from tests.guest.test_refresh_kill import cli  # forked: the guest's Python starts slowly

    img = tmp_path / "stick.img"
    with open(img, "wb") as f:
        f.truncate(96 * MiB)
    sh("mkfs.fat", "-F", "32", "-n", "LIVE", img)
    with mounted(img, tmp_path / "stick", "loop") as root:
        stick = OStick(img, root, flat=False, image_overlay=True)
        live = stick.ldir
        live.mkdir()
        build_base(tmp_path, live / "squashfs.img", flat=False)
        write_configs(root)
        make_overlay(stick, tmp_path)
        learn_through_kernel(stick, tmp_path)
        truth = kernel_view(stick, tmp_path / "k1")
        old_upper = upper_raw(stick, tmp_path / "u0")
        old_image = (live / OVERLAY).read_bytes()

        res = cli("refresh", root, "--yes", "--workdir", tmp_path)
        assert res.returncode == 0, res.stderr
        assert new_image_view(stick, tmp_path / "new") == truth
        assert upper_raw(stick, tmp_path / "u1") == {}  # a fresh overlay image
        assert (live / OVERLAY).stat().st_size == 24 * MiB
        assert (live / "previous" / OVERLAY).read_bytes() == old_image

        res = cli("rollback", root, "--yes")
        assert res.returncode == 0, res.stderr
        assert (live / OVERLAY).read_bytes() == old_image
        assert upper_raw(stick, tmp_path / "u2") == old_upper
        assert kernel_view(stick, tmp_path / "k2") == truth
    # whole renames only: the FAT has no cross-linked or lost clusters
    fsck = subprocess.run(["fsck.fat", "-n", str(img)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
