"""refresh / rollback on a vfat stick under the real kernel (qemu guest): SIGKILL at
every step of the switch and of rollback; after each kill every boot entry boots a
whole pair (the old one, or the new image with its own overlay), a re-run brings the
stick to the old or the new pair, and the learner's files, written through the
kernel's snapshot at the start, read back identical through the kernel's snapshot of
whichever pair boots.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import NamedTuple

import pytest

from liveos_tools import bootentries as be
from liveos_tools import switch
from liveos_tools.writer import bootcfg
from tests.root.test_refresh import (
    BASE_FILES,
    LEARNER,
    MiB,
    assert_allowed,
    make_rootfs,
    sh,
    sha,
    squash,
)
from tests.support import killable
from tests.support.kernel_snap import make_file, snapshot

pytestmark = pytest.mark.guest

LABEL = "LIVE"
VOLID = "ABCD-1234"
OVERLAY = f"overlay-{LABEL}-{VOLID}"


class Ran(NamedTuple):
    returncode: int
    stderr: str


def cli(*args: str | Path, env: dict[str, str] | None = None) -> Ran:
    """liveos-overlay in a forked child: a kill hits the child only, and the guest's
    slow Python start-up (over 9p) is paid once, not once per run."""
    from liveos_tools.cli.main import main

    with tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 70
            try:
                os.environ.update(env or {})
                killable.arm((env or {}).get(killable.ENV))
                os.dup2(err.fileno(), 2)
                os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                code = main([str(a) for a in args])
            finally:
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        err.seek(0)
        text = err.read().decode(errors="replace")
    if os.WIFSIGNALED(status):
        return Ran(-os.WTERMSIG(status), text)
    return Ran(os.WEXITSTATUS(status), text)


def _name() -> str:
    return f"lt-{uuid.uuid4().hex[:8]}"


def write_through_kernel(base: Path, cow: Path, files: dict[str, bytes], mnt: Path) -> None:
    mnt.mkdir(exist_ok=True)
    with snapshot(_name(), base, cow, overflow=True) as snap:
        sh("mount", "-t", "ext4", snap.node, mnt)
        try:
            for rel, data in files.items():
                (mnt / rel).parent.mkdir(parents=True, exist_ok=True)
                (mnt / rel).write_bytes(data)
        finally:
            sh("umount", mnt)


def read_through_kernel(pair: switch.Pair, work: Path) -> dict[str, bytes]:
    """The files as the kernel's snapshot of (the rootfs in pair.base, pair.overlay) shows
    them; the overlay is read from a copy, since activating a new store writes its header."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    sh("unsquashfs", "-no-progress", "-d", work / "x", pair.base)
    cow = work / "cow"
    shutil.copyfile(pair.overlay, cow)
    mnt = work / "mnt"
    mnt.mkdir()
    out = {}
    with snapshot(_name(), work / "x" / "LiveOS" / "rootfs.img", cow, overflow=True) as snap:
        sh("mount", "-o", "ro,noload", snap.node, mnt)
        try:
            for rel in {**BASE_FILES, **LEARNER}:
                out[rel] = (mnt / rel).read_bytes()
        finally:
            sh("umount", mnt)
    shutil.rmtree(work)
    return out


def copy_tree(src: Path, dst: Path) -> None:
    for entry in list(dst.iterdir()):
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    for entry in src.iterdir():
        if entry.is_dir():
            shutil.copytree(entry, dst / entry.name)
        else:
            shutil.copyfile(entry, dst / entry.name)
    os.sync()


REFRESH_POINTS = [
    "switch-boot-next",
    "switch-moving-old",
    "switch-moved-old",
    "switch-boot-previous",
    "switch-moving-new",
    "switch-moved-new",
    "switch-done",
]
ROLLBACK_POINTS = [
    "rollback-journal",
    "rollback-entries",
    "rollback-moving",
    "rollback-staged",
    "switch-moving-old",
    "switch-moving-new",
]


def test_vfat_stick_sigkill_at_every_switch_and_rollback_step(tmp_path: Path) -> None:
    import liveos_tools.cli.refresh
    import liveos_tools.tasks.refresh  # noqa: F401  (imported once, before the forks)

    base = tmp_path / "base-rootfs.img"
    make_rootfs(base, BASE_FILES, size=16 * MiB)
    cow = make_file(tmp_path / "cow", 8 * MiB)
    write_through_kernel(base, cow, LEARNER, tmp_path / "m")
    want = {**BASE_FILES, **LEARNER}

    img = make_file(tmp_path / "stick.img", 96 * MiB)
    sh("mkfs.fat", "-F", "32", "-n", LABEL, "-i", VOLID.replace("-", ""), img)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    sh("mount", "-o", "loop", img, mnt)
    try:
        live = mnt / "LiveOS"
        live.mkdir()
        squash(base, live / "squashfs.img")
        shutil.copyfile(cow, live / OVERLAY)
        args = bootcfg.BootArgs(uuid=VOLID, fstype="vfat")
        (mnt / "syslinux").mkdir()
        (mnt / "syslinux" / "syslinux.cfg").write_text(bootcfg.syslinux_cfg(args, title="T"))
        (mnt / "EFI" / "BOOT").mkdir(parents=True)
        (mnt / "EFI" / "BOOT" / "grub.cfg").write_text(
            bootcfg.grub_cfg(
                None, args, title="T", kernel="/syslinux/vmlinuz", initrd="/syslinux/initrd.img"
            )
        )
        os.sync()
        files = switch.StickFiles(mnt, be.Names("LiveOS", OVERLAY))
        old = {"base": sha(live / "squashfs.img"), "overlay": sha(live / OVERLAY)}
        assert read_through_kernel(files.pair(be.Slot.CURRENT), tmp_path / "k") == want

        # the new pair staged once (killed right after), then every switch step from there
        res = cli(
            "refresh",
            mnt,
            "--yes",
            "--workdir",
            tmp_path,
            env={"LIVEOS_TEST_KILL_AT": "refresh-staged"},
        )
        assert res.returncode == -9, res.stderr
        assert assert_allowed(files, old) == "old"
        staged = tmp_path / "staged"
        shutil.copytree(mnt, staged)
        for i, point in enumerate(REFRESH_POINTS):
            copy_tree(staged, mnt)
            res = cli("refresh", mnt, "--yes", env={"LIVEOS_TEST_KILL_AT": point})
            assert res.returncode == -9, (point, res.stderr)
            assert assert_allowed(files, old) in ("old", "new"), point
            again = "rollback" if i % 2 else "refresh"
            res = cli(again, mnt, "--yes")
            assert res.returncode == 0, (point, again, res.stderr)
            assert not (live / switch.JOURNAL).exists(), point
            kind = assert_allowed(files, old)
            assert kind == ("old" if again == "rollback" else "new"), (point, kind)
            got = read_through_kernel(files.pair(be.Slot.CURRENT), tmp_path / "k")
            assert got == want, (point, again)
            if again == "refresh":  # the old pair is kept and boots through its entry
                assert sha(live / "previous" / OVERLAY) == old["overlay"], point

        # rollback from the refreshed stick, killed at each of its steps
        copy_tree(staged, mnt)
        assert cli("refresh", mnt, "--yes").returncode == 0
        done = tmp_path / "done"
        shutil.copytree(mnt, done)
        for point in ROLLBACK_POINTS:
            copy_tree(done, mnt)
            res = cli("rollback", mnt, "--yes", env={"LIVEOS_TEST_KILL_AT": point})
            assert res.returncode == -9, (point, res.stderr)
            assert assert_allowed(files, old) in ("old", "new"), point
            res = cli("rollback", mnt, "--yes")
            assert res.returncode == 0, (point, res.stderr)
            assert assert_allowed(files, old) == "old", point
            assert sha(live / OVERLAY) == old["overlay"], point
        assert read_through_kernel(files.pair(be.Slot.CURRENT), tmp_path / "k") == want
        assert read_through_kernel(files.pair(be.Slot.PREVIOUS), tmp_path / "k") == want
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
    # every rename was a whole rename: the FAT has no cross-linked or lost clusters
    fsck = subprocess.run(["fsck.fat", "-n", str(img)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
