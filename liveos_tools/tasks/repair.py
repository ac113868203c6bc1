"""`liveos-overlay repair`: bring back an invalid or full device-mapper overlay.

The dm maintainer's recipe, made safe: while no snapshot uses the overlay, set its
valid flag back to 1, grow it if no chunk is free, rebuild the snapshot over the
read-only base image, fsck the root filesystem through it, tear everything down.

Write order (each step durable before the next starts):

1. the backup file (header chunk, any metadata chunk we rewrite, the old size, the
   whole overlay's sha256) and an empty undo store; fsync both and the directory;
2. cut a damaged exception table (only if the user agreed to drop the tail);
3. grow (zeros appended past the old end, fsync);
4. valid = 1 in the header, fsync;
5. e2fsck through the snapshot. The overlay is the *origin* of a second snapshot
   whose COW is the undo store, so the kernel copies every overlay chunk out before
   e2fsck's first change to it, and commits that copy before the change lands.

So after a crash at any instant, the overlay is the original, the finished result,
or something `repair --restore BACKUP` turns back into the original byte for byte
(checked against the recorded sha256). On a failure or Ctrl-C the command tears
down and restores by itself, and says so.
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from liveos_tools.cow import EXCEPTION, CowStore, Geometry, StoreReport, StoreState, read_store
from liveos_tools.errors import (
    AbortedError,
    CorruptError,
    ExitCode,
    LiveOSError,
    NoSpaceError,
    TargetError,
    UsageError,
)
from liveos_tools.media import ImageLayout, Medium, Source
from liveos_tools.plan import ByteRange, Plan, Progress
from liveos_tools.run import require
from liveos_tools.tasks import backup as bk
from liveos_tools.tasks import grow as gr
from liveos_tools.tasks import leftovers as lf
from liveos_tools.units import MiB, format_size

#: Grow a store with less than this free before e2fsck writes through it.
MIN_FREE = 16 * MiB
DEFAULT_GROW = 128 * MiB
UNDO_CHUNK_SECTORS = 8
DM_PREFIX = "liveos-repair-"
#: loop devices are picked (losetup --find), recorded in the run's journal, then attached.
_LOOP = ("losetup", "<free loop, recorded first>")
_LOOP_RO = ("losetup", "--read-only", "<free loop, recorded first>")


class NoDeviceMapperError(LiveOSError):
    code = ExitCode.TOOL_MISSING


def no_device_mapper() -> NoDeviceMapperError:
    return NoDeviceMapperError(
        "this kernel has no device-mapper (no usable /dev/mapper/control)",
        "load it (modprobe dm_snapshot) or run the repair from another system; nothing was changed",
    )


class RepairError(LiveOSError):
    """A repair step failed after the overlay was changed (then restored)."""

    def __init__(self, message: str, hint: str | None, code: ExitCode) -> None:
        super().__init__(message, hint)
        self.code = code


# --- a damaged exception table ------------------------------------------------------------


@dataclass(frozen=True)
class Damage:
    area: int
    index: int  # first bad entry in that area
    problem: str
    dropped: int  # entries from the bad one to the end of the table, as the kernel reads it

    def offset(self, geo: Geometry) -> int:
        return geo.area_chunk(self.area) * geo.chunk_bytes + self.index * EXCEPTION.size

    def length(self, geo: Geometry) -> int:
        return geo.chunk_bytes - self.index * EXCEPTION.size


def find_damage(path: Path) -> Damage | None:
    """The first exception the kernel would choke on, walking the table as it does."""
    with CowStore(path) as store:
        geo = store.geometry()
        epa = geo.exceptions_per_area
        seen = bytearray(geo.total_chunks // 8 + 1)
        bad: tuple[int, int, str] | None = None
        dropped = 0
        area = 0
        while geo.area_chunk(area) < geo.total_chunks:
            data = store._pread(geo.chunk_bytes, geo.area_chunk(area) * geo.chunk_bytes)
            count = 0
            for i, (_old, new) in enumerate(struct.iter_unpack("<QQ", data)):
                if new == 0:
                    break
                count += 1
                if bad is not None:
                    dropped += 1
                    continue
                problem = None
                if new >= geo.total_chunks:
                    problem = f"entry points at chunk {new}, past the end ({geo.total_chunks})"
                elif geo.is_metadata_chunk(new):
                    problem = f"entry points at metadata chunk {new}"
                elif seen[new // 8] & (1 << (new % 8)):
                    problem = f"entry reuses data chunk {new}"
                if problem:
                    bad = (area, i, problem)
                    dropped += 1
                else:
                    seen[new // 8] |= 1 << (new % 8)
            if count < epa:
                break
            area += 1
    if bad is None:
        return None
    return Damage(bad[0], bad[1], bad[2], dropped)


def _has_device_mapper() -> bool:
    # The node can exist without the driver (open fails with ENODEV then).
    try:
        os.close(os.open("/dev/mapper/control", os.O_RDWR | os.O_CLOEXEC))
    except OSError:
        return False
    return True


# --- the devices a repair builds, and their teardown --------------------------------------


@dataclass
class _Session:
    """State shared by the steps of one repair run."""

    overlay: Path
    medium: Medium
    chunk_sectors: int
    run_id: str
    workdir: Path
    backup_dir: Path
    undo_bytes: int
    backup: bk.Backup | None = None
    journal: lf.Journal | None = None
    changed: bool = False  # the overlay has been written to
    node: str = ""
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @property
    def prefix(self) -> str:
        return f"{DM_PREFIX}{self.run_id}"

    def _lease(self, kind: str, name: str, file: str = "") -> None:
        assert self.journal is not None
        self.journal = lf.lease(self.journal, kind, name, file)

    def _attach(self, path: Path, *, readonly: bool) -> str:
        from liveos_tools.errors import ToolError
        from liveos_tools.tools import losetup

        back = os.path.realpath(path)
        for attempt in range(5):
            # Named and recorded before it exists: a kill right after leaves it findable.
            loop = losetup.find_free()
            self._lease("loop", loop, back)
            try:
                losetup.attach(path, readonly=readonly, device=loop)
                break
            except ToolError:
                if attempt == 4:
                    raise  # someone else took every device we picked
        assert self.journal is not None
        self.journal = lf.attached(self.journal, loop)
        self.stack.callback(losetup.detach, loop)
        return loop

    def _create(self, name: str, table: str) -> str:
        from liveos_tools.tools import dmsetup

        self._lease("dm", name)
        info = dmsetup.create(name, table)
        self.stack.callback(dmsetup.remove, name)
        return f"{info.major}:{info.minor}"

    # -- the steps ------------------------------------------------------------------

    def take_backup(self, regions: list[tuple[int, int]]) -> None:
        if not _has_device_mapper():
            raise no_device_mapper()
        # The prompt may have waited a long time: in use or read-only by now?
        bk.preflight(self.overlay, "repaired")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.backup = bk.write_backup(
            self.overlay,
            "repair",
            regions,
            self.backup_dir,
            run_id=self.run_id,
            undo_bytes=self.undo_bytes,
            workdir=str(self.workdir),
            dm_prefix=self.prefix,
            origin=bk.Origin.of(self.medium, self.overlay),
        )
        # Before anything is attached or written: what a killed run left is findable.
        self.journal = lf.start(
            self.backup_dir,
            "repair",
            self.overlay,
            self.run_id,
            backup=self.backup.path,
            target=self.medium.target,
        )
        bk.kill_point("repair-backup")

    def write(self, offset: int, data: bytes, point: str) -> None:
        self.changed = True
        try:
            fd = os.open(self.overlay, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise bk.translate_oserror(exc, self.overlay, "the overlay was not written") from None
        try:
            os.pwrite(fd, data, offset)
            os.fsync(fd)
        finally:
            os.close(fd)
        bk.kill_point(point)

    def grow(self, new_size: int) -> None:
        self.changed = True
        gr.append_zeros(self.overlay, new_size)

    def mount_squashfs(self) -> None:
        from liveos_tools.tools import mount as mount_tool

        assert self.medium.squashfs_path is not None
        where = self.workdir / "squashfs"
        where.mkdir(parents=True, exist_ok=True)
        self.stack.callback(os.rmdir, where)
        # Our own loop device (not mount -o loop's anonymous one): recorded, so findable.
        loop = self._attach(self.medium.squashfs_path, readonly=True)
        self._lease("mount", str(where), loop)
        mount_tool.mount(loop, where, fstype="squashfs", options="ro")
        self.stack.callback(mount_tool.umount, where)

    def attach_base(self) -> None:
        m = self.medium
        assert m.rootfs_path is not None
        if m.image_layout is ImageLayout.NESTED:
            rootfs = self.workdir / "squashfs" / m.rootfs_path
        else:
            rootfs = m.rootfs_path
        self.base_sectors = rootfs.stat().st_size // 512
        self.base_loop = self._attach(rootfs, readonly=True)
        bk.kill_point("repair-base")

    def attach_overlay(self) -> None:
        self.changed = True
        self.ovl_loop = self._attach(self.overlay, readonly=False)

    def attach_undo(self) -> None:
        assert self.backup is not None and self.backup.undo_path is not None
        self.undo_loop = self._attach(self.backup.undo_path, readonly=False)

    @property
    def ovl_sectors(self) -> int:
        return self.overlay.stat().st_size // 512

    def create_origin(self) -> None:
        self.origin = self._create(
            f"{self.prefix}-origin", f"0 {self.ovl_sectors} snapshot-origin {self.ovl_loop}"
        )

    def create_undo(self) -> None:
        self._create(
            f"{self.prefix}-undo",
            f"0 {self.ovl_sectors} snapshot {self.ovl_loop} {self.undo_loop} "
            f"P {UNDO_CHUNK_SECTORS}",
        )

    def create_snapshot(self) -> None:
        from liveos_tools.tools import dmsetup

        line = dmsetup.snapshot_table_line(
            self.base_sectors, self.base_loop, self.origin, chunk_sectors=self.chunk_sectors
        )
        major_minor = self._create(self.prefix, line)
        self.node = f"/dev/dm-{major_minor.split(':')[1]}"
        bk.kill_point("repair-snapshot")

    def fsck(self, *, fix: bool) -> None:
        from liveos_tools.tools import e2fsck

        # fix: e2fsck -f -y; else e2fsck -f -n. The exit status is a bitmask (e2fsck.EXIT_BITS).
        res = e2fsck.check(self.node, fix=fix)
        bk.kill_point("repair-fsck-fix" if fix else "repair-fsck-check")
        if fix and not res.ok:
            raise RepairError(
                f"e2fsck could not repair the filesystem in the overlay (exit {res.describe()})",
                None,
                ExitCode.TOOL_FAILED,
            )
        if not fix and res.code != 0:
            raise RepairError(
                f"the filesystem is still not clean after the repair "
                f"(e2fsck -n exit {res.describe()})",
                None,
                ExitCode.TOOL_FAILED,
            )
        self.fsck_results.append(f"e2fsck -f {'-y' if fix else '-n'}: exit {res.describe()}")

    def teardown(self) -> None:
        self.stack.close()
        if self.journal is not None:
            lf.clear(self.journal)
        with contextlib.suppress(OSError):
            self.workdir.rmdir()
        with open(self.overlay, "rb+") as f:
            os.fsync(f.fileno())

    def finish(self) -> None:
        self.teardown()
        report = read_store(self.overlay, full=True)
        if report.state is not StoreState.VALID:
            raise RepairError(
                f"after the repair the overlay reads {report.state.value}"
                + (f": {report.problem}" if report.problem else ""),
                None,
                ExitCode.CORRUPT,
            )
        self.result = report
        if self.backup is not None:
            # What a restore must find before it puts the old bytes back. The repair is
            # done: failing to record this must not undo it.
            try:
                self.backup = bk.seal(
                    self.backup,
                    size=self.overlay.stat().st_size,
                    digest=bk.seal_digest(self.overlay),
                )
            except (LiveOSError, OSError) as err:
                self.fsck_results.append(f"warning: {err}")
        if self.journal is not None:
            lf.finish(self.journal)
        bk.kill_point("repair-done")

    def abort(self) -> str:
        """Tear down and put the original back; return what happened, for the user."""
        problems = []
        try:
            self.stack.close()
        except BaseException as exc:  # keep going: restoring matters more
            problems.append(str(exc))
        if self.journal is not None:
            try:
                lf.clear(self.journal)
            except BaseException as exc:
                problems.append(str(exc))
        with contextlib.suppress(OSError):
            self.workdir.rmdir()
        if problems and self.journal is not None:
            return (
                f"tearing down FAILED ({problems[0]}); "
                f"run: liveos-overlay repair --restore {self.backup.path if self.backup else ''}"
            )
        if self.backup is None or not self.changed:
            if self.journal is not None:
                lf.finish(self.journal)
            return "nothing on the stick was changed"
        try:
            backup, payload = bk.read_backup(self.backup.path)
            exact = bk.restore(backup, payload, self.overlay)
        except LiveOSError as err:
            return (
                f"restoring the original FAILED ({err.message}); "
                f"run: liveos-overlay repair --restore {self.backup.path}"
            )
        if self.journal is not None:
            lf.finish(self.journal)
        what = "byte for byte (checksums verified)" if exact else ""
        return f"the original overlay was restored from {self.backup.path} {what}".rstrip()

    base_sectors: int = 0
    base_loop: str = ""
    ovl_loop: str = ""
    undo_loop: str = ""
    origin: str = ""
    fsck_results: list[str] = field(default_factory=list)
    result: StoreReport | None = None


@dataclass
class RepairPlan(Plan):
    session: _Session | None = None

    #: why the repair cannot run here (shown with the plan, refused before asking).
    blocker: LiveOSError | None = None

    def ready(self) -> None:
        """Raise what stops this plan from running, before the user is asked."""
        if self.blocker is not None:
            raise self.blocker

    #: the progress callback of the running execute (a recovery passes it on).
    progress: Progress | None = None

    def execute(self, progress: Progress | None = None) -> None:
        self.progress = progress
        try:
            super().execute(progress)
        except OSError as exc:
            said = self.session.abort() if self.session else "nothing was changed"
            where = self.session.overlay if self.session else Path(self.target)
            raise bk.translate_oserror(exc, where, said) from None
        except KeyboardInterrupt:
            said = self.session.abort() if self.session else "nothing was changed"
            raise AbortedError(f"interrupted: {said}", None) from None
        except LiveOSError as err:
            if self.session is not None:
                said = self.session.abort()
                err.message = f"{err.message}; {said}"
                if err.hint is None and "FAILED" in said:
                    err.hint = "keep the backup file; it is your way back"
            raise
        except BaseException:
            if self.session is not None:
                self.session.abort()
            raise


# --- planning --------------------------------------------------------------------------------


def _check_base(medium: Medium) -> None:
    if medium.root is None:
        raise TargetError(
            f"no live image next to {medium.target}: repair needs the base image the "
            "overlay was made over",
            "point at the stick (its mount point, device or image), not the overlay alone",
        )
    layout = medium.image_layout
    bk.refuse_unreadable_image(medium, "repair")
    if layout not in (ImageLayout.NESTED, ImageLayout.UNCOMPRESSED) or medium.rootfs_path is None:
        raise UsageError(
            f"the live image on {medium.target} has the {layout.value} layout, "
            "which a device-mapper overlay cannot sit on",
            "repair works on squashfs.img holding LiveOS/rootfs.img, or an uncompressed "
            "LiveOS/rootfs.img",
        )


def _grow_to(report: StoreReport, path: Path, medium: Medium, grow_by: int | None) -> int | None:
    free = report.free_chunks * report.chunk_sectors * 512
    if grow_by is None and free >= MIN_FREE:
        return None
    st = os.statvfs(path.parent)
    avail = st.f_bavail * st.f_frsize
    by = grow_by if grow_by is not None else min(DEFAULT_GROW, avail)
    fstype = gr._fstype(path, medium)
    if grow_by is None and fstype in gr.FAT_TYPES:
        by = min(by, gr.FAT_MAX_FILE - report.size_bytes)
    if grow_by is None and by + free < MIN_FREE:
        raise NoSpaceError(
            f"the overlay is full and the stick has only {format_size(avail)} free to grow it",
            "free space on the stick (or copy the overlay to a bigger one) and run repair again",
        )
    return gr.check_grow(path, medium, by_bytes=by, allow_corrupt=True).new_size


def plan_repair(
    medium: Medium,
    *,
    grow_by: int | None = None,
    backup_dir: str | Path | None = None,
) -> Plan:
    path = gr.dm_overlay(medium)
    if medium.source is Source.LIVE or medium.live_dm:
        raise bk_in_use(path)
    directory, notes = bk.choose_dir(path, backup_dir)
    journals = lf.find(path, bk.journal_dirs(path, directory), ops=("repair",))
    bk.refuse_in_use(path, "repaired", clearing=journals)
    if not medium.opened_readonly:
        bk.refuse_readonly(path)
    if journals:
        return _plan_recovery(medium, path, journals, grow_by=grow_by, backup_dir=backup_dir)
    report = read_store(path, full=True)
    if report.state is StoreState.NEW:
        raise UsageError(f"{path.name} is empty (a new store): nothing to repair", None)
    damage: Damage | None = None
    if report.state is StoreState.CORRUPT:
        damage = find_damage(path) if report.next_free else None
        if damage is None:
            raise CorruptError(
                f"{path.name} is damaged beyond what repair touches: {report.problem}",
                "nothing was changed; reset it (liveos-overlay reset) to start afresh",
            )
    _check_base(medium)
    for tool in ("losetup", "dmsetup", "e2fsck", "mount"):
        require(tool)
    new_size = _grow_to(report, path, medium, grow_by)
    chunk = report.chunk_sectors
    geo = Geometry(chunk, report.size_bytes)
    run_id = bk.new_run_id()
    final = new_size or report.size_bytes
    session = _Session(
        overlay=path,
        medium=medium,
        chunk_sectors=chunk,
        run_id=run_id,
        workdir=Path(tempfile.gettempdir()) / f"liveos-repair-{run_id}",
        backup_dir=directory,
        # Room for a copy of every chunk of the overlay plus the undo store's own table.
        undo_bytes=(final + final // 128 + 2 * MiB) // 4096 * 4096,
    )
    plan = RepairPlan("repair overlay", bk.Origin.of(medium, path).describe(path), session=session)
    if not _has_device_mapper():
        plan.blocker = no_device_mapper()
        plan.notes.append("this kernel has no device-mapper: the repair cannot run here")
    plan.notes.append(
        f"{path.name}: {report.state.value}, {report.exceptions} chunks changed, "
        f"{format_size(report.free_chunks * geo.chunk_bytes)} free, chunk {chunk} sectors"
    )
    plan.notes.extend(notes)
    plan.notes.append("the most recent changes before the overlay broke may be lost")

    regions = [(0, geo.chunk_bytes)]
    if damage is not None:
        regions.append((geo.area_chunk(damage.area) * geo.chunk_bytes, geo.chunk_bytes))
    plan.add(
        f"back up the header chunk{' and damaged table chunk' if damage else ''}, the size "
        f"and a checksum of {path.name} to {directory}; create an undo store beside it; fsync",
        lambda: session.take_backup(regions),
    )
    if damage is not None:
        plan.destroys.append(
            f"the exception table is damaged at area {damage.area} entry {damage.index} "
            f"({damage.problem}): the last {damage.dropped} recorded changes are dropped"
        )
        plan.add(
            f"cut the exception table at area {damage.area} entry {damage.index}, fsync",
            lambda: session.write(damage.offset(geo), bytes(damage.length(geo)), "repair-table"),
            writes=[
                ByteRange(str(path), damage.offset(geo), damage.length(geo), "zeros: table end")
            ],
        )
    if new_size is not None:
        plan.notes.append(
            f"the overlay has {format_size(report.free_chunks * geo.chunk_bytes)} free: "
            f"it is grown to {format_size(new_size)} first"
        )
        facts = gr.check_grow(path, medium, to_bytes=new_size, allow_corrupt=True)
        plan.add(
            f"grow {path.name} {format_size(report.size_bytes)} -> {format_size(new_size)} "
            "(zeros appended), fsync",
            lambda: session.grow(new_size),
            writes=[ByteRange(str(path), facts.old_size, facts.delta, "zeros: new free space")],
        )
    if not report.valid:
        plan.add(
            "set the header's valid field back to 1, fsync",
            lambda: session.write(4, struct.pack("<I", 1), "repair-header"),
            writes=[ByteRange(str(path), 4, 4, "valid = 1")],
        )
    mnt = session.workdir / "squashfs"
    if medium.image_layout is ImageLayout.NESTED:
        plan.add(
            f"mount {medium.squashfs_path} read-only",
            session.mount_squashfs,
            commands=[
                [*_LOOP_RO, str(medium.squashfs_path)],
                ["mount", "-t", "squashfs", "-o", "ro", "<loop>", str(mnt)],
            ],
        )
        rootfs = f"{mnt}/{medium.rootfs_path}"
    else:
        rootfs = str(medium.rootfs_path)
    plan.add(
        "attach the base image read-only",
        session.attach_base,
        argv=[*_LOOP_RO, rootfs],
    )
    undo_name = f"{directory}/<backup>{bk.UNDO_SUFFIX}"
    plan.add(
        "attach the overlay",
        session.attach_overlay,
        argv=[*_LOOP, str(path)],
    )
    plan.add(
        "attach the undo store (kept beside the backup)",
        session.attach_undo,
        argv=[*_LOOP, undo_name],
    )
    p = session.prefix
    plan.add(
        f"create {p}-origin: writes to the overlay go through it",
        session.create_origin,
        argv=["dmsetup", "create", f"{p}-origin", "--table", "0 <ovl> snapshot-origin <ovl-loop>"],
    )
    plan.add(
        f"create {p}-undo: the kernel copies each overlay chunk to the undo store before "
        "its first change",
        session.create_undo,
        argv=[
            "dmsetup",
            "create",
            f"{p}-undo",
            "--table",
            f"0 <ovl> snapshot <ovl-loop> <undo-loop> P {UNDO_CHUNK_SECTORS}",
        ],
    )
    plan.add(
        f"create {p}: the snapshot of the base with the overlay's own chunk size {chunk}",
        session.create_snapshot,
        argv=[
            "dmsetup",
            "create",
            p,
            "--table",
            f"0 <base> snapshot <base-loop> <{p}-origin> PO {chunk}",
        ],
    )
    plan.notes.append(
        "e2fsck writes through the snapshot: the kernel stores its changes in the overlay's "
        f"free chunks (from chunk {report.next_free} on) and in chunks already in use"
    )
    plan.add(
        "check and fix the root filesystem through the snapshot: e2fsck -f -y /dev/dm-N",
        lambda: session.fsck(fix=True),
        argv=["e2fsck", "-f", "-y", f"/dev/mapper/{p}"],
    )
    plan.add(
        "check it again, read-only; it must come back clean",
        lambda: session.fsck(fix=False),
        argv=["e2fsck", "-f", "-n", f"/dev/mapper/{p}"],
    )
    plan.add(
        "tear down (snapshots, loop devices, mount) in reverse order, fsync the overlay, "
        "and read it back",
        session.finish,
        # The exit stack unwinds what the steps above made, newest first.
        commands=[
            ["dmsetup", "remove", p],
            ["dmsetup", "remove", f"{p}-undo"],
            ["dmsetup", "remove", f"{p}-origin"],
            ["losetup", "-d", "<undo loop>"],
            ["losetup", "-d", "<overlay loop>"],
            ["losetup", "-d", "<base loop>"],
            *(
                [["umount", str(mnt)], ["losetup", "-d", "<squashfs loop>"]]
                if medium.image_layout is ImageLayout.NESTED
                else []
            ),
        ],
    )
    return plan


def _teardown_commands(here: list[lf.Lease]) -> list[list[str]]:
    """What lf.clear runs: newest first, one program each."""
    cmd = {"mount": ["umount"], "dm": ["dmsetup", "remove"], "loop": ["losetup", "-d"]}
    return [[*cmd[item.kind], item.name] for item in reversed(here)]


def _plan_recovery(
    medium: Medium,
    path: Path,
    journals: list[lf.Journal],
    *,
    grow_by: int | None,
    backup_dir: str | Path | None,
) -> RepairPlan:
    """An earlier repair of this overlay was killed: clear what it left (only what its
    journal names and still matches), put the overlay back as it was before it (its
    backup and undo store; unless it had finished), then repair again from scratch."""
    plan = RepairPlan(
        "repair overlay (after an interrupted repair)", bk.Origin.of(medium, path).describe(path)
    )
    if not _has_device_mapper():
        plan.blocker = no_device_mapper()
    # Newest first: each restore puts back the state the run before it found.
    for j in sorted(journals, key=lambda j: j.started, reverse=True):
        here = lf.present(j)
        found = ", ".join(x.describe() for x in here) or "nothing left attached (restarted since)"
        plan.notes.append(f"found {j.describe()}: {found}")
        if here:
            plan.add(
                "clear what it left, newest first (dm devices top-down, loop devices, mount)",
                lambda j=j: _note_all(plan, lf.clear(j)),  # type: ignore[misc]
                commands=_teardown_commands(here),
            )
        if j.backup is None:
            raise CorruptError(f"{j.path} names no backup", "remove it, then run repair again")
        try:
            backup, payload = bk.read_backup(j.backup)
        except LiveOSError as err:
            raise CorruptError(
                f"the backup of the interrupted repair cannot be used: {err.message}",
                f"nothing was changed; the overlay may be half repaired: put the backup "
                f"{j.backup} back in place, or remove {j.path} to repair it as it is",
            ) from None
        if backup.record.after_size is not None:
            plan.notes.append("that repair had finished (its backup records the result)")
            plan.add(f"forget the finished run ({j.path.name})", lambda j=j: lf.finish(j))  # type: ignore[misc]
            continue
        plan.add(
            f"put {path.name} back as it was before that repair, from {backup.path} and "
            "its undo store; check the saved regions and the exception table",
            lambda j=j, b=backup, p=payload: _undo_run(plan, j, b, p, path),  # type: ignore[misc]
            writes=[
                ByteRange(str(path), r.offset, r.length, "saved bytes")
                for r in backup.record.regions
            ],
        )
    plan.add(
        "repair again: planned afresh on the overlay as it is then (steps follow)",
        lambda: _repair_again(plan, medium, grow_by, backup_dir),
    )
    return plan


def _note_all(plan: Plan, lines: list[str]) -> None:
    plan.notes.extend(f"cleared a leftover of the interrupted repair: {x}" for x in lines)


def _undo_run(plan: Plan, j: lf.Journal, backup: bk.Backup, payload: bytes, path: Path) -> None:
    bk.refuse_in_use(path, "restored")
    bk.check_belongs(backup, path)
    exact = bk.restore(backup, payload, path)
    lf.finish(j)
    how = "byte for byte (checksums verified)" if exact else "(size and saved regions)"
    plan.notes.append(f"the overlay was put back as before the interrupted repair {how}")
    bk.kill_point("repair-recovered")


def _repair_again(
    outer: RepairPlan, medium: Medium, grow_by: int | None, backup_dir: str | Path | None
) -> None:
    inner = plan_repair(medium, grow_by=grow_by, backup_dir=backup_dir)
    assert isinstance(inner, RepairPlan)
    inner.ready()
    outer.notes.extend(inner.notes)
    before = len(inner.notes)
    try:
        inner.execute(outer.progress)
    finally:
        outer.notes.extend(inner.notes[before:])
    # Only now: a failing inner run has already torn down and restored by itself.
    outer.session = inner.session


def bk_in_use(path: Path) -> LiveOSError:
    from liveos_tools.errors import InUseError

    return InUseError(
        f"{path.name} is the overlay of the running live system",
        "repair it from another system (a rescue stick), with this stick not booted",
    )


# --- restore ----------------------------------------------------------------------------


def restore_overlay_path(backup: bk.Backup, medium: Medium | None) -> Path:
    """The overlay a restore writes: inside the medium if one was opened (the backup's
    path inside it first), else the path recorded in the backup."""
    rec = backup.record
    if medium is None:
        return Path(rec.overlay)
    if medium.root is not None and rec.inner:
        inside = medium.root / rec.inner
        if inside.exists():
            return inside
    if medium.overlay_path is None:
        raise TargetError(f"{medium.target} has no overlay to restore", None)
    return medium.overlay_path


def _pre_restore_regions(backup: bk.Backup, path: Path) -> list[tuple[int, int]]:
    """Every byte range of `path` the restore of `backup` will overwrite or cut off."""
    rec = backup.record
    ranges = [(r.offset, r.length) for r in rec.regions]
    undo = backup.undo_path
    if undo is not None and undo.exists():
        with CowStore(undo) as store:
            chunk = store.geometry().chunk_bytes
            for old, _new in store.exceptions():
                if old * chunk < rec.size_bytes:
                    ranges.append((old * chunk, min(chunk, rec.size_bytes - old * chunk)))
    size = path.stat().st_size
    if size > rec.size_bytes:
        # Cut off by the restore; zeros need no copy (a restore of this backup
        # extends the file with zeros again).
        tail = rec.size_bytes, size - rec.size_bytes
        if bk.changed_since_zero(path, *tail):
            ranges.append(tail)
    ranges.sort()
    merged: list[tuple[int, int]] = []
    for off, length in ranges:
        if merged and off <= merged[-1][0] + merged[-1][1]:
            last_off, last_len = merged[-1]
            merged[-1] = (last_off, max(last_len, off + length - last_off))
        else:
            merged.append((off, length))
    return merged


def plan_restore(
    backup_file: str | Path,
    medium: Medium | None = None,
    *,
    force: bool = False,
    backup_dir: str | Path | None = None,
) -> Plan:
    """Put a backup back (after a failed or unwanted repair, reset or grow).

    Before writing it checks that the overlay is still as the operation left it (the
    backup records that state once the operation finished), and backs up what it is
    about to overwrite (a pre-restore backup), so the restore itself can be undone.
    """
    backup, payload = bk.read_backup(backup_file)
    rec = backup.record
    path = restore_overlay_path(backup, medium)
    if not path.exists():
        where = rec.medium_target or "the stick"
        raise TargetError(
            f"the overlay {rec.overlay} is not there",
            f"give {where} as TARGET: liveos-overlay repair --restore BACKUP TARGET",
        )
    if medium is not None:
        origin: bk.Origin | None = bk.Origin.of(medium, path)
    elif rec.medium_target and rec.medium_source:
        origin = bk.Origin(rec.medium_target, rec.medium_source, rec.inner)
    else:
        origin = None
    shown = origin.describe(path) if origin else str(path)
    directory = Path(backup_dir) if backup_dir else backup.path.parent
    plan = bk.SafePlan(
        "restore overlay from backup",
        shown,
        overlay=path,
        partial_state=f"{path.name} may be partly restored",
        partial_hint=f"run liveos-overlay repair --restore {backup.path} again",
    )
    # The run this backup was taken for may have been killed: its journal is beside it.
    mine = str(backup.path.resolve())
    journals = [
        j for j in lf.find(path, [backup.path.parent, *bk.journal_dirs(path)]) if j.backup == mine
    ]
    left = [x for j in journals for x in lf.present(j)]

    def clear() -> None:
        for j in journals:
            _note_all(plan, lf.clear(j))

    if left:
        plan.notes.append(
            f"the {rec.op} this backup was taken for was interrupted: "
            + ", ".join(x.describe() for x in left)
        )
        plan.add(
            f"clear what the interrupted {rec.op} left behind",
            clear,
            commands=_teardown_commands(left),
        )

    def check() -> None:
        bk.refuse_in_use(path, "restored", clearing=journals)
        bk.check_belongs(backup, path)
        changed = bk.changed_since(backup, path)
        if changed is None:
            return
        if not force:
            raise CorruptError(
                f"{path.name} is no longer as the {rec.op} of {rec.created} left it: {changed}",
                "nothing was changed: it was probably booted since, and writing the old "
                "bytes over it would mix two stores; --force restores anyway (what it "
                "overwrites is backed up first)",
            )
        plan.notes.append(f"--force: restoring although {changed}")

    if not left:
        check()
        if medium is None or not medium.opened_readonly:
            bk.refuse_readonly(path)

    def check_all() -> None:
        check()
        bk.refuse_readonly(path)

    plan.add(
        "check that the overlay is not in use, is writable, that the backup belongs to it "
        "and that it is as the operation left it",
        check_all,
    )
    pre: list[bk.Backup] = []

    def save_pre() -> None:
        regions = _pre_restore_regions(backup, path)
        made = bk.write_backup(
            path, "pre-restore", regions, directory, run_id=bk.new_run_id(), origin=origin
        )
        pre.append(made)
        plan.partial_hint = (
            f"run liveos-overlay repair --restore {backup.path} again, or put back what was "
            f"there: liveos-overlay repair --restore {made.path}"
        )
        bk.kill_point("restore-backup")

    plan.add(
        f"back up what the restore overwrites (a pre-restore backup) under {directory}, fsync",
        save_pre,
    )
    writes = [ByteRange(str(path), r.offset, r.length, "saved bytes") for r in rec.regions]
    undo = backup.undo_path
    if undo is not None and undo.exists():
        plan.notes.append(f"chunks saved in the undo store {undo} are written back too")
    plan.add(
        f"write the saved bytes back, cut the file to {rec.size_bytes} bytes, fsync"
        + (", and verify the whole file's sha256" if rec.overlay_sha256 else "")
        + (", and verify the exception table's sha256" if rec.table_sha256 else ""),
        lambda: _restore(backup, payload, path, plan, pre, journals),
        writes=writes,
    )
    plan.destroys.append(
        f"whatever changed in {path.name} since {rec.created} (the {rec.op}) is undone"
    )
    return plan


def _restore(
    backup: bk.Backup,
    payload: bytes,
    path: Path,
    plan: Plan,
    pre: list[bk.Backup],
    journals: list[lf.Journal],
) -> None:
    exact = bk.restore(backup, payload, path)
    rec = backup.record
    for j in journals:
        lf.finish(j)  # the interrupted run is undone
    if pre:
        bk.seal(pre[0], size=rec.size_bytes, digest=bk.seal_digest(path))
        plan.notes.append(
            f"what the restore overwrote is kept in {pre[0].path} "
            "(liveos-overlay repair --restore puts it back)"
        )
    plan.notes.append(
        "restored byte for byte (sha256 verified)"
        if exact
        else f"restored; the file is back to {rec.size_bytes} bytes"
    )
