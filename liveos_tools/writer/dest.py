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
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from liveos_tools.errors import LiveOSError
from liveos_tools.run import run
from liveos_tools.tools import mtools


class Dest(Protocol):
    fstype: str

    def mkdir(self, rel: str) -> None: ...
    def write_stream(self, rel: str, size: int, chunks: Iterable[bytes]) -> None: ...
    def write_zeros(self, rel: str, size: int) -> None: ...
    def write_bytes(self, rel: str, data: bytes) -> None: ...
    def read_chunks(self, rel: str, size: int) -> Iterator[bytes]: ...
    def allocated(self, rel: str) -> int: ...
    def exists(self, rel: str) -> bool: ...
    def remove(self, rel: str) -> None: ...
    def host_path(self, rel: str) -> Path | None: ...
    def sync(self) -> None: ...


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


class FatDest:
    fstype = "vfat"

    def __init__(self, device: str, offset: int, scratch: Path) -> None:
        self.device = device
        self.offset = offset
        self.scratch = scratch
        self._n = 0

    def _tmp(self, name: str) -> Path:
        self._n += 1
        return self.scratch / f"{self._n}-{name}"

    def mkdir(self, rel: str) -> None:
        mtools.mmd(self.device, self.offset, rel)

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

    def read_chunks(self, rel: str, size: int) -> Iterator[bytes]:
        return mtools.read_file(self.device, self.offset, rel, size)

    def allocated(self, rel: str) -> int:
        return mtools.allocated_bytes(self.device, self.offset, rel)

    def exists(self, rel: str) -> bool:
        return mtools.exists(self.device, self.offset, rel)

    def remove(self, rel: str) -> None:
        if mtools.exists(self.device, self.offset, rel):
            try:
                mtools.delete(self.device, self.offset, rel)
            except LiveOSError:
                mtools.deltree(self.device, self.offset, rel)

    def host_path(self, rel: str) -> Path | None:
        return None

    def sync(self) -> None:
        _fsync_path(self.device)


class MountedDest:
    """A mounted ext* (or other kernel-supported) filesystem."""

    def __init__(self, root: Path, fstype: str, device: str) -> None:
        self.root = root
        self.fstype = fstype
        self.device = device

    def _p(self, rel: str) -> Path:
        return self.root / rel.strip("/")

    def mkdir(self, rel: str) -> None:
        self._p(rel).mkdir(parents=True, exist_ok=True)

    def write_stream(self, rel: str, size: int, chunks: Iterable[bytes]) -> None:
        with open(self._p(rel), "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())

    def write_zeros(self, rel: str, size: int) -> None:
        with open(self._p(rel), "wb") as f:
            os.posix_fallocate(f.fileno(), 0, size)  # allocated, not sparse
            os.fsync(f.fileno())

    def write_bytes(self, rel: str, data: bytes) -> None:
        self._p(rel).write_bytes(data)

    def copy_host_file(self, rel: str, host: Path) -> None:
        import shutil

        shutil.copyfile(host, self._p(rel))

    def read_chunks(self, rel: str, size: int) -> Iterator[bytes]:
        with open(self._p(rel), "rb") as f:
            with contextlib.suppress(OSError):
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            while chunk := f.read(1 << 22):
                yield chunk

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

    def sync(self) -> None:
        # os.syncfs is not in Python 3.11; sync(2) covers this filesystem too.
        os.sync()


@contextlib.contextmanager
def mounted_range(
    device: str, offset: int, length: int, fstype: str
) -> Iterator[MountedDest]:
    """Mount the filesystem at [offset, offset+length) of a disk or image, read-write."""
    from liveos_tools.tools import mount as mount_tool

    argv = ["losetup", "--find", "--show"]
    if offset or length:
        argv += ["--offset", str(offset), "--sizelimit", str(length)]
    loop = run([*argv, device]).stdout.strip()
    try:
        where = Path(tempfile.mkdtemp(prefix="liveos-stick-"))
        try:
            mount_tool.mount(loop, where, fstype=fstype, options="rw")
            try:
                yield MountedDest(where, fstype, loop)
            finally:
                mount_tool.umount(where)
        finally:
            os.rmdir(where)
    finally:
        run(["losetup", "--detach", loop], check=False)
