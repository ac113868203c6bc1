"""Leftovers of an interrupted run, on the host (loop devices, no device-mapper).

A journal written the way repair writes it, with a loop device leased and attached over
the overlay as a killed repair leaves it: other commands name the interrupted run (never
"shut down the live system"), status shows it with the command that clears it, and
`repair --restore` clears it and restores without manual cleanup. A loop device that was
not recorded, or recorded with another backing file, is never touched; a foreign holder is
refused with its process named (psutil).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from liveos_tools.errors import ExitCode
from liveos_tools.tasks import backup as bk
from liveos_tools.tasks import leftovers as lf
from liveos_tools.tools import losetup
from tests.root.test_maintain_refusals import (
    Stick,
    assert_refused,
    build_stick,
    cli,
    fake_store,
    loop_attached,
    needs_root,
)

pytestmark = [pytest.mark.root, needs_root]


@pytest.fixture
def stick(tmp_path: Path) -> Stick:
    s = build_stick(tmp_path)
    fake_store(s.overlay, valid=False, exceptions=40)
    return s


def dead(journal: lf.Journal) -> None:
    """As if written by a process of this boot that no longer runs (this one goes on)."""
    me = lf._owner(os.getpid())
    gone = f"{me.split()[0]} 1 0"  # pid 1 runs, but did not start at tick 0
    journal.path.write_text(journal.path.read_text().replace(me, gone))


def killed_repair(stick: Stick, bkdir: Path) -> tuple[bk.Backup, lf.Journal, str]:
    """A backup, its journal and a leased loop device over the overlay, as a repair
    killed after attaching the overlay leaves them (its process is gone)."""
    backup = bk.write_backup(
        stick.overlay, "repair", [(0, 4096)], bkdir, run_id="deadbeef", undo_bytes=4 * 1024**2
    )
    journal = lf.start(
        bkdir, "repair", stick.overlay, "deadbeef", backup=backup.path, target=str(stick.root)
    )
    dead(journal)
    loop = losetup.find_free()
    journal = lf.lease(journal, "loop", loop, os.path.realpath(stick.overlay))
    losetup.attach(stick.overlay, device=loop)
    journal = lf.attached(journal, loop)
    with open(stick.overlay, "r+b") as f:  # the half-done repair changed the header
        f.seek(4)
        f.write(b"\x01\0\0\0")
    return backup, journal, loop


def test_leftovers_are_named_cleared_by_restore_and_shown_by_status(
    stick: Stick, tmp_path: Path
) -> None:
    bkdir = tmp_path / "bk"
    original = stick.overlay.read_bytes()
    backup, journal, loop = killed_repair(stick, bkdir)
    try:
        status = cli("status", stick.root)
        text = status.stdout + status.stderr
        assert f"loop device {loop}" in text and "left behind by an interrupted repair" in text
        assert f"clear them with: liveos-overlay repair {stick.root}" in text
        for args in (["reset", "--yes"], ["grow", "--by", "4M", "--yes"]):
            res = cli(*args, stick.root, "--backup-dir", tmp_path / "other")
            assert_refused(res, ExitCode.IN_USE, "interrupted repair")
            assert str(backup.path) in res.stderr and "shut down" not in res.stderr
        res = cli("repair", "--restore", backup.path, "--yes")
        assert res.returncode == 0, res.stderr
        assert f"detached {loop}" in res.stderr
        assert stick.overlay.read_bytes() == original
        assert not losetup.find_by_file(stick.overlay)
        assert not journal.path.exists() and not lf.find(stick.overlay, [bkdir])
        assert "interrupted" not in cli("status", stick.root).stdout
    finally:
        if losetup.find_by_file(stick.overlay):
            losetup.detach(loop)


def test_a_loop_not_recorded_or_with_another_file_is_never_touched(
    stick: Stick, tmp_path: Path
) -> None:
    other = tmp_path / "other.img"
    other.write_bytes(bytes(1024 * 1024))
    bkdir = tmp_path / "bk"
    backup = bk.write_backup(stick.overlay, "repair", [(0, 4096)], bkdir, run_id="cafe0001")
    journal = lf.start(bkdir, "repair", stick.overlay, "cafe0001", backup=backup.path)
    dead(journal)
    with loop_attached(other) as loop:
        # The recorded name, but another backing file: someone else's device now.
        journal = lf.lease(journal, "loop", loop, os.path.realpath(stick.overlay))
        assert lf.present(journal) == []
        assert lf.clear(journal) == []
        assert losetup.find_by_file(other)[0].name == loop
    # Ours once (recorded, attached, its diskseq recorded), then released by someone...
    mine = losetup.find_free()
    journal = lf.lease(journal, "loop", mine, os.path.realpath(stick.overlay))
    losetup.attach(stick.overlay, device=mine)
    journal = lf.attached(journal, mine)
    assert [x.name for x in lf.present(journal)] == [mine]
    losetup.detach(mine)
    # ...and the overlay attached again by someone else, under the same name: a new
    # attach (another diskseq), so not ours. Refused as in use, with today's hint.
    subprocess.run(["losetup", mine, str(stick.overlay)], check=True)
    try:
        assert lf.present(journal) == []
        res = cli("repair", stick.root, "--yes", "--backup-dir", bkdir)
        assert_refused(res, ExitCode.IN_USE, f"attached to {mine}")
        assert "shut down the live system" in res.stderr
        assert losetup.find_by_file(stick.overlay)[0].name == mine
    finally:
        losetup.detach(mine)


def test_a_foreign_holder_is_named_by_its_process(stick: Stick, tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys,time; f=open(sys.argv[1],'rb'); time.sleep(60)",
            str(stick.overlay),
        ],
    )
    try:
        with loop_attached(stick.overlay):
            for _ in range(50):  # until it has the file open
                if any(
                    os.path.realpath(f"/proc/{holder.pid}/fd/{fd}") == str(stick.overlay)
                    for fd in os.listdir(f"/proc/{holder.pid}/fd")
                ):
                    break
                subprocess.run(["sleep", "0.1"], check=True)
            res = cli("reset", stick.root, "--yes", "--backup-dir", tmp_path / "bk")
            assert_refused(res, ExitCode.IN_USE, f"in use by PID {holder.pid} (python")
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("command", ["grow", "reset"])
def test_grow_and_reset_killed_at_every_step_finish_on_the_next_run(
    stick: Stick, tmp_path: Path, command: str
) -> None:
    """They make no loop or dm device of their own (a directory stick): killed at every
    announced step, the same command again finishes, and the overlay is what it must be."""
    from tests.guest.test_leftovers_repair import run_killed

    original = stick.overlay.read_bytes()
    extra = ["--to", "16M"] if command == "grow" else []
    args = [command, str(stick.root), "--yes", "--backup-dir", str(tmp_path / "bk"), *extra]
    plan = cli(*args, "--dry-run")
    steps = len([line for line in plan.stderr.splitlines() if line[:4].strip().endswith(".")])
    assert steps >= 3, plan.stderr
    for k in range(1, steps + 1):
        stick.overlay.write_bytes(original)
        rc, err = run_killed(args, k)
        assert rc in (-9, 0), (k, rc, err)
        res = cli(*args)
        assert res.returncode == 0, (k, res.stderr)
        now = stick.overlay.read_bytes()
        if command == "grow":
            assert len(now) == 16 * 1024**2 and now[: len(original)] == original, k
            assert not any(now[len(original) :]), k
        else:
            assert not any(now[: 64 * 1024]) and now[64 * 1024 :] == original[64 * 1024 :], k
        assert not losetup.find_by_file(stick.overlay)
