"""Host tests that need root and loop devices (ext4 only: no vfat, no dm on this kernel).

After each test, any loop device backed by a file under the test's tmp_path, and any
mount below it, is a leak: it is cleaned up and the test fails. Only those: other
processes on the machine may be using loop devices of their own at the same time.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from liveos_tools import mounts
from liveos_tools.tools import losetup


@pytest.fixture(autouse=True)
def _needs_root_and_no_leaks(tmp_path: Path) -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("needs root for loop devices and mounts")
    yield
    mine = str(tmp_path.resolve()) + "/"
    leaked_mounts = [m.mountpoint for m in mounts.mounts() if m.mountpoint.startswith(mine)]
    for where in reversed(leaked_mounts):
        subprocess.run(["umount", "-l", where], check=False)
    leaked_loops = _loops_under(mine)
    # `umount` of a `mount -o loop` returns before the kernel clears the autoclear loop
    # device it leaves behind: give such devices a moment before calling them leaks.
    deadline = time.monotonic() + 10
    while leaked_loops and time.monotonic() < deadline and all(map(_autoclear, leaked_loops)):
        time.sleep(0.2)
        leaked_loops = _loops_under(mine)
    for dev in leaked_loops:
        subprocess.run(["losetup", "-d", dev], check=False)
    assert not leaked_mounts, f"the test leaked mounts: {leaked_mounts}"
    assert not leaked_loops, f"the test leaked loop devices: {leaked_loops}"


def _loops_under(prefix: str) -> list[str]:
    return [
        d.name for d in losetup.list_devices() if d.back_file and d.back_file.startswith(prefix)
    ]


def _autoclear(dev: str) -> bool:
    try:
        return Path(f"/sys/block/{Path(dev).name}/loop/autoclear").read_text().strip() == "1"
    except OSError:
        return True  # gone already
