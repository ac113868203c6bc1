"""An interrupted repair never blocks the next run (issue 14), against the real kernel.

The command runs in its own process group, and the whole group gets SIGKILL as soon as
the command announces step k ("[k/n] ..." on stderr), for every k: that is a closed
terminal or a frozen machine, with e2fsck and dmsetup children killed too. Then the same
command runs again with no manual cleanup, and must finish with the data intact (through
the kernel: the overlay activates, `e2fsck -fn` is clean, the files read back identical)
and nothing of the command left attached.

Every other step is followed by a simulated reboot before the re-run: what a reboot
loses is torn down (see `reboot()`), and only the files on the stick (overlay, backups
and journals in the stick's liveos-backups/) remain.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from liveos_tools.tasks import leftovers
from tests.guest.test_maintain_kernel import break_overlay, check_healthy, no_leftovers
from tests.root.test_maintain_refusals import Stick, build_stick, cli

pytestmark = pytest.mark.guest

STEP = re.compile(r"^\[(\d+)/(\d+)\] ")
_OUT = Path("/run/out")  # the guest's share with the host: progress readable while it runs


def progress(text: str) -> None:
    if _OUT.is_dir():
        with open(_OUT / "leftovers-progress.log", "a") as f:
            f.write(text + "\n")


def run_killed(args: list[str], kill_at: int) -> tuple[int, str]:
    """Run the CLI in a new session; SIGKILL its process group at its kill_at-th step."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "liveos_tools.cli.main", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stderr is not None
    seen, lines = 0, []
    for line in proc.stderr:
        lines.append(line)
        if STEP.match(line):
            seen += 1
            if seen == kill_at:
                os.killpg(proc.pid, signal.SIGKILL)
                break
    rc = proc.wait(timeout=600)
    proc.stderr.close()
    return rc, "".join(lines)


class Machine:
    """What a reboot loses: taken as a baseline, then torn back down to it."""

    def __init__(self) -> None:
        self.dm = self._dm()
        self.loops = self._loops()
        self.mounts = self._mounts()

    @staticmethod
    def _dm() -> set[str]:
        out = subprocess.run(["dmsetup", "ls"], capture_output=True, text=True).stdout
        return {line.split()[0] for line in out.splitlines() if line.split()} - {"No"}

    @staticmethod
    def _loops() -> set[str]:
        out = subprocess.run(["losetup", "-n", "-O", "NAME"], capture_output=True, text=True)
        return set(out.stdout.split())

    @staticmethod
    def _mounts() -> list[str]:
        with open("/proc/self/mountinfo") as f:
            return [line.split()[4] for line in f]

    def reboot(self) -> None:
        """Simulate a restart: every mount, dm table and loop device made since the
        baseline goes (newest first, as the kernel would lose them all at once), and so
        does the RAM-only state the tool keeps (/run/liveos-tools, its scratch directories
        in TMPDIR). The stick's files stay, synced (a real power cut could also lose
        unsynced writes; every write the tool relies on is fsynced)."""
        os.sync()
        for mp in reversed(self._mounts()):
            if mp not in self.mounts:
                subprocess.run(["umount", "-l", mp], check=False)
        for _ in range(5):  # top-down: a device still held is removed on a later pass
            extra = self._dm() - self.dm
            if not extra:
                break
            for name in sorted(extra):
                subprocess.run(["dmsetup", "remove", name], capture_output=True, check=False)
        assert not self._dm() - self.dm, self._dm()
        for loop in self._loops() - self.loops:
            subprocess.run(["losetup", "-d", loop], check=False)
        assert not self._loops() - self.loops
        shutil.rmtree("/run/liveos-tools", ignore_errors=True)
        for scratch in Path(tempfile.gettempdir()).glob("liveos-*"):
            shutil.rmtree(scratch, ignore_errors=True)


def _steps(stick: Stick, *extra: str) -> int:
    res = cli("repair", stick.root, "--dry-run", *extra)
    assert res.returncode == 0, res.stderr
    return len(re.findall(r"^\s*\d+\. ", res.stderr, re.M))


def test_repair_killed_at_every_step_finishes_on_the_next_run(tmp_path: Path) -> None:
    machine = Machine()
    stick = build_stick(tmp_path)
    kept, _ = break_overlay(stick, tmp_path, overflow=False)
    original = stick.overlay.read_bytes()
    bk = stick.root / "liveos-backups"  # on the stick: it survives the reboot
    args = ["repair", str(stick.root), "--yes", "--backup-dir", str(bk), "--grow-by", "16M"]
    steps = _steps(stick, "--grow-by", "16M")
    assert steps >= 13
    seen_status = False
    for k in range(1, steps + 1):
        with open(stick.overlay, "r+b") as f:  # the same file (inode) each round
            f.write(original)
            f.truncate(len(original))
        rc, err = run_killed(args, k)
        assert rc in (-signal.SIGKILL, 0), (k, rc, err)
        rebooted = k % 2 == 0
        progress(f"repair killed at step {k}/{steps} (rc {rc}), reboot: {rebooted}")
        if rebooted:
            machine.reboot()
        journals = leftovers.find(stick.overlay, [bk])
        if journals and not seen_status and not rebooted and leftovers.present(journals[0]):
            res = cli("status", stick.root)
            assert "left behind by an interrupted repair" in res.stdout + res.stderr, res
            assert f"liveos-overlay repair {stick.root}" in res.stdout + res.stderr
            seen_status = True
        res = cli(*args)
        assert res.returncode == 0, (k, rebooted, res.stderr)
        assert "e2fsck -f -n: exit 0" in res.stderr, (k, res.stderr)
        if journals and leftovers.present(journals[0]):
            assert "in use" not in res.stderr
        check_healthy(stick, tmp_path, kept)
        no_leftovers(stick)
        assert not leftovers.find(stick.overlay, [bk]), k
    assert seen_status


def test_restore_after_a_kill_and_after_a_reboot_is_byte_exact(tmp_path: Path) -> None:
    machine = Machine()
    stick = build_stick(tmp_path)
    break_overlay(stick, tmp_path, overflow=False)
    original = stick.overlay.read_bytes()
    steps = _steps(stick, "--grow-by", "16M")
    for i, rebooted in enumerate((False, True)):
        bk = stick.root / f"bk{i}"
        with open(stick.overlay, "r+b") as f:
            f.write(original)
            f.truncate(len(original))
        args = ["repair", str(stick.root), "--yes", "--backup-dir", str(bk), "--grow-by", "16M"]
        # Killed as it announces the second e2fsck: the first has changed the overlay.
        rc, err = run_killed(args, steps - 1)
        assert rc == -signal.SIGKILL, err
        assert stick.overlay.read_bytes() != original
        if rebooted:
            machine.reboot()
        else:
            # Its own leftovers are named as such, never "shut down the live system".
            res = cli("reset", stick.root, "--yes", "--backup-dir", tmp_path / "other")
            assert res.returncode == 5, res.stderr
            assert "interrupted repair" in res.stderr and "repair --restore" in res.stderr
            assert "shut down" not in res.stderr
        (backup,) = bk.glob("*.lobak")
        res = cli("repair", "--restore", backup, "--yes")
        assert res.returncode == 0, res.stderr
        assert stick.overlay.read_bytes() == original
        no_leftovers(stick)
        assert not leftovers.find(stick.overlay, [bk])
