"""The device-mapper persistent snapshot store (the LiveOS "overlay" file), read offline.

Layout (drivers/md/dm-snap-persistent.c; docs/ARCHITECTURE.md F1): chunk 0 is the header
`{le32 magic, valid, version, chunk_size}`; metadata area N sits at chunk
`1 + (epa + 1) * N` and is followed by its `epa` data chunks, where
`epa = chunk_bytes / 16` exceptions of `{le64 old_chunk, le64 new_chunk}` fit in one
chunk. The table ends at the first entry whose new_chunk is 0.

The kernel reads areas in order from area 0 and stops at the first one that is not
full; everything it reports follows from that walk, so this module walks the same
way. Areas past the first non-full one may hold stale entries from before a reset
and must never be looked at (so no bisection).
"""

from __future__ import annotations

import contextlib
import os
import stat
import struct
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import NamedTuple

from liveos_tools.errors import CorruptError, TargetError

MAGIC = 0x70416E53  # "SnAp" little-endian
DISK_VERSION = 1
SECTOR = 512
HEADER = struct.Struct("<IIII")
EXCEPTION = struct.Struct("<QQ")
#: dracut's chunk size, which the kernel uses when it initialises a new store.
DRACUT_CHUNK_SECTORS = 8
#: dm_exception_store_set_chunk_size refuses chunk_size > INT_MAX >> SECTOR_SHIFT.
MAX_CHUNK_SECTORS = 1 << 21
#: dracut's reset (and ours) zeroes this much of the file's start.
RESET_BYTES = 64 * 1024


class StoreState(Enum):
    NEW = "new"  # all-zero header: the kernel initialises it on first use
    VALID = "valid"
    FULL = "full"  # valid, but no free chunk left: the next write overflows
    INVALID = "invalid"  # valid=0 in the header: the kernel refuses it
    CORRUPT = "corrupt"


class Header(NamedTuple):
    magic: int
    valid: int
    version: int
    chunk_sectors: int

    @property
    def is_new(self) -> bool:
        return self.magic == 0


def parse_header(data: bytes) -> Header:
    if len(data) < HEADER.size:
        raise CorruptError(f"overlay header is truncated ({len(data)} of {HEADER.size} bytes)")
    return Header(*HEADER.unpack_from(data))


def header_bytes(valid: bool, chunk_sectors: int) -> bytes:
    """The 16 header bytes the kernel writes (the rest of chunk 0 is zero)."""
    return HEADER.pack(MAGIC, 1 if valid else 0, DISK_VERSION, chunk_sectors)


def check_chunk_sectors(chunk_sectors: int) -> str | None:
    """Why the kernel would refuse this chunk size, or None if it would accept it."""
    if chunk_sectors <= 0 or chunk_sectors & (chunk_sectors - 1):
        return f"chunk size {chunk_sectors} sectors is not a power of two"
    if chunk_sectors > MAX_CHUNK_SECTORS:
        return f"chunk size {chunk_sectors} sectors is larger than the kernel allows"
    return None


class Geometry(NamedTuple):
    """Where things are in a store of a given chunk size and length."""

    chunk_sectors: int
    size_bytes: int

    @property
    def chunk_bytes(self) -> int:
        return self.chunk_sectors * SECTOR

    @property
    def exceptions_per_area(self) -> int:
        return self.chunk_bytes // EXCEPTION.size

    @property
    def stride(self) -> int:
        return self.exceptions_per_area + 1

    @property
    def total_sectors(self) -> int:
        # A loop device over the file is the file's size rounded down to a sector.
        return self.size_bytes // SECTOR

    @property
    def total_chunks(self) -> int:
        return self.total_sectors // self.chunk_sectors

    def area_chunk(self, area: int) -> int:
        return 1 + self.stride * area

    def is_metadata_chunk(self, chunk: int) -> bool:
        return chunk == 0 or (chunk - 1) % self.stride == 0

    def skip_metadata(self, next_free: int) -> int:
        # The kernel's skip_metadata(): a free pointer on an area's chunk moves past it.
        return next_free + 1 if next_free % self.stride == 1 else next_free

    def is_full(self, next_free: int) -> bool:
        # persistent_prepare_exception() refuses when size < (next_free + 1) * chunk_size.
        return self.total_sectors < (next_free + 1) * self.chunk_sectors


class StoreReport(NamedTuple):
    """What an overlay holds, in the kernel's own numbers.

    sectors_allocated / total_sectors / metadata_sectors are exactly what
    `dmsetup status` prints for a snapshot over this store once activated.
    """

    path: str
    size_bytes: int
    state: StoreState
    valid: bool | None  # None for a new store: no header yet
    chunk_sectors: int
    chunk_size_assumed: bool  # new store: dracut's chunk size, not read from disk
    exceptions: int
    current_area: int
    next_free: int
    sectors_allocated: int
    total_sectors: int
    metadata_sectors: int
    problem: str | None = None
    full_scan: bool = False

    @property
    def used_bytes(self) -> int:
        return self.sectors_allocated * SECTOR

    @property
    def total_bytes(self) -> int:
        return self.total_sectors * SECTOR

    @property
    def used_fraction(self) -> float:
        return self.sectors_allocated / self.total_sectors if self.total_sectors else 1.0

    @property
    def free_chunks(self) -> int:
        return max(0, self.total_sectors // self.chunk_sectors - self.next_free)

    def kernel_status(self) -> str:
        """The params `dmsetup status` would print for this store once activated."""
        if self.state is StoreState.INVALID:
            return "Invalid"
        return f"{self.sectors_allocated}/{self.total_sectors} {self.metadata_sectors}"


class _Walk:
    """The walk's running state (mutable, internal)."""

    __slots__ = ("current_area", "exceptions", "max_new", "problem", "seen")

    def __init__(self, seen: bytearray | None) -> None:
        self.exceptions = 0
        self.current_area = 0
        self.max_new = 0
        self.problem: str | None = None
        self.seen = seen


def _file_size(fd: int) -> int:
    # st_size is 0 for block devices; seeking to the end works for both.
    return os.lseek(fd, 0, os.SEEK_END)


def open_readonly(
    path: str | Path,
    what: str = "overlay",
    *,
    not_a: str | None = None,
    dir_hint: str | None = None,
) -> int:
    """An O_RDONLY descriptor of a file or device; every failure as a TargetError naming
    `what` (and `not_a`, what a directory is not)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            os.close(fd)
            raise IsADirectoryError
        return fd
    except FileNotFoundError:
        raise TargetError(f"{path}: no such file", f"check the path to the {what}") from None
    except IsADirectoryError:
        raise TargetError(f"{path} is a directory, not a {not_a or what}", dir_hint) from None
    except PermissionError:
        raise TargetError(f"{path}: permission denied", "run as root (sudo)") from None
    except OSError as exc:
        raise TargetError(f"{path}: {exc.strerror}") from None


def _open(path: str | Path) -> int:
    return open_readonly(
        path,
        not_a="device-mapper overlay file",
        dir_hint="an OverlayFS overlay has no snapshot store to read",
    )


class CowStore:
    """An open overlay file (or device), read-only."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._fd = _open(path)
        try:
            self.size_bytes = _file_size(self._fd)
            self.header = (
                parse_header(self._pread(HEADER.size, 0)) if self.size_bytes >= 16 else None
            )
        except BaseException:
            os.close(self._fd)
            raise

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> CowStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pread(self, length: int, offset: int) -> bytes:
        try:
            return os.pread(self._fd, length, offset)
        except OSError as exc:
            raise TargetError(f"{self.path}: read error at byte {offset}: {exc.strerror}") from None

    # -- the header ------------------------------------------------------------------

    def _header_problem(self) -> str | None:
        h = self.header
        if h is None:
            return f"the file is too short to be an overlay ({self.size_bytes} bytes)"
        if h.is_new:
            return None
        if h.magic != MAGIC:
            return f"bad magic 0x{h.magic:08x} (not a device-mapper snapshot store)"
        if h.version != DISK_VERSION:
            return f"unsupported store version {h.version}"
        return check_chunk_sectors(h.chunk_sectors)

    def geometry(self) -> Geometry:
        h = self.header
        chunk = DRACUT_CHUNK_SECTORS if h is None or h.is_new else h.chunk_sectors
        return Geometry(chunk, self.size_bytes)

    # -- walking the table -----------------------------------------------------------

    def _check_entry(self, geo: Geometry, walk: _Walk, new: int) -> None:
        if walk.problem is not None:
            return
        if new >= geo.total_chunks:
            walk.problem = f"an exception points at chunk {new}, past the end ({geo.total_chunks})"
        elif geo.is_metadata_chunk(new):
            walk.problem = f"an exception points at metadata chunk {new}"
        elif walk.seen is not None:
            byte, bit = divmod(new, 8)
            if walk.seen[byte] & (1 << bit):
                walk.problem = f"two exceptions share data chunk {new}"
            walk.seen[byte] |= 1 << bit

    def _read_area(self, geo: Geometry, area: int) -> list[tuple[int, int]]:
        """Entries of one area up to its first terminator (new_chunk 0)."""
        data = self._pread(geo.chunk_bytes, geo.area_chunk(area) * geo.chunk_bytes)
        entries = []
        for old, new in EXCEPTION.iter_unpack(data[: len(data) - len(data) % EXCEPTION.size]):
            if new == 0:
                break
            entries.append((old, new))
        return entries

    def _skip_full_areas(self, geo: Geometry, walk: _Walk) -> int:
        """Fast mode: account for each full area from its last entry, in order, and
        return the first area that is not full (the kernel's current_area).

        One 8-byte read per area (the last entry's new_chunk), stopping at the first
        zero. Readahead is switched off for this descriptor: a cold 16 GiB store would
        otherwise pull 128 KiB per area (2 GiB) instead of one page (64 MiB).
        """
        with contextlib.suppress(OSError, AttributeError):
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_RANDOM)
        cb, epa, stride = geo.chunk_bytes, geo.exceptions_per_area, geo.stride
        areas = (geo.total_chunks - 2) // stride + 1
        first = geo.area_chunk(0) * cb + (epa - 1) * EXCEPTION.size + 8
        step = stride * cb
        pread, fd = os.pread, self._fd
        lasts: list[int] = []
        try:
            for area in range(areas):
                new = int.from_bytes(pread(fd, 8, first + area * step), "little")
                if new == 0:
                    break
                lasts.append(new)
        except OSError as exc:
            raise TargetError(f"{self.path}: read error: {exc.strerror}") from None
        if lasts:
            top = max(lasts)
            bad = next((x for x in lasts if geo.is_metadata_chunk(x)), None)
            if top >= geo.total_chunks:
                walk.problem = (
                    f"an exception points at chunk {top}, past the end ({geo.total_chunks})"
                )
            elif bad is not None:
                walk.problem = f"an exception points at metadata chunk {bad}"
            walk.max_new = top
            walk.exceptions = epa * len(lasts)
        return len(lasts)

    def _walk(self, geo: Geometry, *, full: bool) -> Iterator[tuple[int, int]]:
        """Yield exceptions the way the kernel reads them; state lands in self._state.

        The kernel reads areas in order and stops at the first that is not full. Fast
        mode reads only the last entry of each full area, then the whole of the first
        non-full one (and yields only that one's entries). Full mode reads every area.
        """
        walk = self._state = _Walk(seen=bytearray(geo.total_chunks // 8 + 1) if full else None)
        epa = geo.exceptions_per_area
        area = 0 if full else self._skip_full_areas(geo, walk)
        # _check_entry's tests inlined on locals: a full scan of a 4 GiB store is a
        # million entries, and the method and property calls were most of its time.
        total, stride, seen = geo.total_chunks, geo.stride, walk.seen
        while walk.problem is None or full:
            if geo.area_chunk(area) >= geo.total_chunks:
                # An area that cannot exist: the previous one filled the store exactly.
                break
            entries = self._read_area(geo, area)
            for old, new in entries:
                if walk.problem is None:
                    if new >= total or (new - 1) % stride == 0:
                        self._check_entry(geo, walk, new)  # says which problem
                    elif seen is not None:
                        byte, bit = new >> 3, 1 << (new & 7)
                        if seen[byte] & bit:
                            walk.problem = f"two exceptions share data chunk {new}"
                        seen[byte] |= bit
                if new > walk.max_new:
                    walk.max_new = new
                yield old, new
            walk.exceptions += len(entries)
            if len(entries) < epa or not full:
                break
            area += 1
        walk.current_area = area

    def exceptions(self) -> Iterator[tuple[int, int]]:
        """Every exception (old_chunk, new_chunk) in table order: the full scan."""
        problem = self._header_problem()
        if problem or self.header is None or self.header.is_new:
            if problem:
                raise CorruptError(f"{self.path}: {problem}")
            return
        geo = self.geometry()
        yield from self._walk(geo, full=True)
        if self._state.problem:
            raise CorruptError(f"{self.path}: {self._state.problem}")

    def report(self, *, full: bool = False) -> StoreReport:
        geo = self.geometry()
        h = self.header
        problem = self._header_problem()
        if problem is None and geo.total_chunks < 2:
            problem = f"the file is too small to hold a snapshot store ({self.size_bytes} bytes)"
        if problem is not None or h is None:
            return self._make(
                geo,
                StoreState.CORRUPT,
                None if h is None else bool(h.valid),
                full,
                problem=problem,
            )
        if h.is_new:
            # What the kernel will report right after initialising it.
            return self._make(geo, StoreState.NEW, None, full, next_free=2, assumed=True)
        for _ in self._walk(geo, full=full):
            pass
        walk = self._state
        next_free = geo.skip_metadata(max(2, walk.max_new + 1))
        if walk.problem:
            state = StoreState.CORRUPT
        elif not h.valid:
            state = StoreState.INVALID
        elif geo.is_full(next_free):
            state = StoreState.FULL
        else:
            state = StoreState.VALID
        return self._make(
            geo,
            state,
            bool(h.valid),
            full,
            exceptions=walk.exceptions,
            current_area=walk.current_area,
            next_free=next_free,
            problem=walk.problem,
        )

    def _make(
        self,
        geo: Geometry,
        state: StoreState,
        valid: bool | None,
        full: bool,
        *,
        exceptions: int = 0,
        current_area: int = 0,
        next_free: int = 0,
        problem: str | None = None,
        assumed: bool = False,
    ) -> StoreReport:
        corrupt_header = state is StoreState.CORRUPT and next_free == 0
        return StoreReport(
            path=self.path,
            size_bytes=self.size_bytes,
            state=state,
            valid=valid,
            chunk_sectors=geo.chunk_sectors,
            chunk_size_assumed=assumed,
            exceptions=exceptions,
            current_area=current_area,
            next_free=next_free,
            sectors_allocated=next_free * geo.chunk_sectors,
            total_sectors=geo.total_sectors,
            metadata_sectors=0 if corrupt_header else (current_area + 2) * geo.chunk_sectors,
            problem=problem,
            full_scan=full,
        )


def read_store(path: str | Path, *, full: bool = False) -> StoreReport:
    """Read an overlay file offline and report it as the kernel would."""
    with CowStore(path) as store:
        return store.report(full=full)
