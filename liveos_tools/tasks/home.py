"""LiveOS/home.img: create, resize, copy and check it, plain ext4 or LUKS-encrypted.

Every writing operation is a Plan. Planning reads only (it checks the filesystem
with `e2fsck -n`, tests the passphrase, measures the data and the free space), so
a refused operation changes nothing on disk. The steps keep one invariant while
they run: the filesystem is never bigger than its container, nor the container
than the file. So a resize that stops half-way leaves a usable home.img, and
running the same resize again finishes it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from liveos_tools import mounts
from liveos_tools.errors import (
    CorruptError,
    ExitCode,
    InUseError,
    LiveOSError,
    NoSpaceError,
    TargetError,
    UsageError,
)
from liveos_tools.media import HEAD_BYTES, HomeKind, kind_of_head
from liveos_tools.plan import ByteRange, Plan
from liveos_tools.units import GiB, MiB, format_size

HOME_NAME = "home.img"
HOME_LABEL = "HOME"
#: vfat cannot hold a file of 4 GiB or more.
FAT_MAX_FILE = 4 * GiB - 1
FAT_TYPES = frozenset({"vfat", "msdos", "fat"})
#: the reference writer warns when less than this would be left on the stick.
LOW_SPACE = 100 * MiB
#: sizes are whole MiB: a multiple of every ext block size and LUKS sector size.
ALIGN = MiB
MIN_PLAIN = 16 * MiB
MIN_LUKS = 40 * MiB
EXT_TYPES = ("ext4", "ext3", "ext2")
_CHUNK = 4 * MiB
_ZEROS = bytes(_CHUNK)


class ExistsError(LiveOSError):
    """The destination exists and the caller did not ask to replace it."""

    code = ExitCode.USAGE


class VerifyError(CorruptError):
    """A copy read back from its destination does not match its source."""


# --- small helpers ------------------------------------------------------------------------


def round_size(nbytes: int) -> int:
    """Round up to a whole MiB."""
    return -(-nbytes // ALIGN) * ALIGN


def kind_of(path: Path) -> HomeKind:
    """PLAIN (an ext filesystem), LUKS, ABSENT, or UNKNOWN (anything else)."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
    except FileNotFoundError:
        return HomeKind.ABSENT
    except OSError as exc:
        raise TargetError(f"{path}: cannot read it ({exc.strerror})", "run with sudo?") from None
    return kind_of_head(head)


def fstype_of_dir(directory: Path) -> str | None:
    mount = mounts.mount_of(directory)
    return mount.fstype if mount else None


def free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def allocated_bytes(path: Path) -> int:
    try:
        return os.stat(path).st_blocks * 512
    except FileNotFoundError:
        return 0


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_files() -> list[str]:
    try:
        lines = Path("/proc/swaps").read_text().splitlines()[1:]
    except OSError:
        return []
    return [line.split()[0].replace("\\040", " ") for line in lines if line.split()]


def ensure_not_in_use(path: Path, *, allow_own: bool = False) -> list[str]:
    """Refuse a file attached to a loop device (which covers mounted and dm-crypt-opened
    images: both go through a loop device) or used as swap.

    A mapping that a killed home command left (found by its journal: name and backing
    file) is named as such; with `allow_own` it is no refusal: the dm names are returned,
    for a plan that closes them first (leftover_steps)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return []
    from liveos_tools.tools import losetup

    loops = losetup.find_by_file(path)
    if loops:
        from liveos_tools.tasks import backup as bk
        from liveos_tools.tasks import leftovers as lf

        journals = lf.find(path, [path.parent])
        own = lf.holders_of(journals)[0]
        if all(d.name in own for d in loops):
            left = [x.name for j in journals for x in lf.present(j) if x.kind == "dm"]
            if allow_own:
                return left
            j = journals[0]
            raise InUseError(
                f"{path} is held by what {j.describe()} left behind "
                f"({', '.join(x.describe() for x in lf.present(j))})",
                f"run {j.command}: it closes them first",
            )
        holders = {d.name: _holders(d.name) for d in loops}
        names = ", ".join(
            d.name + (f" (held by {', '.join(holders[d.name])})" if holders[d.name] else "")
            for d in loops
        )
        devices = {Path(d).name for d in holders} | {h for hs in holders.values() for h in hs}
        procs = bk.holding_processes(path, devices)
        by = f"; in use by {', '.join(procs)}" if procs else ""
        raise InUseError(
            f"{path} is in use: attached to {names}{by}",
            "unmount it, close its LUKS mapping and detach the loop device "
            "(or shut down the live system that uses it), then try again",
        )
    for swap in _swap_files():
        with contextlib.suppress(OSError):
            other = os.stat(swap)
            if (other.st_ino, other.st_dev) == (st.st_ino, st.st_dev):
                raise InUseError(f"{path} is in use as swap", f"run: swapoff {swap}")
    return []


def leftover_steps(plan: Plan, path: Path, names: list[str]) -> None:
    """The first step of a plan on a file a killed home command left opened (or whose
    journal survived a reboot: then there is nothing to close, only a journal to drop)."""
    from liveos_tools.tasks import leftovers as lf

    if names:
        plan.notes.append(f"{path.name} is still opened by an interrupted run: {', '.join(names)}")
    if names or lf.find(path, [path.parent]):
        plan.add(
            f"close what the interrupted run left on {path.name}",
            lambda: _say_all(plan, clear_leftovers(path)),
            argv=["cryptsetup", "close", *names],
        )


def _say_all(plan: Plan, lines: list[str]) -> None:
    plan.notes.extend(lines)


def _holders(loop: str) -> list[str]:
    with contextlib.suppress(OSError):
        return sorted(h.name for h in (Path("/sys/block") / Path(loop).name / "holders").iterdir())
    return []


def _leftover_node(path: Path) -> str | None:
    from liveos_tools.tasks import leftovers as lf
    from liveos_tools.tools import cryptsetup

    for j in lf.find(path, [path.parent]):
        for lease in lf.present(j):
            if lease.kind == "dm":
                return cryptsetup.dm_node(lease.name)
    return None


def clear_leftovers(path: Path) -> list[str]:
    """Close what a killed home command left on `path` or its partial file (only what its
    journal names, by mapping name and backing file); say what was found and done."""
    from liveos_tools.tasks import leftovers as lf

    said: list[str] = []
    for p in (path, partial_name(path)):
        for j in lf.find(p, [p.parent]):
            here = lf.present(j)
            if here:
                said.append(f"found {j.describe()}: {', '.join(x.describe() for x in here)}")
            said += lf.clear(j)
            lf.finish(j)
    return said


@contextlib.contextmanager
def crypt_opened(
    path: Path, key: bytes, *, readonly: bool = False, op: str = "home"
) -> Iterator[tuple[str, str]]:
    """(name, node) of the opened LUKS container: cryptsetup.opened, but recorded first in
    a journal beside the file, so a killed run's mapping is found and closed next time."""
    from liveos_tools.tasks import leftovers as lf
    from liveos_tools.tasks.backup import new_run_id
    from liveos_tools.tools import cryptsetup

    journal = lf.start(path.parent, op, path, new_run_id())
    name = cryptsetup.new_name()
    journal = lf.lease(journal, "dm", name, os.path.realpath(path))
    try:
        node = cryptsetup.open_luks(path, name, key, readonly=readonly)
    except BaseException:
        lf.finish(journal)
        raise
    yield name, node
    # Not in a finally: a close that fails leaves the journal, so the next run closes it.
    cryptsetup.close(name)
    lf.finish(journal)


def check_fits(directory: Path, *, final_size: int, new_bytes: int, what: str) -> list[str]:
    """Refuse sizes the stick's filesystem cannot hold; return notes (low space left)."""
    fstype = fstype_of_dir(directory)
    if fstype in FAT_TYPES and final_size > FAT_MAX_FILE:
        raise NoSpaceError(
            f"{what} would be {format_size(final_size)}, but {fstype} cannot hold a file "
            "of 4 GiB or more",
            "choose at most 4095M on a FAT stick",
        )
    free = free_bytes(directory)
    if new_bytes > free:
        raise NoSpaceError(
            f"not enough space on {directory}: {what} needs {format_size(new_bytes)} more, "
            f"{format_size(free)} is free",
            "choose a smaller size or free some space on the stick",
        )
    if free - new_bytes < LOW_SPACE:
        return [f"less than {format_size(LOW_SPACE)} will be left free on {directory}"]
    return []


def preallocate(fd: int, offset: int, length: int) -> None:
    """Allocate the range for real (not sparse), so the stick cannot run out under it."""
    if length <= 0:
        return
    try:
        os.posix_fallocate(fd, offset, length)
        return
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    pos = offset
    while pos < offset + length:
        n = min(_CHUNK, offset + length - pos)
        os.pwrite(fd, _ZEROS[:n], pos)
        pos += n


def os_error(exc: OSError, path: Path) -> LiveOSError:
    if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return NoSpaceError(f"{path}: {exc.strerror}", "free some space on the stick")
    return LiveOSError(f"{path}: {exc.strerror}", "check the stick (is it read-only?)")


def partial_name(path: Path) -> Path:
    """Where a new file is built before it is renamed over `path`."""
    return path.with_name(f".{path.name}.partial")


def _remove_stale_partial(tmp: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        ensure_not_in_use(tmp)
        tmp.unlink()


def _need_passphrase(passphrase: bytes | None, path: Path) -> bytes:
    if not passphrase:
        raise UsageError(
            f"{path} is encrypted (LUKS): the passphrase is needed",
            "give --passphrase-file FILE, or run on a terminal to be asked",
        )
    return passphrase


@contextlib.contextmanager
def filesystem(
    path: Path, kind: HomeKind, passphrase: bytes | None, *, readonly: bool
) -> Iterator[str]:
    """The filesystem inside home.img: the file itself, or its opened LUKS mapping."""
    if kind is HomeKind.LUKS:
        key = _need_passphrase(passphrase, path)
        left = _leftover_node(path) if readonly else None
        if left is not None:
            # A killed run's mapping is open on it: read through that, never a second one.
            yield left
            return
        with crypt_opened(path, key, readonly=readonly, op="home-check") as (_name, node):
            yield node
    else:
        yield str(path)


def _require_home(path: Path) -> HomeKind:
    if not path.exists():
        raise TargetError(f"{path}: no such file", "check the path, or create one: home create")
    if not path.is_file():
        raise TargetError(f"{path} is not a regular file")
    kind = kind_of(path)
    if kind is HomeKind.UNKNOWN:
        raise CorruptError(
            f"{path} is neither a LUKS container nor an ext filesystem",
            "is this the right file? A damaged LUKS header can be restored with "
            "cryptsetup luksHeaderRestore",
        )
    return kind


def _luks_offset(path: Path, passphrase: bytes | None) -> int:
    """Parse the header and test the passphrase (both read-only); the data offset."""
    from liveos_tools.tools import cryptsetup

    info = cryptsetup.dump(path)
    cryptsetup.test_passphrase(path, _need_passphrase(passphrase, path))
    cryptsetup.require_dm_crypt()
    return info.data_offset


# --- check --------------------------------------------------------------------------------


@dataclass(frozen=True)
class HomeCheck:
    path: str
    kind: HomeKind
    encrypted: bool
    size_bytes: int
    allocated_bytes: int
    luks_version: int | None = None
    luks_uuid: str | None = None
    label: str | None = None
    fs_bytes: int | None = None
    used_bytes: int | None = None
    #: the superblock's "Filesystem state" (clean, not clean, with errors...).
    state: str | None = None
    fsck_code: int | None = None
    fsck_clean: bool | None = None
    problems: tuple[str, ...] = ()
    note: str | None = None

    @property
    def healthy(self) -> bool | None:
        return self.fsck_clean


def check(path: Path, passphrase: bytes | None = None) -> HomeCheck:
    """`e2fsck -n` (through LUKS when encrypted), usage, and the filesystem's state.

    Without a passphrase an encrypted home.img is checked as far as its header.
    """
    from liveos_tools.tools import e2fs, e2fsck

    path = Path(path)
    kind = _require_home(path)
    ensure_not_in_use(path)
    report = HomeCheck(
        path=str(path),
        kind=kind,
        encrypted=kind is HomeKind.LUKS,
        size_bytes=path.stat().st_size,
        allocated_bytes=allocated_bytes(path),
    )
    if kind is HomeKind.LUKS:
        from liveos_tools.tools import cryptsetup

        info = cryptsetup.dump(path)
        report = replace(report, luks_version=info.version, luks_uuid=info.uuid)
        if not passphrase:
            return replace(
                report, note="the filesystem inside was not checked: it needs the passphrase"
            )
        cryptsetup.test_passphrase(path, passphrase)
        cryptsetup.require_dm_crypt()
    with filesystem(path, kind, passphrase, readonly=True) as dev:
        result = e2fsck.check(dev)
        try:
            use: e2fs.Ext4Usage | None = e2fs.usage(dev)
        except LiveOSError:
            use = None
    if use is not None:
        report = replace(
            report,
            label=use.label,
            fs_bytes=use.total_bytes,
            used_bytes=use.used_bytes,
            state=use.state,
        )
    return replace(
        report,
        fsck_code=result.code,
        fsck_clean=result.clean,
        problems=tuple(result.problems()) if not result.clean else (),
    )


# --- create -------------------------------------------------------------------------------


def _validate_size(size: int, minimum: int, what: str) -> int:
    if size <= 0:
        raise UsageError(
            f"the size of {what} must be positive",
            f"give e.g. --size 2G (at least {format_size(minimum)})",
        )
    size = round_size(size)
    if size < minimum:
        raise UsageError(
            f"{what} of {format_size(size)} is too small", f"give at least {format_size(minimum)}"
        )
    return size


def _plan_replacing(plan: Plan, path: Path, delete_existing: bool, exists: str, hint: str) -> None:
    """An existing file is replaced only with --delete-home, and the plan says it is lost."""
    if not delete_existing:
        raise ExistsError(exists, hint)
    if not path.is_file():
        raise TargetError(f"{path} is not a regular file")
    ensure_not_in_use(path)
    plan.destroys.append(f"{path} ({format_size(path.stat().st_size)}) and all files in it")


def removing_on_failure(partial: Path) -> Callable[[Callable[[], None]], Callable[[], None]]:
    """Wrap plan steps so that a failing one deletes `partial`: a create that fails
    (or is interrupted) leaves nothing behind, not a half-made image."""

    def wrap(fn: Callable[[], None]) -> Callable[[], None]:
        def step() -> None:
            try:
                fn()
            except BaseException:
                with contextlib.suppress(OSError):
                    partial.unlink()
                raise

        return step

    return wrap


def plan_create(
    path: Path,
    *,
    size: int,
    fstype: str = "ext4",
    encrypt: bool = True,
    passphrase: bytes | None = None,
    delete_existing: bool = False,
    dry_run: bool = False,
) -> Plan:
    """Create home.img: preallocated, mode 0600, filesystem labelled HOME, LUKS by default.

    It is built complete under a temporary name (.home.img.partial), fsynced, and only
    then renamed over `path`: an interrupted or failed create leaves the old home.img
    (if any) as it was, and no half-made image. Every program it needs is looked for
    here, before anything is written.

    `dry_run`: a plan only for showing: an encrypted one needs no passphrase and no
    dm-crypt yet (a note says what will be needed); it cannot be executed.
    """
    from liveos_tools.run import require
    from liveos_tools.tools import mkfs

    path = Path(path)
    if fstype not in EXT_TYPES:
        raise UsageError(f"unsupported filesystem {fstype!r} for home.img", "use ext4")
    size = _validate_size(size, MIN_LUKS if encrypt else MIN_PLAIN, "home.img")
    if encrypt and not passphrase and not dry_run:
        raise UsageError(
            "an encrypted home.img needs a passphrase",
            "give --passphrase-file FILE, run on a terminal to be asked, or use --no-encrypt",
        )
    directory = path.parent
    if not directory.is_dir():
        raise TargetError(f"{directory}: no such directory", "check the path to the stick")
    # Every program before any write: a missing one must not leave a half-made stick.
    require(f"mkfs.{fstype}")
    dm_note: str | None = None
    if encrypt:
        from liveos_tools.tools import cryptsetup

        require("cryptsetup")
        try:
            cryptsetup.require_dm_crypt()
        except LiveOSError as exc:
            if not dry_run:
                raise
            dm_note = f"{exc.message}; a real run refuses until it has ({exc.hint})"
    plan = Plan("create home.img", str(path))
    if path.exists() or path.is_symlink():
        _plan_replacing(
            plan,
            path,
            delete_existing,
            f"{path} already exists: it holds a home directory",
            "copy it somewhere first (home copy), then add --delete-home to replace it",
        )
    tmp = partial_name(path)
    try:
        plan.notes += check_fits(
            directory, final_size=size, new_bytes=size - allocated_bytes(tmp), what=str(path)
        )
    except NoSpaceError as exc:
        if not plan.destroys:
            raise
        raise NoSpaceError(
            f"{exc.message} (the old {path.name} stays until the new one is complete)",
            f"copy the old {path.name} elsewhere (home copy) and delete it, or choose a "
            "smaller size",
        ) from None
    if plan.destroys:
        plan.notes.append(
            f"the old {path.name} stays until the new one is complete, then the new one "
            "replaces it in one rename"
        )
    if dm_note:
        plan.notes.append(dm_note)
    if encrypt and not passphrase:
        plan.notes.append(
            "the passphrase is needed before anything is written (not asked in a dry run)"
        )

    or_remove_partial = removing_on_failure(tmp)

    plan.add(
        f"allocate {format_size(size)} (not sparse) at {tmp.name}, mode 0600",
        or_remove_partial(lambda: _allocate_new(tmp, size)),
        writes=[ByteRange(str(tmp), 0, size, "zeros (preallocated)")],
    )
    mkfs_argv = (f"mkfs.{fstype}", "-q", "-F", "-E", "nodiscard", "-L", HOME_LABEL)

    if encrypt:
        key = passphrase

        def need_key() -> bytes:
            if not key:
                raise UsageError("this plan was made for a dry run: it has no passphrase")
            return key

        @or_remove_partial
        def make_luks() -> None:
            from liveos_tools.tools import cryptsetup

            cryptsetup.format_luks(tmp, need_key())

        @or_remove_partial
        def make_fs_inside() -> None:
            with crypt_opened(tmp, need_key(), op="home-create") as (_name, node):
                mkfs.make_ext(node, fstype=fstype, label=HOME_LABEL)

        plan.add(
            "format it as LUKS2",
            make_luks,
            argv=("cryptsetup", "luksFormat", "--type", "luks2", "--key-file", "-", str(tmp)),
        )
        plan.add(
            f"open it and make {fstype} labelled {HOME_LABEL} inside",
            make_fs_inside,
            argv=(*mkfs_argv, "/dev/mapper/<opened>"),
        )
    else:
        plan.add(
            f"make {fstype} labelled {HOME_LABEL}",
            or_remove_partial(lambda: mkfs.make_ext(tmp, fstype=fstype, label=HOME_LABEL)),
            argv=(*mkfs_argv, str(tmp)),
        )
    verb = "replace the old" if plan.destroys else "rename it to"
    plan.add(
        f"fsync {tmp.name}, then {verb} {path.name} (one atomic rename)",
        or_remove_partial(lambda: _install(tmp, path)),
    )
    return plan


def _install(tmp: Path, path: Path) -> None:
    """Make the complete `tmp` durable, then rename it over `path` (the old one goes only now)."""
    try:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        ensure_not_in_use(path)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        raise os_error(exc, path) from None
    # A resize left unfinished on the old home.img means nothing for the new one.
    with contextlib.suppress(OSError):
        resize_state_path(path).unlink()


def _allocate_new(tmp: Path, size: int) -> None:
    clear_leftovers(tmp)  # a killed create's mapping on the old partial file
    _remove_stale_partial(tmp)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise os_error(exc, tmp) from None
    try:
        with contextlib.suppress(OSError):  # vfat keeps its mount's modes
            os.fchmod(fd, 0o600)
        preallocate(fd, 0, size)
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        tmp.unlink()
        raise os_error(exc, tmp) from None
    os.close(fd)


def _rename(tmp: Path, path: Path) -> None:
    os.replace(tmp, path)
    fsync_dir(path.parent)


# --- resize -------------------------------------------------------------------------------


@dataclass
class _Open:
    """The LUKS mapping that resize steps share while it is open."""

    name: str | None = None
    node: str | None = None
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)


def header_backup_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.luks-header")


def resize_state_path(path: Path) -> Path:
    """Where a running resize records its sizes (`.home.img.resize`), removed at its end."""
    return path.with_name(f".{path.name}.resize")


def read_resize_state(path: Path) -> tuple[int, int] | None:
    """(from, to) of a resize of `path` that did not finish, or None."""
    try:
        text = resize_state_path(path).read_text()
    except (OSError, UnicodeDecodeError):
        return None
    fields = dict(part.partition("=")[::2] for part in text.split())
    try:
        return int(fields["from"]), int(fields["to"])
    except (KeyError, ValueError):
        return None


def _write_resize_state(path: Path, start: int, target: int) -> None:
    state = resize_state_path(path)
    try:
        fd = os.open(state, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, f"from={start} to={target}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(path.parent)
    except OSError as exc:
        raise os_error(exc, state) from None


def _clear_resize_state(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        resize_state_path(path).unlink()
        fsync_dir(path.parent)


def plan_resize(
    path: Path,
    *,
    to_bytes: int | None = None,
    by_bytes: int | None = None,
    passphrase: bytes | None = None,
) -> Plan:
    """Grow or shrink home.img (and its LUKS container and filesystem).

    Shrinking: filesystem, then container, then file. Growing: file, then
    container, then filesystem. Refuses a size below what the data needs.

    `by_bytes` counts from the size the filesystem inside gives home.img (its size
    unless a resize stopped half-way). A running resize records where it started and
    where it goes in `.home.img.resize`; while that is there, `by_bytes` counts from
    where that resize started, so running the same command again finishes it at the
    size first asked for instead of going further.
    """
    from liveos_tools.run import require
    from liveos_tools.tools import e2fs, e2fsck, resize2fs

    path = Path(path)
    if (to_bytes is None) == (by_bytes is None):
        raise UsageError("give exactly one of --to SIZE and --by SIZE")
    kind = _require_home(path)
    left = ensure_not_in_use(path, allow_own=True)
    for tool in ("e2fsck", "resize2fs", "dumpe2fs"):
        require(tool)
    old = path.stat().st_size
    offset = _luks_offset(path, passphrase) if kind is HomeKind.LUKS else 0
    minimum = MIN_LUKS if kind is HomeKind.LUKS else MIN_PLAIN
    # Read-only: a damaged filesystem is refused, and the data measured, before any change.
    with filesystem(path, kind, passphrase, readonly=True) as dev:
        fsck = e2fsck.check(dev)
        if not fsck.clean:
            first = next(iter(fsck.problems()), fsck.meaning)
            raise CorruptError(
                f"the filesystem in {path} has errors ({first})",
                "nothing was changed; repair it first: e2fsck -f on the (opened) image",
            )
        use = e2fs.usage(dev)
        min_fs = resize2fs.min_blocks(dev) * use.block_size
    old_fs = use.total_bytes
    notes: list[str] = []
    state = read_resize_state(path)
    if state is not None:
        lo, hi = min(state), max(state)
        if not (lo <= old <= hi and lo <= old_fs + offset <= hi):
            notes.append(f"ignored {resize_state_path(path).name}: it does not fit this home.img")
            state = None
    start = state[0] if state is not None else old_fs + offset
    wanted = to_bytes if to_bytes is not None else start + (by_bytes or 0)
    new = round_size(wanted) if wanted > 0 else 0
    if new < minimum:
        raise UsageError(
            f"home.img cannot be {format_size(max(new, 0))}",
            f"give at least {format_size(minimum)}",
        )
    new_fs = new - offset
    if new_fs < min_fs:
        raise NoSpaceError(
            f"cannot shrink {path} to {format_size(new)}: its files need at least "
            f"{format_size(min_fs + offset)} ({format_size(use.used_bytes)} in use)",
            f"choose {format_size(round_size(min_fs + offset))} or more, or delete files first",
        )
    title = f"resize home.img from {format_size(old)} to {format_size(new)}"
    if old_fs + offset != old:
        title += f" (its filesystem from {format_size(old_fs)} to {format_size(new_fs)})"
    plan = Plan(title, str(path))
    leftover_steps(plan, path, left)
    plan.notes += notes
    if state is not None:
        if new == state[1]:
            plan.notes.append(
                f"finishing the resize from {format_size(state[0])} to "
                f"{format_size(state[1])} that stopped half-way"
            )
        else:
            plan.notes.append(
                f"a resize from {format_size(state[0])} to {format_size(state[1])} stopped "
                f"half-way; this one goes to {format_size(new)} instead"
            )
    if new == old and new_fs == old_fs:
        if state is not None:
            plan.add(f"remove {resize_state_path(path).name}", lambda: _clear_resize_state(path))
        else:
            plan.notes.append(f"{path.name} is already {format_size(new)}: nothing to do")
        return plan
    grow_file, cut_file = new > old, new < old
    backup = header_backup_path(path)
    backup_bytes = offset if kind is HomeKind.LUKS else 0
    plan.notes += check_fits(
        path.parent,
        final_size=new,
        new_bytes=max(0, new - old) + max(0, backup_bytes - allocated_bytes(backup)),
        what=path.name,
    )
    key = passphrase or b""
    opened = _Open()
    state_file = resize_state_path(path)

    def fs_target() -> str:
        return opened.node if opened.node is not None else str(path)

    def guarded(fn: Callable[[], None]) -> Callable[[], None]:
        # A failing step closes the mapping it opened, so nothing stays in use.
        def step() -> None:
            try:
                fn()
            except BaseException:
                opened.stack.close()
                raise

        return step

    if kind is HomeKind.LUKS:
        plan.add(
            f"back up the LUKS header to {backup.name}",
            lambda: _backup_header(path, backup),
            argv=("cryptsetup", "luksHeaderBackup", str(path), "--header-backup-file", str(backup)),
        )
    plan.add(
        f"record the sizes in {state_file.name} (a re-run finishes at {format_size(new)})",
        lambda: _write_resize_state(path, start, new),
        writes=[ByteRange(str(state_file), 0, len(f"from={start} to={new}\n"), "the sizes")],
    )
    if grow_file:
        plan.add(
            f"extend the file to {format_size(new)} (preallocated)",
            lambda: _extend(path, new),
            writes=[ByteRange(str(path), old, new - old, "zeros (preallocated)")],
        )
    if kind is HomeKind.LUKS:
        plan.add("open the LUKS container", lambda: _open(opened, path, key))
    plan.notes.append(
        "if it stops half-way, "
        + (
            "close the mapping (cryptsetup close liveos-home-*) and "
            if kind is HomeKind.LUKS
            else ""
        )
        + f"run the same resize again: it finishes at {format_size(new)}"
        + (f"; the header backup is {backup}" if kind is HomeKind.LUKS else "")
    )
    plan.add(
        "check the filesystem",
        guarded(lambda: _fsck_repair(fs_target())),
        argv=("e2fsck", "-f", "-p"),
    )
    if new_fs < old_fs:
        plan.add(
            f"shrink the filesystem to {format_size(new_fs)}",
            guarded(lambda: resize2fs.resize(fs_target(), new_fs)),
            argv=("resize2fs", "<filesystem>", resize2fs.size_argument(new_fs)),
        )
    if kind is HomeKind.LUKS:
        if cut_file:
            plan.add(
                f"shrink the LUKS container to {format_size(new_fs)} of data",
                guarded(lambda: _crypt_resize(opened, key, new_fs)),
                argv=("cryptsetup", "resize", "--size", str(new_fs // 512)),
            )
        else:
            plan.add(
                "grow the LUKS container to the whole file",
                guarded(lambda: _crypt_resize(opened, key, None)),
                argv=("cryptsetup", "resize"),
            )
    if new_fs > old_fs:
        plan.add(
            f"grow the filesystem to {format_size(new_fs)}",
            guarded(lambda: resize2fs.resize(fs_target(), new_fs)),
            argv=("resize2fs", "<filesystem>", resize2fs.size_argument(new_fs)),
        )
    plan.add("check the filesystem again", guarded(lambda: _fsck_verify(fs_target(), path)))
    if kind is HomeKind.LUKS:
        plan.add("close the LUKS container", opened.stack.close)
    if cut_file:
        plan.add(f"cut the file to {format_size(new)}", lambda: _truncate(path, new))
    plan.add(f"remove {state_file.name}", lambda: _clear_resize_state(path))
    return plan


def _backup_header(path: Path, backup: Path) -> None:
    from liveos_tools.tools import cryptsetup

    tmp = partial_name(backup)
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    cryptsetup.header_backup(path, tmp)
    with contextlib.suppress(OSError):
        os.chmod(tmp, 0o600)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    _rename(tmp, backup)


def _extend(path: Path, new: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            old = os.fstat(fd).st_size
            preallocate(fd, old, new - old)
            if os.fstat(fd).st_size < new:
                os.ftruncate(fd, new)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise os_error(exc, path) from None


def _truncate(path: Path, new: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, new)
        os.fsync(fd)
    finally:
        os.close(fd)


def _open(state: _Open, path: Path, key: bytes) -> None:
    state.name, state.node = state.stack.enter_context(crypt_opened(path, key, op="home-resize"))


def _crypt_resize(state: _Open, key: bytes, size: int | None) -> None:
    from liveos_tools.tools import cryptsetup

    assert state.name is not None
    cryptsetup.resize(state.name, key, size)


def _fsck_repair(dev: str) -> None:
    from liveos_tools.tools import e2fsck

    result = e2fsck.check(dev, repair=True)
    if not result.clean:
        raise CorruptError(
            f"e2fsck could not repair the filesystem on {dev}: {result.meaning}",
            "nothing was resized; run e2fsck -f by hand",
        )


def _fsck_verify(dev: str, path: Path) -> None:
    from liveos_tools.tools import e2fsck

    result = e2fsck.check(dev)
    if not result.clean:
        raise CorruptError(
            f"the filesystem in {path} has errors after the resize: {result.meaning}",
            "run e2fsck -f on it; the LUKS header backup (if any) is beside it",
        )


# --- copy ---------------------------------------------------------------------------------


def _data_ranges(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """The (start, end) ranges of `fd` that hold data; holes read as zeros."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole is left
                return
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):  # no hole support: all data
                yield pos, size
                return
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        pos = end


def _feed_zeros(h: hashlib._Hash, n: int) -> None:
    while n > 0:
        k = min(n, _CHUNK)
        h.update(_ZEROS[:k])
        n -= k


def sha256_of(path: Path) -> str:
    """The file's SHA-256, reading only its data ranges (holes hash as zeros)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        h = hashlib.sha256()
        pos = 0
        for start, end in _data_ranges(fd, size):
            _feed_zeros(h, start - pos)
            while start < end:
                data = os.pread(fd, min(_CHUNK, end - start), start)
                if not data:
                    raise LiveOSError(f"{path} shrank while it was read")
                h.update(data)
                start += len(data)
            pos = end
        _feed_zeros(h, size - pos)
        return h.hexdigest()
    finally:
        os.close(fd)


def copy_file(source: Path, tmp: Path, *, sparse: bool) -> str:
    """Copy `source` to the new file `tmp` (0600), skipping holes and zero blocks.

    `sparse=False` preallocates the whole destination first, as a stick needs.
    Returns the SHA-256 of what was read. The copy is fsynced.
    """
    src = os.open(source, os.O_RDONLY)
    try:
        size = os.fstat(src).st_size
        dst = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with contextlib.suppress(OSError):
                os.fchmod(dst, 0o600)
            if sparse:
                os.ftruncate(dst, size)
            else:
                preallocate(dst, 0, size)
            h = hashlib.sha256()
            pos = 0
            for start, end in _data_ranges(src, size):
                _feed_zeros(h, start - pos)
                while start < end:
                    data = os.pread(src, min(_CHUNK, end - start), start)
                    if not data:
                        raise LiveOSError(f"{source} shrank while it was copied")
                    h.update(data)
                    if data != _ZEROS[: len(data)]:
                        os.pwrite(dst, data, start)
                    start += len(data)
                pos = end
            _feed_zeros(h, size - pos)
            os.fsync(dst)
            # Read the verification back from the stick, not from the page cache.
            with contextlib.suppress(OSError):
                os.posix_fadvise(dst, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(dst)
    finally:
        os.close(src)
    return h.hexdigest()


def plan_copy(source: Path, dest: Path, *, delete_existing: bool = False) -> Plan:
    """Copy a home.img (stick to stick, stick to backup file, backup to stick).

    The copy is written to a temporary name beside `dest`, fsynced, verified by
    SHA-256 and only then renamed over `dest`: an interrupted copy leaves the old
    file or nothing. A destination named home.img is preallocated (it goes on a
    stick); any other name is a backup and stays sparse.
    """
    source, dest = Path(source), Path(dest)
    _require_home(source)
    ensure_not_in_use(source)
    size = source.stat().st_size
    if size == 0:
        raise CorruptError(f"{source} is empty")
    directory = dest.parent
    if not directory.is_dir():
        raise TargetError(f"{directory}: no such directory", "check the destination path")
    plan = Plan("copy home.img", f"{source} -> {dest}")
    if dest.exists() or dest.is_symlink():
        if dest.exists() and os.path.samefile(source, dest):
            raise UsageError(f"{source} and {dest} are the same file")
        _plan_replacing(
            plan,
            dest,
            delete_existing,
            f"{dest} already exists",
            "add --delete-home to replace it (its files will be lost)",
        )
    sparse = dest.name != HOME_NAME
    tmp = partial_name(dest)
    need = (allocated_bytes(source) if sparse else size) - allocated_bytes(tmp)
    plan.notes += check_fits(directory, final_size=size, new_bytes=need, what=str(dest))
    if plan.destroys:
        plan.notes.append(f"the old {dest.name} stays until the copy is verified")
    digest: dict[str, str] = {}

    def copy() -> None:
        _remove_stale_partial(tmp)
        try:
            digest["source"] = copy_file(source, tmp, sparse=sparse)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise os_error(exc, tmp) from None

    def verify() -> None:
        got = sha256_of(tmp)
        if got != digest["source"]:
            tmp.unlink()
            raise VerifyError(
                f"the copy does not match the source: {tmp} differs from {source} (SHA-256)",
                "nothing was replaced (the copy was removed); the destination may be failing: "
                "try another stick or file, or check this one (badblocks, f3)",
            )

    how = "sparse" if sparse else "preallocated"
    plan.add(
        f"copy {format_size(size)} to {tmp.name} ({how}), fsync",
        copy,
        writes=[ByteRange(str(tmp), 0, size, f"a copy of {source}")],
    )
    plan.add("verify the copy (SHA-256 of source and copy)", verify)

    def install() -> None:
        _rename(tmp, dest)
        if dest.name == HOME_NAME:  # an unfinished resize of the old one means nothing now
            _clear_resize_state(dest)

    plan.add(f"rename {tmp.name} to {dest.name}", install)
    return plan
