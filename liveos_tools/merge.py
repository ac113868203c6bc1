"""The merged view: a base root image with a persistent snapshot store applied, offline.

What the kernel's dm snapshot device shows, byte for byte, computed without
device-mapper: origin chunk N reads from the store's data chunk when the store has
an exception for N, and from the base otherwise. The table is read by
`cow.CowStore.exceptions()`, the kernel's own walk (areas in order, stopping at the
first area that is not full, so stale areas after a reset are never seen).

Duplicate old_chunk entries are never written by the kernel (it looks the complete
table up before allocating), so they only come from damage. The kernel still loads
such a table, and what it then shows depends on the order of its hash lists
(drivers/md/dm-snap.c dm_insert_exception: entries are kept sorted by old_chunk and
merged into runs of consecutive chunks; dm_lookup_exception returns the first run
that covers the chunk). Usually the first entry wins, but a later entry that extends
an earlier run wins instead. `kernel_lookup()` replays that insertion for the
256-chunk groups that hold duplicates, so the view stays the kernel's view.

Exceptions for chunks at or past the origin's end are loaded by the kernel and never
read (the snapshot device is the origin's size): they are kept in `exceptions()` and
ignored by reads. A last, partial origin chunk shows only its first bytes.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from liveos_tools.cow import MAGIC, SECTOR, CowStore, open_readonly
from liveos_tools.errors import CorruptError, LiveOSError, TargetError, UsageError

if TYPE_CHECKING:
    from liveos_tools.media import Medium

REPAIR_HINT = "run `liveos-overlay repair` on the stick first; nothing was changed"
#: dm-snap.c hashes the complete table by old_chunk >> DM_CHUNK_CONSECUTIVE_BITS, with
#: at least 64 buckets, so a run of consecutive chunks never leaves its 256-chunk group.
GROUP_SHIFT = 8
#: write_image works in windows of this many bytes, and finds holes in blocks of ZERO_BLOCK.
WINDOW = 8 * 1024 * 1024
ZERO_BLOCK = 4096
_SUB = 64 * 1024

Progress = Callable[[int, int], None]


def kernel_lookup(entries: Iterable[tuple[int, int]]) -> dict[int, int]:
    """old_chunk -> new_chunk as dm_lookup_exception resolves a table loaded in this order."""
    table: dict[int, int] = {}
    dup_groups: set[int] = set()
    ordered = list(entries)
    for old, new in ordered:
        if old in table:
            dup_groups.add(old >> GROUP_SHIFT)
        else:
            table[old] = new
    if dup_groups:
        for group in dup_groups:
            table.update(_replay_group([e for e in ordered if e[0] >> GROUP_SHIFT == group]))
    return table


def _replay_group(entries: list[tuple[int, int]]) -> dict[int, int]:
    # One hash list of the kernel, with the same insert and lookup rules. Runs are
    # [old, new, count] covering old..old+count -> new..new+count.
    runs: list[list[int]] = []
    for old, new in entries:
        for i, run in enumerate(runs):
            r_old, r_new, count = run
            if old == r_old + count + 1 and new == r_new + count + 1:
                run[2] += 1
                break
            if old == r_old - 1 and new == r_new - 1:
                run[0], run[1], run[2] = old, new, count + 1
                break
            if old < r_old:
                runs.insert(i, [old, new, 0])
                break
        else:
            runs.append([old, new, 0])
    resolved: dict[int, int] = {}
    for old in {e[0] for e in entries}:
        for r_old, r_new, count in runs:
            if r_old <= old <= r_old + count:
                resolved[old] = r_new + (old - r_old)
                break
    return resolved


def _data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """[start, end) ranges of the file that hold data; a block device is all data."""
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        return [(0, size)]
    out: list[tuple[int, int]] = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            if start >= size:
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            out.append((start, end))
            pos = end
    except OSError:  # a filesystem without SEEK_DATA: read it all
        return [(0, size)]
    return out


def _read_full(fd: int, mv: memoryview, offset: int) -> int:
    done = 0
    while done < len(mv):
        got = os.preadv(fd, [mv[done:]], offset + done)
        if got == 0:
            break
        done += got
    return done


class MergedView:
    """The base (origin) image with a persistent store's exceptions applied: byte for byte
    what the kernel's dm snapshot device shows. Read-only, no device-mapper."""

    def __init__(self, base: str | Path, store: str | Path) -> None:
        self.base_path = str(base)
        self.store_path = str(store)
        #: (squashfs.img, path inside) when the base is read out of a squashfs: then
        #: unsquashfs can unpack it faster than the mounted file reads (merged() sets it).
        self.packed_base: tuple[Path, str] | None = None
        self._base_fd = -1
        self._cow_fd = -1
        with CowStore(store) as cow:
            header = cow.header
            if header is not None and header.magic == MAGIC and not header.valid:
                raise CorruptError(
                    f"{store}: the overlay is marked invalid: the kernel refuses all I/O on it",
                    REPAIR_HINT,
                )
            self.chunk_bytes = cow.geometry().chunk_bytes
            try:
                table = kernel_lookup(cow.exceptions())
            except CorruptError as err:
                raise CorruptError(err.message, REPAIR_HINT) from None
        self._map = table
        self._base_fd = open_readonly(base, "base image")
        try:
            # The snapshot device has the origin's size in whole sectors.
            self.size_bytes = os.lseek(self._base_fd, 0, os.SEEK_END) // SECTOR * SECTOR
            self._cow_fd = open_readonly(store, "overlay")
        except BaseException:
            self.close()
            raise

    # -- lifetime ---------------------------------------------------------------------

    def close(self) -> None:
        for name in ("_base_fd", "_cow_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)

    def __enter__(self) -> MergedView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the table ----------------------------------------------------------------------

    def exceptions(self) -> Mapping[int, int]:
        """old_chunk -> new_chunk, as the kernel loads and resolves them (all of them,
        including any at or past the origin's end, which reads never reach)."""
        return MappingProxyType(self._map)

    @property
    def origin_chunks(self) -> int:
        return -(-self.size_bytes // self.chunk_bytes)

    def data_bytes(self) -> int:
        """The most a sparse write_image() can write: the base's data (not its holes)
        plus the chunks the overlay holds, never more than the whole image."""
        base = sum(end - start for start, end in _data_extents(self._base_fd, self.size_bytes))
        cb = self.chunk_bytes
        inside = sum(1 for c in self._map if c * cb < self.size_bytes)
        return min(self.size_bytes, base + inside * cb)

    # -- reading ------------------------------------------------------------------------

    def _cow_read(self, mv: memoryview, offset: int, what: str) -> None:
        try:
            got = _read_full(self._cow_fd, mv, offset)
        except OSError as exc:
            raise TargetError(
                f"{self.store_path}: read error at byte {offset}: {exc.strerror}"
            ) from None
        if got < len(mv):
            raise CorruptError(
                f"{self.store_path}: {what} ends before the overlay does", REPAIR_HINT
            )

    def _fill(self, buf: bytearray, offset: int, base_ranges: Iterable[tuple[int, int]]) -> None:
        """Put the view's bytes [offset, offset+len(buf)) into buf, which starts zeroed.

        base_ranges are the [start, end) parts of the base worth reading (its data);
        everything else of the base reads as zeros.
        """
        mv = memoryview(buf)
        end = offset + len(buf)
        for start, stop in base_ranges:
            lo, hi = max(start, offset), min(stop, end)
            if lo < hi:
                try:
                    _read_full(self._base_fd, mv[lo - offset : hi - offset], lo)
                except OSError as exc:
                    raise TargetError(
                        f"{self.base_path}: read error at byte {lo}: {exc.strerror}"
                    ) from None
        cb = self.chunk_bytes
        first, last = offset // cb, (end - 1) // cb
        lookup = self._map.get
        chunk = first
        while chunk <= last:
            new = lookup(chunk)
            if new is None:
                chunk += 1
                continue
            # One read for a run of chunks that are consecutive in both places.
            run = 1
            while chunk + run <= last and lookup(chunk + run) == new + run:
                run += 1
            lo = max(chunk * cb, offset)
            hi = min((chunk + run) * cb, end)
            self._cow_read(mv[lo - offset : hi - offset], new * cb + (lo - chunk * cb), "a chunk")
            chunk += run

    def pread(self, length: int, offset: int) -> bytes:
        """The bytes the snapshot device shows at offset (short at the end, like a device)."""
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        length = max(0, min(length, self.size_bytes - offset))
        if length == 0:
            return b""
        buf = bytearray(length)
        self._fill(buf, offset, [(0, self.size_bytes)])
        return bytes(buf)

    def reader(self) -> io.RawIOBase:
        """A seekable, readable file object over the view."""
        return _Reader(self)

    # -- the whole image ----------------------------------------------------------------

    def write_image(
        self, dest: Path, *, progress: Progress | None = None, fsync: bool = True
    ) -> None:
        """The whole merged image into dest: sparse (all-zero blocks become holes), fsynced.

        The base's holes are never read, and only the chunks with exceptions are read
        from the store, so a mostly empty image costs little more than its data.
        fsync=False is for scratch copies a crash makes worthless anyway: waiting for
        gigabytes to reach the disk would double the time of the step.
        """
        size = self.size_bytes
        extents = _data_extents(self._base_fd, size)
        olds = sorted(c for c in self._map if c * self.chunk_bytes < size)
        try:
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise TargetError(f"{dest}: cannot create it: {exc.strerror}") from None
        try:
            self._write_windows(fd, extents, olds, progress)
            os.ftruncate(fd, size)
            if fsync:
                os.fsync(fd)
        except OSError as exc:
            raise write_error(dest, exc) from None
        finally:
            os.close(fd)

    def apply_to(self, fd: int, *, progress: Progress | None = None) -> None:
        """Write the exception chunks over a copy of the base open in fd (read-write), and
        trim it to the view's size: fd then holds the merged image.

        The fast road to write_image()'s bytes when something faster than this process
        can copy the base (unsquashfs unpacks a squashfs base on every core): only the
        overlay's chunks pass through here. Runs of consecutive chunks that are also
        consecutive in the store go in one read and one write.
        """
        size, cb = self.size_bytes, self.chunk_bytes
        pairs = sorted((old, new) for old, new in self._map.items() if old * cb < size)
        total = sum(min(cb, size - old * cb) for old, _ in pairs)
        done = i = 0
        max_run = max(1, WINDOW // cb)
        buf = bytearray(max_run * cb)
        while i < len(pairs):
            old, new = pairs[i]
            n = 1
            while i + n < len(pairs) and n < max_run and pairs[i + n] == (old + n, new + n):
                n += 1
            length = min(n * cb, size - old * cb)
            mv = memoryview(buf)[:length]
            self._cow_read(mv, new * cb, f"the data of chunk {old}")
            _pwrite_all(fd, mv, old * cb)
            done += length
            i += n
            if progress is not None:
                progress(done, total)
        os.ftruncate(fd, size)

    def _write_windows(
        self,
        fd: int,
        extents: list[tuple[int, int]],
        olds: list[int],
        progress: Progress | None,
    ) -> None:
        size, cb = self.size_bytes, self.chunk_bytes
        window = max(WINDOW, cb)
        ext_i = old_i = 0
        for offset in range(0, size, window):
            end = min(offset + window, size)
            while ext_i < len(extents) and extents[ext_i][1] <= offset:
                ext_i += 1
            while old_i < len(olds) and (olds[old_i] + 1) * cb <= offset:
                old_i += 1
            has_data = ext_i < len(extents) and extents[ext_i][0] < end
            has_exc = old_i < len(olds) and olds[old_i] * cb < end
            if has_data or has_exc:
                buf = bytearray(end - offset)
                self._fill(buf, offset, extents[ext_i:])
                _write_nonzero(fd, buf, offset)
            if progress is not None:
                progress(end, size)


def write_error(dest: Path, exc: OSError) -> LiveOSError:
    import errno

    from liveos_tools.errors import NoSpaceError

    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpaceError(
            f"{dest}: no space left while writing the merged image",
            "free space there, or choose another --workdir",
        )
    return TargetError(f"{dest}: write error: {exc.strerror}")


_ZEROS = bytes(max(WINDOW, _SUB))
_ZERO_SUB = bytes(_SUB)
_ZERO_BLOCK = bytes(ZERO_BLOCK)


def _zero_blocks(buf: bytearray) -> Iterator[tuple[int, bool]]:
    """(start, all_zero) of consecutive pieces covering buf: 64 KiB steps, 4 KiB inside mixed ones.

    bytearray == bytes is one memcmp; a memoryview comparison goes element by element.
    """
    n = len(buf)
    for pos in range(0, n, _SUB):
        hi = min(pos + _SUB, n)
        if hi - pos == _SUB and buf[pos:hi] == _ZERO_SUB:
            yield pos, True
            continue
        for p in range(pos, hi, ZERO_BLOCK):
            q = min(p + ZERO_BLOCK, hi)
            yield p, buf[p:q] == _ZERO_BLOCK[: q - p]


def _write_nonzero(fd: int, buf: bytearray, offset: int) -> None:
    """pwrite the blocks of buf that are not all zero; zero blocks stay holes."""
    n = len(buf)
    if buf == (_ZEROS if n == len(_ZEROS) else _ZEROS[:n]):
        return
    mv = memoryview(buf)
    run_start = -1
    for lo, zero in _zero_blocks(buf):
        if zero and run_start >= 0:
            _pwrite_all(fd, mv[run_start:lo], offset + run_start)
            run_start = -1
        elif not zero and run_start < 0:
            run_start = lo
    if run_start >= 0:
        _pwrite_all(fd, mv[run_start:n], offset + run_start)


def _pwrite_all(fd: int, mv: memoryview, offset: int) -> None:
    done = 0
    while done < len(mv):
        done += os.pwrite(fd, mv[done:], offset + done)


class _Reader(io.RawIOBase):
    def __init__(self, view: MergedView) -> None:
        super().__init__()
        self._view = view
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._view.size_bytes + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    def readinto(self, b: memoryview | bytearray) -> int:  # type: ignore[override]
        data = self._view.pread(len(b), self._pos)
        memoryview(b).cast("B")[: len(data)] = data
        self._pos += len(data)
        return len(data)


# -- a located medium ---------------------------------------------------------------------


@contextlib.contextmanager
def open_base(medium: Medium) -> Iterator[Path]:
    """The base rootfs image of a located medium (media.open_medium).

    squashfs.img is attached read-only and mounted read-only for as long as the
    context lasts, and yields LiveOS/rootfs.img (or ext3fs.img) inside it; an
    uncompressed LiveOS/rootfs.img is yielded as it is. Unmounted and detached on exit,
    also on failure.
    """
    from liveos_tools.media import ImageLayout

    layout = medium.image_layout
    if layout is ImageLayout.UNCOMPRESSED and medium.rootfs_path is not None:
        yield medium.rootfs_path
        return
    if layout is ImageLayout.UNKNOWN and medium.squashfs_path is not None:
        _check_squashfs(medium.squashfs_path)
    if layout is not ImageLayout.NESTED or medium.squashfs_path is None:
        raise UsageError(
            f"the live image on {medium.target} has the {layout.value} layout, "
            "which has no root filesystem image to merge an overlay into",
            "this works on squashfs.img holding LiveOS/rootfs.img, or an uncompressed "
            "LiveOS/rootfs.img",
        )
    assert medium.rootfs_path is not None
    if os.geteuid() != 0:
        raise TargetError(
            f"reading {medium.squashfs_path} needs root (it is mounted)", "run with sudo"
        )
    from liveos_tools.tools import losetup
    from liveos_tools.tools import mount as mount_tool

    with contextlib.ExitStack() as stack:
        where = Path(tempfile.mkdtemp(prefix="liveos-base-"))
        stack.callback(os.rmdir, where)
        loop = losetup.attach(medium.squashfs_path, readonly=True)
        stack.callback(losetup.detach, loop)
        mount_tool.mount(loop, where, fstype="squashfs", options="ro")
        stack.callback(mount_tool.umount, where)
        rootfs = where / medium.rootfs_path
        if not rootfs.is_file():
            raise CorruptError(
                f"{medium.squashfs_path} holds no {medium.rootfs_path}",
                "the live image is damaged: put a good squashfs.img of the same release back",
            )
        yield rootfs


def _check_squashfs(path: Path) -> None:
    from liveos_tools.tools import squashfs

    try:
        squashfs.find_paths(path, squashfs.NESTED_NAMES)
    except LiveOSError as err:
        raise CorruptError(
            f"the live image {path} cannot be read ({err.message})",
            "the stick's squashfs.img is damaged: put a good one of the same release back",
        ) from None


@contextlib.contextmanager
def merged(medium: Medium) -> Iterator[MergedView]:
    """open_base() and the medium's device-mapper overlay, as one merged view."""
    from liveos_tools.media import ImageLayout, OverlayKind

    if medium.overlay_path is None:
        raise TargetError(
            f"no overlay on {medium.target}", "there is nothing to merge into the base image"
        )
    if medium.overlay_kind is not OverlayKind.DM:
        raise UsageError(
            f"{medium.overlay_path} is an OverlayFS overlay ({medium.overlay_kind.value}), "
            "not a device-mapper snapshot store",
            "the merged view applies to device-mapper overlays",
        )
    with open_base(medium) as base, MergedView(base, medium.overlay_path) as view:
        if medium.image_layout is ImageLayout.NESTED:
            assert medium.squashfs_path is not None and medium.rootfs_path is not None
            view.packed_base = (medium.squashfs_path, str(medium.rootfs_path))
        yield view
