"""Host tests that need root and loop devices (ext4 only: no vfat, no dm on this kernel)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest


def _loops() -> set[str]:
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    return {line.split(":")[0] for line in out.splitlines() if line}


@pytest.fixture(autouse=True)
def _needs_root_and_no_leaks() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("needs root for loop devices and mounts")
    before = _loops()
    with open("/proc/self/mountinfo") as f:
        mounts_before = f.read().count("\n")
    yield
    leaked = _loops() - before
    with open("/proc/self/mountinfo") as f:
        mounts_after = f.read().count("\n")
    for dev in leaked:
        subprocess.run(["losetup", "-d", dev], check=False)
    assert not leaked, f"the test leaked loop devices: {sorted(leaked)}"
    assert mounts_after == mounts_before, "the test leaked mounts"
