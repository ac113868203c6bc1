"""Interrupted home and swap commands never block the next run (issue 14), real dm-crypt.

As in test_leftovers_repair.py: the command's process group gets SIGKILL as it announces
step k, for every step that holds a mapping (resize, create) and every step of swap
create; the same command then runs again with no manual cleanup (after a simulated
reboot on every other round) and must finish; the files read back identical through
dm-crypt, e2fsck -fn is clean, and no mapping or loop device of home.img is left.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from tests.guest.test_home_guest import PASS, Luks, assert_files, put_files
from tests.guest.test_leftovers_repair import Machine, progress, run_killed
from tests.root.test_maintain_refusals import cli
from tests.support.fastkdf import use_fast_kdf

pytestmark = pytest.mark.guest

MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    use_fast_kdf(monkeypatch)
    from tests import guestvm

    kroot = guestvm.cache_dir() / "root"
    for module in ("xts", "aesni_intel", "algif_skcipher"):
        subprocess.run(["modprobe", "-d", str(kroot), module], capture_output=True, check=False)


def _nothing_left(img: Path) -> None:
    dm = subprocess.run(["dmsetup", "ls"], capture_output=True, text=True).stdout
    assert "liveos-home-" not in dm, dm
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert img.name not in loops, loops


def _step_numbers(res: subprocess.CompletedProcess[str], pattern: str) -> list[int]:
    return [int(m.group(1)) for m in re.finditer(rf"^\s*(\d+)\. {pattern}", res.stderr, re.M)]


def _stick(tmp_path: Path) -> tuple[Path, Path]:
    live = tmp_path / "stick" / "LiveOS"
    live.mkdir(parents=True)
    (live / "squashfs.img").write_bytes(b"")
    key = tmp_path / "key"
    key.write_bytes(PASS)
    return tmp_path / "stick", key


def test_home_resize_killed_while_it_holds_the_mapping(tmp_path: Path) -> None:
    machine = Machine()
    stick, key = _stick(tmp_path)
    img = stick / "LiveOS" / "home.img"
    res = cli("home", "create", stick, "--size", "48M", "--passphrase-file", key, "--yes")
    assert res.returncode == 0, res.stderr
    files = {"notes.txt": b"kept\n" * 999, "blob.bin": os.urandom(MiB)}
    put_files(img, files, tmp_path)
    sizes = ["80M", "48M"]
    args = ["home", "resize", str(stick), "--passphrase-file", str(key), "--yes"]
    plan = cli(*args, "--to", sizes[0], "--dry-run")
    first = _step_numbers(plan, "open the LUKS")[0]
    last = _step_numbers(plan, "close the LUKS")[0]
    for rnd, k in enumerate(range(first + 1, last + 1)):
        to = sizes[rnd % 2]
        rc, err = run_killed([*args, "--to", to], k)
        assert rc in (-signal.SIGKILL, 0), (k, rc, err)
        progress(f"home resize --to {to} killed at step {k} (rc {rc})")
        if rnd % 2:
            machine.reboot()
        elif rc != 0:
            # Its own leftover, named as such by another command: never "shut down".
            other = cli("home", "check", stick, "--passphrase-file", key)
            if other.returncode == 5:
                assert "interrupted home-resize" in other.stderr, other.stderr
                assert "shut down" not in other.stderr
        res = cli(*args, "--to", to)
        assert res.returncode == 0, (k, res.stderr)
        assert img.stat().st_size == int(to[:-1]) * MiB
        assert_files(img, files)
        _nothing_left(img)
        assert not list(img.parent.glob(".*.run")), k


def test_home_create_and_swap_create_killed_at_their_steps(tmp_path: Path) -> None:
    machine = Machine()
    stick, key = _stick(tmp_path)
    img = stick / "LiveOS" / "home.img"
    args = ["home", "create", str(stick), "--size", "48M", "--passphrase-file", str(key)]
    steps = len(_step_numbers(cli(*args, "--dry-run"), ""))
    for k in range(2, steps + 1):  # from luksFormat on: the steps that use dm-crypt
        img.unlink(missing_ok=True)
        rc, err = run_killed([*args, "--yes"], k)
        assert rc in (-signal.SIGKILL, 0), (k, rc, err)
        if k % 2:
            machine.reboot()
        res = cli(*args, "--yes")
        if img.exists() and res.returncode == 2:
            assert "already exists" in res.stderr  # killed after the rename: it is complete
        else:
            assert res.returncode == 0, (k, res.stderr)
        assert assert_files(img, {})[1] == "HOME"
        _nothing_left(img)
        assert not list(img.parent.glob(".home.img.partial*")), k
    swap = stick / "LiveOS" / "swap.img"
    sargs = ["swap", "create", str(stick), "--size", "8M", "--yes"]
    for k in range(1, 4):
        swap.unlink(missing_ok=True)
        rc, err = run_killed(sargs, k)
        assert rc in (-signal.SIGKILL, 0), (k, rc, err)
        res = cli(*sargs)
        assert res.returncode == 0 or (swap.exists() and "already exists" in res.stderr), res
        out = subprocess.run(["blkid", "-p", "-o", "export", str(swap)], capture_output=True)
        assert b"TYPE=swap" in out.stdout
        assert swap.stat().st_size == 8 * MiB
    with Luks(img):
        pass  # the created home.img still opens with the passphrase
