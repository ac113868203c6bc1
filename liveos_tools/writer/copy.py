"""Copy source files onto the stick fast, with checksums, progress and verification.

The data path (measured with scripts/bench-iso-to-disk): every file is written as big
sequential writes into where its bytes live (a file on a mounted filesystem, or the
clusters the FAT writer allocated for it, see dest.py), and write-back to the disk is
started every 64 MiB (posix_fadvise DONTNEED on the range just written: it starts
asynchronous write-back of dirty pages and drops clean ones), so the final fsync finds
little left to do and the page cache does not fill up with 4 sticks' worth of data.

Without verification the bytes never enter this process: os.sendfile copies them in the
kernel. With verification the source is read once into a ring of buffers; each 16 MiB
segment is checksummed by a pool of threads while the same buffer is written.
Verification drops the written range from the page cache after the fsync and reads it
back from the disk, hashing the same segments, so the comparison is a list of
per-segment checksums (a mismatch says which megabytes differ): xxh3 by default (see
ALGORITHMS for why), crc32 or sha256 with `--verify-hash`. The checksum printed for a
file is the sha256 of its segment checksums.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import sys
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TextIO

from liveos_tools.errors import CorruptError
from liveos_tools.units import format_size
from liveos_tools.writer.source import SourceFile

SEGMENT = 16 << 20  # checksum unit and buffer size
KICK = 64 << 20  # start write-back after this many bytes
RING = 4  # buffers in flight per file
CHUNK = 4 << 20  # for the small-file (mcopy) path
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


class SegmentHasher:
    """Incremental: feed bytes in order, get a Checksum."""

    def __init__(self, algorithm: str = DEFAULT_ALGORITHM) -> None:
        check_algorithm(algorithm)
        self.size = 0
        self.algorithm = algorithm
        self._seg = bytearray()
        self._digests: list[bytes] = []

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            n = min(len(view), SEGMENT - len(self._seg))
            self._seg += view[:n]
            self.size += n
            view = view[n:]
            if len(self._seg) == SEGMENT:
                self._digests.append(_digest(self._seg, self.algorithm))
                self._seg = bytearray()

    def result(self) -> Checksum:
        digests = list(self._digests)
        if self._seg or not digests:
            digests.append(_digest(self._seg, self.algorithm))
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
    """Write the source file's bytes into `pieces` of the open destination `dst`."""
    src = os.open(sf.backing, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            os.posix_fadvise(src, sf.offset, sf.size, os.POSIX_FADV_SEQUENTIAL)
        if not checksum:
            try:
                done = 0
                for off, length in pieces:  # the last piece may be longer than the file
                    n = min(length, sf.size - done)
                    if n <= 0:
                        break
                    _sendfile_piece(dst, src, sf.offset + done, off, n, progress, sf.path)
                    done += n
                return None
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                if progress:  # start again with plain reads and writes
                    progress.update(-progress.done)
        return _buffered(sf, src, dst, pieces, progress, algorithm)
    finally:
        os.close(src)


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
    """Hash what the disk holds: drop the (clean, fsynced) range from the page cache
    first so the bytes come from the device, then read it in segments."""
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
