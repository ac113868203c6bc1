"""Smoke test of the guest tier: a real device-mapper snapshot over loop devices."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.support.shell import MiB

pytestmark = pytest.mark.guest

DM_NAME = "liveos-guest-smoke"


def run(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr}"
    return proc.stdout.strip()


def sparse(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        f.truncate(size)
    return path


def snapshot_allocated(status: str) -> int:
    # "0 131072 snapshot <allocated>/<total> <metadata>"
    return int(status.split()[3].split("/")[0])


def test_dm_snapshot_over_loop_devices(tmp_path: Path) -> None:
    base = sparse(tmp_path / "base.img", 64 * MiB)
    cow = sparse(tmp_path / "cow.img", 8 * MiB)
    loops: list[str] = []
    created = False
    try:
        loops.append(run("losetup", "-f", "--show", str(base)))
        loops.append(run("losetup", "-f", "--show", str(cow)))
        table = f"0 {64 * MiB // 512} snapshot {loops[0]} {loops[1]} PO 8"
        run("dmsetup", "create", DM_NAME, "--table", table)
        created = True

        status = run("dmsetup", "status", DM_NAME)
        assert status == "0 131072 snapshot 16/16384 16"

        # No udev in the guest, so use the kernel's dm-N node, not /dev/mapper.
        minor = int(run("dmsetup", "info", "-c", "--noheadings", "-o", "minor", DM_NAME))
        dev = f"/dev/dm-{minor}"
        assert stat.S_ISBLK(os.stat(dev).st_mode)
        with open(dev, "r+b", buffering=0) as f:
            assert f.write(b"\xa5" * MiB) == MiB
            os.fsync(f.fileno())

        after = run("dmsetup", "status", DM_NAME)
        assert snapshot_allocated(after) > 16, after
    finally:
        if created:
            subprocess.run(["dmsetup", "remove", DM_NAME], check=False)
        for loop in loops:
            subprocess.run(["losetup", "-d", loop], check=False)
