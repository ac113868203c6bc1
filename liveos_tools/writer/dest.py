"""Writing files into the stick's filesystem.

FAT goes through mtools at a byte offset of the disk or image (the host kernel may
have no vfat); data is streamed to mcopy through a FIFO so it is read from the
source once, hashed on the way, and never staged. ext* filesystems are mounted
through a loop device over their byte range and written with plain file I/O.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol

from liveos_tools.errors import CorruptError, LiveOSError
from liveos_tools.tools import mtools
from liveos_tools.units import format_size
from liveos_tools.writer import copy as copy_mod
from liveos_tools.writer import fatwrite
from liveos_tools.writer.source import SourceFile

#: Files at least this big are written straight into clusters allocated for them.
FAST_MIN = 1 << 20
ZEROS = bytes(8 << 20)


class Dest(Protocol):
    fstype: str

    def mkdir(self, *rels: str) -> None: ...
    def write_file(
        self, rel: str, sf: SourceFile, progress: copy_mod.Progress | None, *, checksum: str | None
    ) -> copy_mod.Checksum | None: ...
    def begin_file(
        self, rel: str, sf: SourceFile, progress: copy_mod.Progress | None, *, checksum: str | None
    ) -> Callable[[], copy_mod.Checksum | None]: ...
    def checksum(
        self,
        rel: str,
        size: int,
        progress: copy_mod.Progress | None = None,
        algorithm: str = copy_mod.DEFAULT_ALGORITHM,
    ) -> copy_mod.Checksum: ...
    def zero_head(self, rel: str, length: int) -> None: ...
    def write_stream(self, rel: str, size: int, chunks: Iterable[bytes]) -> None: ...
    def write_zeros(self, rel: str, size: int) -> None: ...
    def write_bytes(self, rel: str, data: bytes) -> None: ...
    def read_chunks(self, rel: str, size: int) -> Iterator[bytes]: ...
    def read_head(self, rel: str, length: int) -> bytes: ...
    def copy_host_files(self, rel_dir: str, hosts: list[Path]) -> None: ...
    def allocated(self, rel: str) -> int: ...
    def exists(self, rel: str) -> bool: ...
    def remove(self, rel: str) -> None: ...
    def host_path(self, rel: str) -> Path | None: ...
    def private(self, rel: str) -> None: ...
    def sync(self, drop_cache: bool = True) -> None: ...


def verify(
    dest: Dest, rel: str, expected: copy_mod.Checksum, progress: copy_mod.Progress | None = None
) -> None:
    """Read `rel` back from the stick and compare it with the source's checksum."""
    got = dest.checksum(rel, expected.size, progress, expected.algorithm)
    where = expected.first_difference(got)
    if where is not None:
        raise CorruptError(
            f"verification failed: {rel} on the stick differs from the source from byte "
            f"{where} ({format_size(where)}) on",
            "the stick may be failing or fake-sized; try another stick, or check with f3probe",
        )


def fsync_path(path: str, drop_cache: bool = True) -> None:
    """fsync, then (drop_cache) drop the file's cached pages so a read-back comes from the
    disk. Dropping is not free: on a busy machine the kernel's LRU drain behind
    FADV_DONTNEED took 0.6 s for a 1.6 GiB image, 12x the fsync (docs/ARCHITECTURE.md,
    "how the bytes are written")."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        if drop_cache:
            with contextlib.suppress(OSError):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _write_zeros(fd: int, pieces: list[tuple[int, int]]) -> None:
    """Real zeros (a reused stick's old bytes must not look like an overlay header)."""
    kicker = copy_mod.Kicker(fd)
    for off, length in pieces:
        while length > 0:
            n = os.pwrite(fd, memoryview(ZEROS)[: min(length, len(ZEROS))], off)
            kicker.wrote(off, n)
            off, length = off + n, length - n
    kicker.flush()


class FatDest:
    fstype = "vfat"

    def __init__(self, device: str, offset: int, scratch: Path, *, fresh: bool = False) -> None:
        """`fresh`: mkfs.fat made it in this run, so it holds nothing yet and the listing
        (an mdir before the image copy can start) is skipped."""
        self.device = device
        self.offset = offset
        self.scratch = scratch
        self._n = 0
        #: lower-cased paths known to exist (FAT names are case-blind); None: not listed yet
        self._known: set[str] | None = set() if fresh else None

    def _tmp(self, name: str) -> Path:
        self._n += 1
        return self.scratch / f"{self._n}-{name}"

    def mkdir(self, *rels: str) -> None:
        """Make directories and their parents. One listing of the filesystem per run, then
        one mmd for every missing level of all `rels`, instead of an mdir and an mmd per
        level of each."""
        if self._known is None:
            self._known = {p.lower() for p in mtools.listing(self.device, self.offset)}
        missing: list[str] = []
        for rel in rels:
            parts = [p for p in rel.strip("/").split("/") if p and p != "."]
            for i in range(1, len(parts) + 1):
                sub = "/".join(parts[:i])
                if sub.lower() not in self._known and sub not in missing:
                    missing.append(sub)
        if not missing:
            return
        try:
            mtools.make_dirs(self.device, self.offset, missing)
        except LiveOSError:
            # a name the listing spelled otherwise (a short name): the careful way
            self._known = None
            for rel in rels:
                mtools.mmd(self.device, self.offset, rel)
            return
        self._known.update(s.lower() for s in missing)

    def _grow(self, rel: str, size: int) -> list[tuple[int, int]] | None:
        """Make `rel` a file of `size` bytes whose clusters we allocated; where its data
        goes. None when mtools must do it (small files, FAT12)."""
        if size < FAST_MIN:
            return None
        if fatwrite.fat_bits(mtools.read_geometry(self.device, self.offset)) == 12:
            return None
        placeholder = self._tmp("placeholder")
        placeholder.write_bytes(b"\0")
        try:
            mtools.copy_in(self.device, self.offset, placeholder, rel)
        finally:
            placeholder.unlink()
        return fatwrite.grow_placeholder(self.device, self.offset, rel, 1, size)

    def write_file(
        self, rel: str, sf: SourceFile, progress: copy_mod.Progress | None, *, checksum: str | None
    ) -> copy_mod.Checksum | None:
        return self.begin_file(rel, sf, progress, checksum=checksum)()

    def begin_file(
        self, rel: str, sf: SourceFile, progress: copy_mod.Progress | None, *, checksum: str | None
    ) -> Callable[[], copy_mod.Checksum | None]:
        """Create the file and allocate its clusters now; the returned function writes its
        data. It touches only those clusters, so it may run in a thread while mtools goes
        on changing the rest of the filesystem."""
        pieces = self._grow(rel, sf.size)
        if pieces is None:
            hasher = copy_mod.SegmentHasher(checksum) if checksum else None
            self.write_stream(rel, sf.size, copy_mod.source_chunks(sf, hasher, progress))
            done = hasher.result() if hasher else None
            return lambda: done

        def data() -> copy_mod.Checksum | None:
            assert pieces is not None
            fd = os.open(self.device, os.O_WRONLY)
            try:
                return copy_mod.transfer(
                    sf,
                    fd,
                    pieces,
                    checksum=checksum is not None,
                    progress=progress,
                    algorithm=checksum or copy_mod.DEFAULT_ALGORITHM,
                )
            finally:
                os.close(fd)

        return data

    def checksum(
        self,
        rel: str,
        size: int,
        progress: copy_mod.Progress | None = None,
        algorithm: str = copy_mod.DEFAULT_ALGORITHM,
    ) -> copy_mod.Checksum:
        geo = mtools.read_geometry(self.device, self.offset)
        runs = mtools.clusters(self.device, self.offset, rel)
        pieces = fatwrite.data_pieces(geo, self.offset, runs, size)
        fd = os.open(self.device, os.O_RDONLY)
        try:
            return copy_mod.read_back(fd, pieces, size, rel, progress, algorithm)
        finally:
            os.close(fd)

    def zero_head(self, rel: str, length: int) -> None:
        """Zero the first `length` bytes of an existing file, in place."""
        geo = mtools.read_geometry(self.device, self.offset)
        runs = mtools.clusters(self.device, self.offset, rel)
        allocated = sum(b - a + 1 for a, b in runs) * geo.cluster_bytes
        pieces = fatwrite.data_pieces(geo, self.offset, runs, min(length, allocated))
        fd = os.open(self.device, os.O_WRONLY)
        try:
            _write_zeros(fd, pieces)
            os.fsync(fd)
        finally:
            os.close(fd)

    def write_stream(self, rel: str, size: int, chunks: Iterable[bytes]) -> None:
        fifo = self._tmp("fifo")
        os.mkfifo(fifo)
        errors: list[BaseException] = []

        def reader() -> None:
            try:
                mtools.copy_in(self.device, self.offset, fifo, rel)
            except BaseException as exc:  # handed to the writing thread
                errors.append(exc)

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        fd = -1
        try:
            # Open without blocking, so a mcopy that dies before opening cannot hang us.
            while fd < 0:
                try:
                    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                except OSError as exc:
                    if exc.errno != errno.ENXIO or not t.is_alive():
                        if not t.is_alive():
                            break
                        raise
                    time.sleep(0.01)
            if fd >= 0:
                os.set_blocking(fd, True)
                try:
                    for chunk in chunks:
                        view = memoryview(chunk)
                        while view:
                            n = os.write(fd, view)
                            view = view[n:]
                except BrokenPipeError:
                    pass
        finally:
            if fd >= 0:
                os.close(fd)
            t.join()
            fifo.unlink()
        if errors:
            err = errors[0]
            raise err if isinstance(err, LiveOSError) else LiveOSError(str(err))
        if fd < 0:
            raise LiveOSError(f"mcopy never opened its input for {rel}")

    def write_zeros(self, rel: str, size: int) -> None:
        pieces = self._grow(rel, size)
        if pieces is not None:
            fd = os.open(self.device, os.O_WRONLY)
            try:
                _write_zeros(fd, pieces)
            finally:
                os.close(fd)
            return
        # mcopy of a sparse file writes real zeros into allocated clusters.
        src = self._tmp("zeros")
        with open(src, "wb") as f:
            f.truncate(size)
        try:
            mtools.copy_in(self.device, self.offset, src, rel)
        finally:
            src.unlink()

    def write_bytes(self, rel: str, data: bytes) -> None:
        src = self._tmp(os.path.basename(rel))
        src.write_bytes(data)
        try:
            mtools.copy_in(self.device, self.offset, src, rel)
        finally:
            src.unlink()

    def copy_host_file(self, rel: str, host: Path) -> None:
        mtools.copy_in(self.device, self.offset, host, rel)

    def copy_host_files(self, rel_dir: str, hosts: list[Path]) -> None:
        if hosts:
            mtools.copy_many(self.device, self.offset, hosts, rel_dir)

    def read_chunks(self, rel: str, size: int) -> Iterator[bytes]:
        return mtools.read_file(self.device, self.offset, rel, size)

    def read_head(self, rel: str, length: int) -> bytes:
        return mtools.read_head(self.device, self.offset, rel, length)

    def allocated(self, rel: str) -> int:
        return mtools.allocated_bytes(self.device, self.offset, rel)

    def exists(self, rel: str) -> bool:
        return mtools.exists(self.device, self.offset, rel)

    def remove(self, rel: str) -> None:
        if mtools.exists(self.device, self.offset, rel):
            self._known = None
            try:
                mtools.delete(self.device, self.offset, rel)
            except LiveOSError:
                mtools.deltree(self.device, self.offset, rel)

    def host_path(self, rel: str) -> Path | None:
        return None

    def private(self, rel: str) -> None:
        """FAT has no permissions: anyone who can mount the stick can read it."""

    def sync(self, drop_cache: bool = True) -> None:
        """fsync only: copy.read_back reads with O_DIRECT, or drops each range it reads
        itself, so dropping the whole disk's cache here (`drop_cache`) is not needed."""
        fsync_path(self.device, drop_cache=False)


class MountedDest:
    """A mounted ext* (or other kernel-supported) filesystem."""

    def __init__(
        self, root: Path, fstype: str, device: str, backing: tuple[str, int, int] | None = None
    ) -> None:
        self.root = root
        self.fstype = fstype
        self.device = device
        #: (disk or image, offset, length) under the loop device, to drop from the cache
        self.backing = backing

    def _p(self, rel: str) -> Path:
        return self.root / rel.strip("/")

    def mkdir(self, *rels: str) -> None:
        for rel in rels:
            self._p(rel).mkdir(parents=True, exist_ok=True)

    def write_file(
        self, rel: str, sf: SourceFile, progress: copy_mod.Progress | None, *, checksum: str | None
    ) -> copy_mod.Checksum | None:
        return self.begin_file(rel, sf, progress, checksum=checksum)()

    def begin_file(
        self, rel: str, sf: SourceFile, progress: copy_mod.Progress | None, *, checksum: str | None
    ) -> Callable[[], copy_mod.Checksum | None]:
        fd = os.open(self._p(rel), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            if sf.size:
                os.posix_fallocate(fd, 0, sf.size)  # contiguous, and no space = fails now
        except BaseException:
            os.close(fd)
            raise

        def data() -> copy_mod.Checksum | None:
            try:
                return copy_mod.transfer(
                    sf,
                    fd,
                    [(0, sf.size)],
                    checksum=checksum is not None,
                    algorithm=checksum or copy_mod.DEFAULT_ALGORITHM,
                    progress=progress,
                )
            finally:
                os.close(fd)

        return data

    def checksum(
        self,
        rel: str,
        size: int,
        progress: copy_mod.Progress | None = None,
        algorithm: str = copy_mod.DEFAULT_ALGORITHM,
    ) -> copy_mod.Checksum:
        fd = os.open(self._p(rel), os.O_RDONLY)
        try:
            return copy_mod.read_back(fd, [(0, size)], size, rel, progress, algorithm)
        finally:
            os.close(fd)

    def zero_head(self, rel: str, length: int) -> None:
        fd = os.open(self._p(rel), os.O_WRONLY)
        try:
            n = min(length, os.fstat(fd).st_size)
            _write_zeros(fd, [(0, n)])
            os.fsync(fd)
        finally:
            os.close(fd)

    def write_stream(self, rel: str, size: int, chunks: Iterable[bytes]) -> None:
        with open(self._p(rel), "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())

    def write_zeros(self, rel: str, size: int) -> None:
        # 0600 from the start: an overlay holds every changed system file (/etc/shadow too)
        fd = os.open(self._p(rel), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)  # allocated, not sparse
            os.fsync(fd)
        finally:
            os.close(fd)

    def write_bytes(self, rel: str, data: bytes) -> None:
        self._p(rel).write_bytes(data)

    def copy_host_file(self, rel: str, host: Path) -> None:
        import shutil

        shutil.copyfile(host, self._p(rel))

    def copy_host_files(self, rel_dir: str, hosts: list[Path]) -> None:
        for host in hosts:
            self._p(f"{rel_dir}/{host.name}").write_bytes(host.read_bytes())

    def read_chunks(self, rel: str, size: int) -> Iterator[bytes]:
        with open(self._p(rel), "rb") as f:
            with contextlib.suppress(OSError):
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            while chunk := f.read(1 << 22):
                yield chunk

    def read_head(self, rel: str, length: int) -> bytes:
        return b"".join(self.read_chunks(rel, length))[:length]

    def allocated(self, rel: str) -> int:
        return self._p(rel).stat().st_blocks * 512

    def exists(self, rel: str) -> bool:
        return self._p(rel).exists()

    def remove(self, rel: str) -> None:
        p = self._p(rel)
        if p.is_dir():
            import shutil

            shutil.rmtree(p)
        elif p.exists():
            p.unlink()

    def host_path(self, rel: str) -> Path:
        return self._p(rel)

    def private(self, rel: str) -> None:
        """Mode 0600, as the reference tool leaves the overlay, home.img and swap.img."""
        os.chmod(self._p(rel), 0o600)

    def sync(self, drop_cache: bool = True) -> None:
        _syncfs(self.root)
        if self.backing:
            # The loop device writes through the image's page cache: sync it, and drop it
            # too, so a read-back comes from the disk.
            path, offset, length = self.backing
            with contextlib.suppress(OSError):
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                    if drop_cache:
                        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


def _syncfs(root: Path) -> None:
    """syncfs(2) of the filesystem mounted at `root`: only its own dirty data, where
    sync(2) waits for every filesystem's (other users' too). os.syncfs is not in Python
    3.11; sync(2) where libc has no syncfs."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    syncfs = getattr(libc, "syncfs", None)
    if syncfs is None:
        os.sync()
        return
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(root))
    finally:
        os.close(fd)


@contextlib.contextmanager
def mounted_range(device: str, offset: int, length: int, fstype: str) -> Iterator[MountedDest]:
    """Mount the filesystem at [offset, offset+length) of a disk or image, read-write.

    A partition node (offset 0 on a block device) is mounted as it is: extlinux then
    learns the partition's start from it (HDIO_GETGEO), as the boot sector needs."""
    from liveos_tools.tools import losetup
    from liveos_tools.tools import mount as mount_tool

    stack = contextlib.ExitStack()
    with stack:
        if offset == 0 and stat.S_ISBLK(os.stat(device).st_mode):
            dev, backing = device, None
        else:
            # O_DIRECT to the image: the data is not cached twice (the file system's
            # pages and the image's), and the final fsync and the read-back need no
            # second cache to write out or drop
            dev = losetup.attach(device, offset=offset, sizelimit=length, direct_io=True)
            stack.callback(losetup.detach, dev)
            backing = (device, offset, length)
        where = Path(tempfile.mkdtemp(prefix="liveos-stick-"))
        stack.callback(os.rmdir, where)
        mount_tool.mount(dev, where, fstype=fstype, options="rw")
        stack.callback(mount_tool.umount, where)
        yield MountedDest(where, fstype, dev, backing)
