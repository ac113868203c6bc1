"""What a writing command leaves behind when it is killed, and how the next run clears it.

A command that builds temporary loop devices, dm devices or mounts first writes a
*journal* next to its backup (`<backup>.run`, or next to the file it changes), and a
pointer to it under /run/liveos-tools/runs/ (gone after a reboot, as the mappings are).
Each thing is recorded (a *lease*) BEFORE it is created, under the name it will have:
loop devices are attached at a device picked and recorded first, dm devices and mount
points have names carrying the run's id. The journal is removed when the command ends,
so a journal that exists names an interrupted run.

A later run matches a leftover only by recorded name AND backing file: a loop device
whose backing file is the recorded one, a dm device whose every underlying device is a
recorded loop or dm device of the same run, a mount of a recorded loop device at the
recorded place. Anything else is someone else's and is never touched. Teardown is in
reverse order of creation, which is top-down: a mount of a dm device before the device,
dm devices before the loop devices under them, a loop device whose backing file lives in
a mount before that mount, the mount before its own loop device.

Kept light (no dataclasses, no json, no subprocess at import): `status` reads journals.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

RUNS = Path("/run/liveos-tools/runs")
#: Journals of what media.open_medium attaches and mounts where nothing survives a reboot
#: (a block device's mounts, read-only looks at an image): tmpfs, as the devices are.
MEDIA = RUNS.parent / "media"
#: The op of a medium's own journal (its loop device and mount, not a task's work).
OPEN = "open"
SUFFIX = ".run"
_SYS = Path("/sys/block")


class Lease(NamedTuple):
    kind: str  # "loop", "dm" or "mount"
    name: str  # /dev/loopN, the dm name, the mount point
    file: str  # loop: its backing file; mount: the loop device mounted; dm: see present()

    def describe(self) -> str:
        if self.kind == "loop":
            return f"loop device {self.name} ({self.file})"
        if self.kind == "dm":
            return f"dm device {self.name}"
        return f"mount {self.name}"


class Journal(NamedTuple):
    path: Path
    op: str
    subject: str  # the file the operation changes (overlay, home.img, swap.img)
    ino: int
    backup: str | None
    run_id: str
    started: str
    target: str | None  # the TARGET the user gave (to say what to run again)
    leases: tuple[Lease, ...]
    owner: str = ""  # "<boot id> <pid> <start time>" of the process that runs it

    @property
    def running(self) -> bool:
        """Its process is still alive (a concurrent run, not an interrupted one)."""
        return bool(self.owner) and self.owner == _owner(int(self.owner.split()[1]))

    @property
    def this_boot(self) -> bool:
        """Made since the last boot: before it, nothing it made can still exist, and a
        device of the same name now is someone else's."""
        return bool(self.owner) and self.owner.split()[0] == _boot_id()

    @property
    def command(self) -> str:
        """What the user runs to clear the leftovers and finish."""
        where = f" {self.target}" if self.target else ""
        if self.op == "repair":
            return f"liveos-overlay repair{where}"
        return f"liveos-overlay {self.op.replace('-', ' ')}{where} (the same command again)"

    def describe(self) -> str:
        what = f"an interrupted {self.op} of {Path(self.subject).name} (started {self.started}"
        return what + (f", backup {self.backup})" if self.backup else ")")


# --- writing a journal ------------------------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "?"


def _owner(pid: int) -> str:
    """This boot, the pid and its start time: the same only for the same live process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return f"{_boot_id()} {pid} {stat.rpartition(')')[2].split()[19]}"


def _diskseq(device: str) -> str:
    """The kernel's sequence number of the device's current use (a new one at each attach);
    a partition's is its disk's."""
    return _sys_text(_SYS / Path(whole(device)).name / "diskseq") or ""


def whole(device: str) -> str:
    """/dev/loop3 for /dev/loop3p1 (sysfs: a partition's directory is inside its disk's)."""
    node = Path("/sys/class/block") / Path(device).name
    if (node / "partition").exists():
        with contextlib.suppress(OSError):
            return f"/dev/{node.resolve().parent.name}"
    return device


def attached(journal: Journal, device: str) -> Journal:
    """Record which attach of `device` is ours (its diskseq), right after attaching: a
    later attach of the same name, even to the same file, is then someone else's."""
    seq = _diskseq(device)
    return lease(journal, "loopseq", device, seq) if seq else journal


def start(
    directory: Path,
    op: str,
    subject: Path,
    run_id: str,
    *,
    backup: Path | None = None,
    target: str | None = None,
) -> Journal:
    """Create the journal (durable) and its /run pointer; nothing is leased yet."""
    name = (backup.name if backup else f".{subject.name}.{op}.{run_id}") + SUFFIX
    path = directory / name
    import time  # not datetime: status's look at an image starts a journal too

    st = os.stat(subject)
    started = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    head = {
        "op": op,
        "subject": str(subject.resolve()),
        "ino": str(st.st_ino),
        "backup": str(backup.resolve()) if backup else "",
        "run": run_id,
        "started": started,
        "target": target or "",
        "owner": _owner(os.getpid()),
    }
    text = "".join(f"{k}\t{v}\n" for k, v in head.items())
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(directory)
    with contextlib.suppress(OSError):
        RUNS.mkdir(parents=True, exist_ok=True)
        (RUNS / f"{op}-{run_id}").write_text(str(path.resolve()) + "\n")
    return Journal(
        path,
        op,
        head["subject"],
        st.st_ino,
        head["backup"] or None,
        run_id,
        started,
        target,
        (),
        head["owner"],
    )


def lease(journal: Journal, kind: str, name: str, file: str = "") -> Journal:
    """Record a thing before it is created (fsynced: it must be there if we are killed)."""
    with open(journal.path, "a") as f:
        f.write(f"{kind}\t{name}\t{file}\n")
        f.flush()
        os.fsync(f.fileno())
    return journal._replace(leases=(*journal.leases, Lease(kind, name, file)))


def finish(journal: Journal) -> None:
    """The run is over (done, or undone): forget it."""
    with contextlib.suppress(OSError):
        (RUNS / f"{journal.op}-{journal.run_id}").unlink()
    with contextlib.suppress(FileNotFoundError):
        journal.path.unlink()
        _fsync_dir(journal.path.parent)


# --- reading journals -------------------------------------------------------------------------


def read(path: Path) -> Journal | None:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    head: dict[str, str] = {}
    leases: list[Lease] = []
    for line in lines:
        parts = line.split("\t")
        if parts[0] in ("loop", "dm", "mount", "loopseq") and len(parts) == 3:
            leases.append(Lease(parts[0], parts[1], parts[2]))
        elif len(parts) == 2:
            head[parts[0]] = parts[1]
    try:
        return Journal(
            path,
            head["op"],
            head["subject"],
            int(head["ino"]),
            head.get("backup") or None,
            head["run"],
            head.get("started", "?"),
            head.get("target") or None,
            tuple(leases),
            head.get("owner", ""),
        )
    except (KeyError, ValueError):
        return None


def _indexed() -> list[Path]:
    out = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(RUNS):
            with contextlib.suppress(OSError):
                out.append(Path(Path(entry.path).read_text().strip()))
    return out


def find(
    subject: Path, dirs: Iterable[Path] = (), ops: Iterable[str] | None = None
) -> list[Journal]:
    """Journals of interrupted runs on `subject` (same name and inode), oldest first.
    A run whose process is alive is not interrupted: its devices are in use."""
    try:
        st = os.stat(subject)
    except OSError:
        st = None
    candidates = set(_indexed())
    for d in dirs:
        with contextlib.suppress(OSError):
            candidates.update(Path(e.path) for e in os.scandir(d) if e.name.endswith(SUFFIX))
    wanted = set(ops) if ops is not None else None
    found = []
    for path in candidates:
        j = read(path)
        if j is None or Path(j.subject).name != subject.name or j.running:
            continue
        if wanted is not None and j.op not in wanted:
            continue
        # The same file: its inode (a stick mounted elsewhere after a reboot still matches).
        if st is not None and j.ino != st.st_ino:
            continue
        found.append(j)
    return sorted(found, key=lambda j: j.started)


# --- what is still there, and clearing it --------------------------------------------------------


def _sys_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _dm_dirs() -> dict[str, Path]:
    out = {}
    with contextlib.suppress(OSError):
        for entry in _SYS.glob("dm-*"):
            name = _sys_text(entry / "dm" / "name")
            if name:
                out[name] = entry
    return out


def _mount_sources() -> dict[str, str]:
    from liveos_tools import mounts

    with contextlib.suppress(OSError):
        return {m.mountpoint: m.source for m in mounts.mounts()}
    return {}


def present(journal: Journal) -> list[Lease]:
    """The journal's leases that exist now AND match what was recorded (never a guess)."""
    if not journal.this_boot:
        return []
    seqs = {x.name: x.file for x in journal.leases if x.kind == "loopseq"}
    loops = {
        lease.name
        for lease in journal.leases
        if lease.kind == "loop"
        and _loop_matches(lease.name, lease.file)
        and seqs.get(lease.name, _diskseq(lease.name)) == _diskseq(lease.name)
    }
    recorded_loops = {lease.name for lease in journal.leases if lease.kind == "loop"}
    dms = _dm_dirs()
    recorded_dm = {lease.name for lease in journal.leases if lease.kind == "dm"}
    ours_dm_dev = {dms[n].name for n in recorded_dm if n in dms}
    table = _mount_sources()
    out: list[Lease] = []
    for lease in journal.leases:
        if lease in out:
            continue  # leased twice (an attach that lost a race, then won)
        if lease.kind == "loop" and lease.name in loops:
            out.append(lease)
        elif lease.kind == "dm" and lease.name in dms:
            # Its name carries our run id; no table (killed inside dmsetup create) holds
            # nothing; else every device under it is a recorded one of this run, or (dm-crypt
            # attaches its own) a loop device whose backing file is the recorded `file`.
            slaves = _slaves(dms[lease.name])
            if all(
                f"/dev/{s}" in loops
                or s in ours_dm_dev
                or (lease.file and _loop_matches(s, lease.file))
                for s in slaves
            ):
                out.append(lease)
        elif lease.kind == "mount" and table.get(lease.name) == lease.file:
            # Of a recorded loop device (or a partition of one), or of a device whose
            # current use (diskseq) was recorded before mounting it.
            disk = whole(lease.file)
            if (
                lease.file in loops
                or disk in loops
                or (disk not in recorded_loops and seqs.get(disk) == _diskseq(disk) != "")
            ):
                out.append(lease)
    return out


def _slaves(dm_dir: Path) -> list[str]:
    with contextlib.suppress(OSError):
        return sorted(e.name for e in (dm_dir / "slaves").iterdir())
    return []


def _loop_matches(device: str, file: str) -> bool:
    back = _sys_text(_SYS / Path(device).name / "loop" / "backing_file")
    return back is not None and back.removesuffix(" (deleted)") == file


def clear(journal: Journal) -> list[str]:
    """Tear down what the journal's run left (only what matches); return what was done.

    Raises the first LiveOSError if something of ours could not be removed, after trying
    the rest: the journal then stays, so the next run tries again.
    """
    from liveos_tools.errors import LiveOSError
    from liveos_tools.tools import dmsetup, losetup
    from liveos_tools.tools import mount as mount_tool

    here = present(journal)
    done: list[str] = []
    failed: LiveOSError | None = None
    # Newest first: each thing was made on top of what was made before it (dm devices on
    # loop devices, a loop device on a file inside a mount, a mount on a loop device).
    for item in reversed(here):
        try:
            if item.kind == "mount":
                mount_tool.umount(item.name)
                done.append(f"unmounted {item.name}")
            elif item.kind == "dm":
                dmsetup.remove(item.name)
                done.append(f"removed {item.name}")
            else:
                losetup.detach(item.name)
                done.append(f"detached {item.name}")
        except LiveOSError as err:
            failed = failed or err
    for item in journal.leases:
        if item.kind == "mount":
            with contextlib.suppress(OSError):
                os.rmdir(item.name)
                if Path(item.name).parent.name.startswith("liveos-"):
                    os.rmdir(os.path.dirname(item.name))  # the run's scratch directory
    if failed is not None:
        raise failed
    return done


def holders_of(journals: Iterable[Journal]) -> tuple[set[str], set[str]]:
    """(loop devices, dm kernel names like dm-3) that are these runs' present leftovers."""
    loops: set[str] = set()
    dms: set[str] = set()
    dm_dirs = _dm_dirs()
    for j in journals:
        for lease in present(j):
            if lease.kind == "loop":
                loops.add(lease.name)
            elif lease.kind == "dm" and lease.name in dm_dirs:
                dms.add(dm_dirs[lease.name].name)
                # dm-crypt's own loop device under a recorded mapping of this file.
                for slave in _slaves(dm_dirs[lease.name]):
                    if lease.file and _loop_matches(slave, lease.file):
                        loops.add(f"/dev/{slave}")
    return loops, dms


def status_lines(files: Iterable[Path], dirs: Iterable[Path]) -> list[str]:
    """One warning per interrupted run on `files`: what it left, and the command that
    clears it (for `status`; cheap: a directory listing when there is nothing)."""
    out = []
    dirs = list(dirs)
    for file in files:
        for j in find(file, dirs):
            here = present(j)
            undo = (
                f", or undo it: liveos-overlay repair --restore {j.backup}"
                if j.backup and j.op == "repair"
                else ""
            )
            if here:
                what = ", ".join(x.describe() for x in here)
                out.append(f"{what} left behind by {j.describe()}: clear them with: {j.command}")
            else:
                out.append(
                    f"{j.describe()} did not finish (restarted since): finish it with: "
                    f"{j.command}{undo}"
                )
    return out


# --- the medium's own loop device and mount (media.open_medium) ------------------------------


class Recorder:
    """The journal of one open_medium: started at its first lease (a look that creates
    nothing writes nothing), forgotten by close() once nothing it names is left."""

    def __init__(self, directory: Path, subject: Path, target: str) -> None:
        self.directory = directory
        self.subject = subject
        self.target = target
        self.journal: Journal | None = None

    def lease(self, kind: str, name: str, file: str = "") -> None:
        if self.journal is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            run_id = os.urandom(4).hex()  # as backup.new_run_id, without its imports
            self.journal = start(self.directory, OPEN, self.subject, run_id, target=self.target)
        self.journal = lease(self.journal, kind, name, file)

    def attach(self, path: Path, *, readonly: bool) -> str:
        """Attach `path` (partitions scanned) at a loop device named and recorded first."""
        from liveos_tools.errors import ToolError
        from liveos_tools.tools import losetup

        for attempt in range(5):
            loop = losetup.find_free()
            self.lease("loop", loop, os.path.realpath(path))
            try:
                losetup.attach(path, readonly=readonly, partscan=True, device=loop)
                break
            except ToolError:
                if attempt == 4:
                    raise  # someone else took every device we picked
        assert self.journal is not None
        self.journal = attached(self.journal, loop)
        return loop

    def mounting(self, device: str, where: Path) -> None:
        """Record a mount of `device` at `where` before it is made (and, for a device
        that is no loop of ours, which use of it: its disk's diskseq)."""
        disk = whole(device)
        mine = self.journal is not None and any(
            x.name == disk for x in self.journal.leases if x.kind in ("loop", "loopseq")
        )
        if not mine and _diskseq(disk):
            self.lease("loopseq", disk, _diskseq(disk))
        self.lease("mount", str(where), device)

    def close(self) -> None:
        if self.journal is not None and not present(self.journal):
            finish(self.journal)
            self.journal = None


def medium_dirs(subject: Path) -> list[Path]:
    """Where a medium's journals may be: beside an image file, and in MEDIA."""
    return [subject.parent, MEDIA] if subject.parent != Path("/dev") else [MEDIA]


def clear_medium(subject: Path) -> list[str]:
    """Tear down what killed runs' open_medium left on `subject` (an image file or a
    device): only what their journals name, by name, backing file and diskseq; first what
    other killed runs left inside its mount (repair's loop devices on the overlay, a
    LUKS home), whose journals stay for their own command to finish. Says what it did."""
    said: list[str] = []
    try:
        st = os.stat(subject)
    except OSError:
        return said
    for j in find(subject, medium_dirs(subject), ops=(OPEN,)):
        if j.this_boot and j.ino != st.st_ino:
            continue
        here = present(j)
        if not here:
            finish(j)  # restarted since, or nothing was created yet: only a record left
            continue
        said.append(
            f"found what an interrupted run left on {subject.name} "
            f"(started {j.started}): {', '.join(x.describe() for x in here)}"
        )
        for mount in (x.name for x in here if x.kind == "mount"):
            for inner in _inside(mount, j.path):
                said += clear(inner)
        said += clear(j)
        finish(j)
    return said


def _inside(mount: str, skip: Path) -> list[Journal]:
    """Other interrupted runs whose present loop or dm devices are over files in `mount`."""
    out = []
    for path in set(_indexed()):
        j = read(path)
        if j is None or j.path == skip or j.running:
            continue
        if any(x.file.startswith(mount + "/") for x in present(j) if x.kind in ("loop", "dm")):
            out.append(j)
    return out
