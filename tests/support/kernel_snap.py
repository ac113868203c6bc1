"""Drive real dm-snapshot devices (inside the guest kernel) through the project's tool layer.

Used by the guest tests and by scripts/make-cow-fixtures, so the checked-in
fixtures and the tests come from the same code path. Everything made here is torn
down in reverse order, also when a step fails.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from liveos_tools.tools import dmsetup, losetup

MiB = 1024 * 1024


def make_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


@dataclass
class Snap:
    """A snapshot over loop-attached base and COW files."""

    name: str
    base: Path
    cow: Path
    chunk: int = 8
    overflow: bool = True
    base_loop: str = ""
    cow_loop: str = ""
    node: str = ""
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def table_line(self) -> str:
        sectors = os.path.getsize(self.base) // 512
        return dmsetup.snapshot_table_line(
            sectors, self.base_loop, self.cow_loop, chunk_sectors=self.chunk, overflow=self.overflow
        )

    def activate(self) -> Snap:
        self.base_loop = losetup.attach(self.base)
        self._stack.callback(losetup.detach, self.base_loop)
        self.cow_loop = losetup.attach(self.cow)
        self._stack.callback(losetup.detach, self.cow_loop)
        info = dmsetup.create(self.name, self.table_line())
        self._stack.callback(dmsetup.remove, self.name)
        self.node = info.node
        if not stat.S_ISBLK(os.stat(self.node).st_mode):
            raise AssertionError(f"{self.node} is not a block device")
        return self

    def status_params(self) -> str:
        (line,) = dmsetup.status(self.name)
        return line.params

    def status_line(self) -> str:
        (line,) = dmsetup.status(self.name)
        return f"{line.start} {line.length} {line.target} {line.params}"

    def write_chunks(self, first: int, count: int, *, byte: int = 0x5A) -> int:
        """Write `count` origin chunks starting at chunk `first`; return how many got in.

        Each write to a new origin chunk makes the kernel allocate one exception.
        Stops at the first I/O error (an overflowed or invalid snapshot).
        """
        size = self.chunk * 512
        block = bytes([byte]) * size
        done = 0
        fd = os.open(self.node, os.O_WRONLY | os.O_SYNC)
        try:
            for i in range(count):
                try:
                    os.pwrite(fd, block, (first + i) * size)
                except OSError as exc:
                    if exc.errno in (errno.EIO, errno.ENOSPC):
                        break
                    raise
                done += 1
            with contextlib.suppress(OSError):
                os.fsync(fd)
        finally:
            os.close(fd)
        return done

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> Snap:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def snapshot(
    name: str, base: Path, cow: Path, *, chunk: int = 8, overflow: bool = True
) -> Iterator[Snap]:
    snap = Snap(name, base, cow, chunk, overflow)
    with snap:
        yield snap


def reactivated_status(name: str, base: Path, cow: Path, chunk: int = 8) -> str:
    """The kernel's reading of the store as it lies on disk: activate, read status, remove."""
    with snapshot(name, base, cow, chunk=chunk) as snap:
        return snap.status_params()
