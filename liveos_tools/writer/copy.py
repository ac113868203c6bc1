"""Copy source files onto the stick fast, with checksums, progress and verification.

The data path (measured with scripts/bench-iso-to-disk): every file is written as big
sequential writes into where its bytes live (a file on a mounted filesystem, or the
clusters the FAT writer allocated for it, see dest.py), and write-back to the disk is
started every 64 MiB (posix_fadvise DONTNEED on the range just written: it starts
asynchronous write-back of dirty pages and drops clean ones), so the final fsync finds
little left to do and the page cache does not fill up with 4 sticks' worth of data.

The bytes never enter this process on the way to the stick: os.sendfile copies them in
the kernel, verified or not. A verified write hashes the source beside it, in a thread
that reads it in small pieces (the pages sendfile reads too); copying through a
user-space buffer instead cost 1.5-3.4 s of CPU per GiB on the development machine
(docs/ARCHITECTURE.md, "how the bytes are written"). The read-back reads the medium with
O_DIRECT (no page cache, so no cache drop first, and each read really reaches the disk),
hashing each buffer in another thread while the next is read. Where O_DIRECT is refused
(tmpfs before Linux 6.6, odd alignment) it drops the range from the page cache and reads
through it. Both sides hash the same 16 MiB segments, so the comparison is a list of
per-segment checksums (a mismatch says which megabytes differ): xxh3 by default (see
ALGORITHMS for why), crc32 or sha256 with `--verify-hash`. The checksum printed for a
file is the sha256 of its segment checksums.

Verification reads back only after every byte is written and fsynced, never chunk by
chunk behind the writer: a fake-capacity stick that wraps around overwrites early
chunks with late ones, which only a read-back after the last write can see.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os
import sys
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, TextIO

from liveos_tools.errors import CorruptError
from liveos_tools.units import format_size
from liveos_tools.writer.source import SourceFile

SEGMENT = 16 << 20  # checksum unit and buffer size
KICK = 64 << 20  # start write-back after this many bytes
RING = 4  # buffers in flight per file
CHUNK = 4 << 20  # for the small-file (mcopy) path
#: The source is hashed in pieces this small: they stay in the CPU's cache between the
#: read and the hash (1 MiB: 0.15 s a GiB with xxh3; 16 MiB: 0.23-0.49 s).
SOURCE_READ = 1 << 20
#: O_DIRECT reads are this big and start at multiples of DIRECT_ALIGN (4 KiB covers
#: 512-byte and 4K-sector devices and ext4/xfs image files).
DIRECT_READ = 16 << 20
DIRECT_ALIGN = 4096
DIRECT_QUEUE = 2
Piece = tuple[int, int]  # (absolute offset in the destination, length)
#: Checksum algorithms, fastest first. One core of the project's 2-core AMD EPYC, 16 MiB
#: buffers, best of 5 (load average 8, 2026-11-30): xxh3 (xxHash's XXH3-128) 6.8 GiB/s,
#: crc32 (zlib 1.2.13) 0.64 GiB/s, sha256 0.26 GiB/s. A verified write hashes every byte
#: twice (as written, as read back), so on a 1 GiB image crc32 costs about 3 s of CPU and
#: sha256 8 s, where xxh3 costs 0.3 s. xxh3 and crc32 find what a stick does wrong (bad
#: blocks, fake capacity wrapping around, stale pages); neither is a defence against
#: tampering: that is sha256.
ALGORITHMS = ("xxh3", "crc32", "sha256")
DEFAULT_ALGORITHM = "xxh3"
_print_lock = threading.Lock()
_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _hash_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max_workers=max(2, min(4, os.cpu_count() or 2)), thread_name_prefix="liveos-sha"
            )
        return _pool


@dataclass(frozen=True)
class Checksum:
    """A checksum of every SEGMENT bytes of a file (the last one may be shorter)."""

    size: int
    digests: tuple[bytes, ...]
    segment: int = SEGMENT
    algorithm: str = DEFAULT_ALGORITHM

    def hexdigest(self) -> str:
        return hashlib.sha256(b"".join(self.digests)).hexdigest()

    def first_difference(self, other: Checksum) -> int | None:
        """Byte offset of the first segment that differs (None: identical)."""
        for i, (a, b) in enumerate(zip(self.digests, other.digests, strict=False)):
            if a != b:
                return i * self.segment
        if len(self.digests) != len(other.digests) or self.size != other.size:
            return min(len(self.digests), len(other.digests)) * self.segment
        return None


class _Hash(Protocol):
    def update(self, data: memoryview, /) -> None: ...
    def digest(self) -> bytes: ...


class _Crc32:
    """zlib.crc32 as a hash object: its digest is _digest()'s."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: memoryview, /) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "little")


def _new_hash(algorithm: str) -> _Hash:
    if algorithm == "xxh3":
        import xxhash  # not on the fast path of `liveos-overlay status`

        return xxhash.xxh3_128()
    if algorithm == "crc32":
        return _Crc32()
    return hashlib.sha256()


class SegmentHasher:
    """Incremental: feed bytes in order, get a Checksum. Streams into the hash (no copy
    of the bytes fed), so a segment's digest is the same however it was cut."""

    def __init__(self, algorithm: str = DEFAULT_ALGORITHM) -> None:
        check_algorithm(algorithm)
        self.size = 0
        self.algorithm = algorithm
        self._hash = _new_hash(algorithm)
        self._in_segment = 0
        self._digests: list[bytes] = []

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            n = min(len(view), SEGMENT - self._in_segment)
            self._hash.update(view[:n])
            self.size += n
            self._in_segment += n
            view = view[n:]
            if self._in_segment == SEGMENT:
                self._digests.append(self._hash.digest())
                self._hash = _new_hash(self.algorithm)
                self._in_segment = 0

    def result(self) -> Checksum:
        digests = list(self._digests)
        if self._in_segment or not digests:
            digests.append(self._hash.digest())
        return Checksum(self.size, tuple(digests), algorithm=self.algorithm)


class Board:
    """Progress of every target of one run.

    On a terminal: one line for all targets together (bytes, rate, ETA), redrawn in
    place. Otherwise: a line per target every few seconds and when it finishes."""

    def __init__(
        self, stream: TextIO | None = None, *, quiet: bool = False, tty: bool | None = None
    ) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = self.stream.isatty() if tty is None else tty
        self.total = 0
        self.done = 0
        self.start = time.monotonic()
        self._last = 0.0
        self._lock = threading.Lock()
        self._targets = 0

    def add(self, nbytes: int) -> None:
        with self._lock:
            self.total += nbytes
            self._targets += 1

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-6)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else 0
        pct = 100 * self.done / max(self.total, 1)
        who = f"{self._targets} sticks" if self._targets > 1 else "writing"
        return (
            f"{who}: {format_size(self.done)} / {format_size(self.total)} ({pct:3.0f}%) "
            f"{format_size(int(rate))}/s ETA {eta:4.0f} s"
        )

    def advance(self, n: int) -> None:
        with self._lock:
            self.done += n
            now = time.monotonic()
            if not (self.tty and not self.quiet) or now - self._last < 0.2:
                return
            self._last = now
        with _print_lock:
            print("\r" + self.line() + "\033[K", end="", file=self.stream, flush=True)

    def finish(self) -> None:
        if self.tty and not self.quiet and self.done:
            with _print_lock:
                print("\r" + self.line() + "\033[K", file=self.stream, flush=True)


class Progress:
    """One target's file: feeds the overall board; on a non-terminal (or without a
    board) prints its own line every 2 s and at the end."""

    def __init__(
        self,
        label: str,
        total: int,
        stream: TextIO | None = None,
        quiet: bool = False,
        board: Board | None = None,
    ) -> None:
        """`board`: the run's overall progress (None: per-target lines only)."""
        self.label = label
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream or sys.stderr
        self.board = board
        self.quiet = quiet or (self.board is not None and self.board.tty)
        self.start = time.monotonic()
        self._last = self.start

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-6)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else 0
        pct = 100 * self.done / self.total
        return (
            f"{self.label}: {format_size(self.done)} / {format_size(self.total)} "
            f"({pct:3.0f}%) {format_size(int(rate))}/s ETA {eta:4.0f} s"
        )

    def update(self, n: int) -> None:
        self.done += n
        if self.board is not None:
            self.board.advance(n)
        now = time.monotonic()
        if self.quiet or now - self._last < 2.0:
            return
        self._last = now
        with _print_lock:
            print(self.line(), file=self.stream, flush=True)

    def finish(self) -> None:
        if not self.quiet:
            with _print_lock:
                print(self.line(), file=self.stream, flush=True)


def _kick(fd: int, offset: int, length: int) -> None:
    """Start write-back of [offset, offset+length) now, and drop what is already clean."""
    with contextlib.suppress(OSError):
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def segments(pieces: list[Piece], size: int, seg: int = SEGMENT) -> Iterator[list[Piece]]:
    """Split destination pieces (in file order) into file segments of `seg` bytes."""
    cur: list[Piece] = []
    room = seg
    left = size
    for off, length in pieces:
        length = min(length, left)
        while length > 0:
            n = min(length, room)
            cur.append((off, n))
            off, length, room, left = off + n, length - n, room - n, left - n
            if room == 0:
                yield cur
                cur, room = [], seg
        if left <= 0:
            break
    if cur:
        yield cur
    if left > 0:
        raise CorruptError(f"the destination holds only {size - left} of {size} bytes")


def _pread_full(fd: int, view: memoryview, offset: int, what: str) -> None:
    while view:
        n = os.preadv(fd, [view], offset)
        if n <= 0:
            raise CorruptError(f"{what}: ends {len(view)} bytes early")
        view, offset = view[n:], offset + n


def _pwrite_full(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def check_algorithm(name: str) -> None:
    if name not in ALGORITHMS:
        raise ValueError(f"unknown checksum algorithm {name!r}")


def _digest(view: memoryview | bytes | bytearray, algorithm: str) -> bytes:
    name = algorithm
    if name == "xxh3":
        import xxhash  # not on the fast path of `liveos-overlay status`

        return xxhash.xxh3_128_digest(view)
    if name == "crc32":
        return zlib.crc32(view).to_bytes(4, "little")
    return hashlib.sha256(view).digest()


def _sendfile_piece(
    dst: int,
    src: int,
    src_off: int,
    dst_off: int,
    length: int,
    progress: Progress | None,
    what: str,
) -> None:
    os.lseek(dst, dst_off, os.SEEK_SET)
    kicked = dst_off
    while length > 0:
        n = os.sendfile(dst, src, src_off, min(length, KICK))
        if n <= 0:
            raise CorruptError(f"{what}: the source ends {length} bytes early")
        src_off, dst_off, length = src_off + n, dst_off + n, length - n
        if progress:
            progress.update(n)
        if dst_off - kicked >= KICK:
            _kick(dst, kicked, dst_off - kicked)
            kicked = dst_off
    _kick(dst, kicked, dst_off - kicked)


def transfer(
    sf: SourceFile,
    dst: int,
    pieces: list[Piece],
    *,
    checksum: bool,
    progress: Progress | None = None,
    algorithm: str = DEFAULT_ALGORITHM,
) -> Checksum | None:
    """Write the source file's bytes into `pieces` of the open destination `dst`; with
    `checksum`, return the source's Checksum, hashed in a thread beside the copy."""
    if checksum:
        check_algorithm(algorithm)
    src = os.open(sf.backing, os.O_RDONLY)
    stop = threading.Event()
    try:
        with contextlib.suppress(OSError):
            os.posix_fadvise(src, sf.offset, sf.size, os.POSIX_FADV_SEQUENTIAL)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="liveos-hash") as ex:
            hashed = ex.submit(hash_source, sf, algorithm, stop) if checksum else None
            try:
                _send(sf, src, dst, pieces, progress)
            except OSError as exc:
                stop.set()
                if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                if progress:  # start again with plain reads and writes
                    progress.update(-progress.done)
                written = _buffered(sf, src, dst, pieces, progress, algorithm)
                return written if checksum else None
            except BaseException:
                stop.set()
                raise
            return hashed.result() if hashed is not None else None
    finally:
        os.close(src)


def _send(
    sf: SourceFile, src: int, dst: int, pieces: list[Piece], progress: Progress | None
) -> None:
    done = 0
    for off, length in pieces:  # the last piece may be longer than the file
        n = min(length, sf.size - done)
        if n <= 0:
            break
        _sendfile_piece(dst, src, sf.offset + done, off, n, progress, sf.path)
        done += n


class _Stopped(Exception):
    """The copy beside the source hash failed: the hash is not wanted."""


def hash_source(sf: SourceFile, algorithm: str, stop: threading.Event | None = None) -> Checksum:
    """The Checksum of the source's bytes, read in SOURCE_READ pieces."""
    h = SegmentHasher(algorithm)
    fd = os.open(sf.backing, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, sf.offset, sf.size, os.POSIX_FADV_SEQUENTIAL)
        buf = memoryview(bytearray(min(SOURCE_READ, max(sf.size, 1))))
        pos, left = sf.offset, sf.size
        while left > 0:
            if stop is not None and stop.is_set():
                raise _Stopped
            n = os.preadv(fd, [buf[: min(left, len(buf))]], pos)
            if n <= 0:
                raise CorruptError(f"{sf.path}: the source ends {left} bytes early")
            h.update(buf[:n])
            pos, left = pos + n, left - n
    finally:
        os.close(fd)
    return h.result()


class Kicker:
    """Start write-back of contiguous written ranges every KICK bytes."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.start = self.end = -1

    def wrote(self, off: int, length: int) -> None:
        if off != self.end:
            self.flush()
            self.start = off
        self.end = off + length
        if self.end - self.start >= KICK:
            self.flush()

    def flush(self) -> None:
        if self.start >= 0 and self.end > self.start:
            _kick(self.fd, self.start, self.end - self.start)
        self.start = self.end


def _ring_hash(
    segs: Iterable[list[Piece]], fill: Callable[[memoryview, list[Piece]], None], algorithm: str
) -> tuple[bytes, ...]:
    """For each segment: fill a ring buffer (fill(buf, seg)) and hash it in the pool,
    keeping RING buffers in flight. Digests in segment order."""
    check_algorithm(algorithm)
    pool = _hash_pool()
    ring = [memoryview(bytearray(SEGMENT)) for _ in range(RING)]
    pending: deque[Future[bytes]] = deque()
    digests: list[bytes] = []
    for i, seg in enumerate(segs):
        if len(pending) == RING:
            digests.append(pending.popleft().result())
        buf = ring[i % RING][: sum(length for _, length in seg)]
        fill(buf, seg)
        pending.append(pool.submit(_digest, buf, algorithm))
    digests.extend(f.result() for f in pending)
    return tuple(digests) or (_digest(b"", algorithm),)


def _buffered(
    sf: SourceFile,
    src: int,
    dst: int,
    pieces: list[Piece],
    progress: Progress | None,
    algorithm: str,
) -> Checksum:
    pos = [sf.offset]
    kicker = Kicker(dst)

    def fill(buf: memoryview, seg: list[Piece]) -> None:
        _pread_full(src, buf, pos[0], sf.path)
        pos[0] += len(buf)
        at = 0
        for off, length in seg:
            _pwrite_full(dst, buf[at : at + length], off)
            kicker.wrote(off, length)
            at += length
        if progress:
            progress.update(len(buf))

    digests = _ring_hash(segments(pieces, sf.size), fill, algorithm)
    kicker.flush()
    return Checksum(sf.size, digests, algorithm=algorithm)


def read_back(
    dst: int,
    pieces: list[Piece],
    size: int,
    what: str,
    progress: Progress | None = None,
    algorithm: str = DEFAULT_ALGORITHM,
) -> Checksum:
    """Hash what the disk holds (write and fsync first). With O_DIRECT where the file or
    device takes it; else drop the (clean, fsynced) range from the page cache first, so
    the bytes come from the device, and read it in segments."""
    check_algorithm(algorithm)
    try:
        direct = os.open(f"/proc/self/fd/{dst}", os.O_RDONLY | os.O_DIRECT)
    except OSError:
        direct = -1
    if direct >= 0:
        try:
            return _direct_read_back(direct, pieces, size, what, progress, algorithm)
        except _NoDirect:
            pass
        finally:
            os.close(direct)
    for off, length in pieces:
        _kick(dst, off, length)

    def fill(buf: memoryview, seg: list[Piece]) -> None:
        at = 0
        for off, length in seg:
            _pread_full(dst, buf[at : at + length], off, what)
            at += length
        if progress:
            progress.update(at)

    return Checksum(size, _ring_hash(segments(pieces, size), fill, algorithm), algorithm=algorithm)


class _NoDirect(Exception):
    """O_DIRECT refused a read (an alignment the device or filesystem does not take)."""


def _direct_reads(pieces: list[Piece], size: int) -> Iterator[tuple[int, int, int, int]]:
    """(aligned start, aligned length, first wanted byte, end of wanted bytes) for each
    O_DIRECT read that covers the first `size` bytes of `pieces`."""
    left = size
    for off, length in pieces:
        length = min(length, left)
        left -= length
        pos, end = off, off + length
        while pos < end:
            start = pos - pos % DIRECT_ALIGN
            stop = min(end, start + DIRECT_READ)
            span = -(-(stop - start) // DIRECT_ALIGN) * DIRECT_ALIGN
            yield start, span, pos, stop
            pos = stop
        if left <= 0:
            break
    if left > 0:
        raise CorruptError(f"the destination holds only {size - left} of {size} bytes")


def _direct_read_back(
    fd: int,
    pieces: list[Piece],
    size: int,
    what: str,
    progress: Progress | None,
    algorithm: str,
) -> Checksum:
    """Read with O_DIRECT into page-aligned buffers, DIRECT_QUEUE reads in flight (an
    O_DIRECT read has no readahead: one at a time leaves the device idle between them),
    while one thread hashes the buffers read, in file order."""
    hasher = SegmentHasher(algorithm)
    maps = [mmap.mmap(-1, DIRECT_READ + DIRECT_ALIGN) for _ in range(RING)]
    views = [memoryview(m) for m in maps]
    reading: deque[tuple[Future[int], memoryview, int, int]] = deque()
    hashing: deque[tuple[int, Future[None]]] = deque()

    def settle() -> None:
        fut, buf, first, stop = reading.popleft()
        try:
            got = fut.result()
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise _NoDirect from exc
            raise
        if got < stop:
            raise CorruptError(f"{what}: ends {stop - got} bytes early")
        hashing.append((n_settled[0], hash_ex.submit(hasher.update, buf[first:stop])))
        n_settled[0] += 1
        if progress:
            progress.update(stop - first)

    n_settled = [0]
    try:
        with (
            ThreadPoolExecutor(DIRECT_QUEUE, thread_name_prefix="liveos-read") as read_ex,
            ThreadPoolExecutor(1, thread_name_prefix="liveos-verify") as hash_ex,
        ):
            for i, (start, span, first, stop) in enumerate(_direct_reads(pieces, size)):
                if len(reading) == DIRECT_QUEUE:
                    settle()
                while hashing and hashing[0][0] <= i - RING:  # buffer i % RING is free
                    hashing.popleft()[1].result()
                buf = views[i % RING]
                fut = read_ex.submit(_pread_some, fd, buf[:span], start, stop - start)
                reading.append((fut, buf, first - start, stop - start))
            while reading:
                settle()
            for _, h in hashing:
                h.result()
    finally:
        reading.clear()
        hashing.clear()
        for v in views:
            v.release()
        for m in maps:
            # a failed read's traceback may still hold a slice: the mmap goes with it
            with contextlib.suppress(BufferError):
                m.close()
    return hasher.result()


def _pread_some(fd: int, view: memoryview, offset: int, need: int) -> int:
    """Read into `view` until at least `need` bytes are in (a file's end may come after
    them) or the file ends; the bytes read."""
    got = 0
    while got < need:
        n = os.preadv(fd, [view[got:]], offset + got)
        if n <= 0:
            break
        got += n
    return got


def source_chunks(
    sf: SourceFile, hasher: SegmentHasher | None, progress: Progress | None
) -> Iterator[bytes]:
    """The small-file path: chunks of the source for mcopy, hashed on the way."""
    with open(sf.backing, "rb", buffering=0) as f:
        f.seek(sf.offset)
        left = sf.size
        while left > 0:
            data = f.read(min(CHUNK, left))
            if not data:
                raise CorruptError(f"{sf.backing}: ends inside {sf.path}")
            if hasher:
                hasher.update(data)
            left -= len(data)
            if progress:
                progress.update(len(data))
            yield data


def checksum_of(chunks: Iterable[bytes], algorithm: str = DEFAULT_ALGORITHM) -> Checksum:
    h = SegmentHasher(algorithm)
    for c in chunks:
        h.update(c)
    return h.result()
