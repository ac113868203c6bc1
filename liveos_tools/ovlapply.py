"""Apply an OverlayFS upper layer onto a writable copy of its lower layer.

The result is the tree the kernel's overlayfs shows for `lowerdir=L,upperdir=U`
(Documentation/filesystems/overlayfs.rst), written into L itself:

- a whiteout (a character device 0:0, or, on kernels that write them, an empty file
  with the xattr `trusted.overlay.whiteout`) deletes the lower entry of that name;
- an opaque directory (`trusted.overlay.opaque=y`) hides every lower entry below it;
- any other upper entry replaces the lower one: its data, owner, mode, times and
  extended attributes are the upper's, as the kernel shows them after a copy-up;
- a directory that is in both is merged; its own attributes are the upper's.

The kernel's own bookkeeping xattrs (`trusted.overlay.*`, or `user.overlay.*` for an
upper written by a `userxattr` mount) are never copied. Upper layers written with
`redirect_dir` or `metacopy` (a renamed lower directory, a metadata-only copy-up)
name data elsewhere in the lower layer; dracut never turns those features on, and
this module refuses them (TargetError, exit 4) before anything is written.

The walk is streamed (os.scandir, one directory at a time); only the hard links of
the upper layer are remembered, to link their later names to the first one.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from liveos_tools.errors import NoSpaceError, TargetError

_BLOCK = 1024 * 1024
_ZERO = bytes(_BLOCK)
#: features whose upper layer cannot be applied without the lower layer's history.
_REFUSED = ("redirect", "metacopy")
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Counts:
    """What an apply did, for the plan's report and the tests."""

    entries: int
    whiteouts: int
    opaque: int
    data_bytes: int


def prefix_for(userxattr: bool) -> str:
    return "user.overlay." if userxattr else "trusted.overlay."


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM):
            return {}
        raise
    out = {}
    for name in names:
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno != errno.ENODATA:
                raise
    return out


def _is_whiteout(st: os.stat_result, xattrs: dict[str, bytes], prefix: str) -> bool:
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        return True
    # Kernels from 6.7 may write an "xattr whiteout": an empty regular file.
    return stat.S_ISREG(st.st_mode) and st.st_size == 0 and (prefix + "whiteout") in xattrs


def _is_opaque(xattrs: dict[str, bytes], prefix: str) -> bool:
    # "x" marks a directory that merely holds xattr whiteouts: it is not opaque.
    return xattrs.get(prefix + "opaque", b"") == b"y"


def check(upper: Path, *, userxattr: bool = False) -> int:
    """Refuse an upper layer this module cannot apply; return its data bytes (for the
    space check). Reads metadata only."""
    prefix = prefix_for(userxattr)
    if not upper.is_dir():
        raise TargetError(f"{upper} is not a directory", "point at an OverlayFS upper layer")
    total = 0
    for path, st, xattrs in _walk(upper):
        for feature in _REFUSED:
            if prefix + feature in xattrs:
                raise TargetError(
                    f"the OverlayFS upper layer uses {feature} ({prefix}{feature} on "
                    f"{path.relative_to(upper)}): its data lies elsewhere in the lower layer",
                    "dracut never enables redirect_dir or metacopy; copy your files out and "
                    "reset the overlay, or fold it on the system that wrote it",
                )
        if stat.S_ISREG(st.st_mode):
            total += st.st_blocks * 512
    return total


def _walk(top: Path) -> Iterator[tuple[Path, os.stat_result, dict[str, bytes]]]:
    stack = [top]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for entry in it:
                st = entry.stat(follow_symlinks=False)
                yield Path(entry.path), st, _xattrs(entry.path)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(Path(entry.path))


def _remove(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def copy_sparse(src: Path, dst: Path, meter: Progress | None = None) -> int:
    """Copy to the new file dst, all-zero blocks left as holes; return the bytes."""
    total = os.stat(src).st_size
    done = 0
    with open(src, "rb") as fi, open(dst, "xb") as fo:
        while block := fi.read(_BLOCK):
            if block == _ZERO[: len(block)]:
                fo.seek(len(block), os.SEEK_CUR)
            else:
                fo.write(block)
            done += len(block)
            if meter is not None:
                meter(done, total)
        fo.truncate(done)
    return done


def _set_meta(path: Path, st: os.stat_result, xattrs: dict[str, bytes], prefix: str) -> None:
    p = str(path)
    os.chown(p, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        # after chown, which clears set-id bits
        os.chmod(p, stat.S_IMODE(st.st_mode))
    keep = {k: v for k, v in xattrs.items() if not k.startswith(prefix)}
    old = _xattrs(p)
    for name in old:
        if name not in keep:
            os.removexattr(p, name, follow_symlinks=False)
    for name, value in keep.items():
        if old.get(name) != value:
            os.setxattr(p, name, value, follow_symlinks=False)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


class _Applier:
    def __init__(self, target: Path, prefix: str, progress: Progress | None, total: int) -> None:
        self.target = target
        self.prefix = prefix
        self.progress = progress
        self.total = total
        self.links: dict[tuple[int, int], Path] = {}
        self.entries = self.whiteouts = self.opaque = self.data = 0

    def entry(self, src: Path, dst: Path, st: os.stat_result, xattrs: dict[str, bytes]) -> bool:
        """Apply one non-directory upper entry; True if it was a directory (to descend)."""
        self.entries += 1
        mode = st.st_mode
        if _is_whiteout(st, xattrs, self.prefix):
            self.whiteouts += 1
            _remove(dst)
            return False
        if stat.S_ISDIR(mode):
            return True
        _remove(dst)
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in self.links:
            os.link(self.links[key], dst)
            return False
        if stat.S_ISREG(mode):
            self.data += copy_sparse(src, dst)
            if self.progress is not None:
                self.progress(min(self.data, self.total), self.total)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(src), dst)
        else:  # device nodes, fifos and sockets are shown by the kernel as they are
            os.mknod(dst, stat.S_IFMT(mode) | 0o600, st.st_rdev)
        _set_meta(dst, st, xattrs, self.prefix)
        if st.st_nlink > 1:
            self.links[key] = dst
        return False

    def directory(self, src: Path, dst: Path, st: os.stat_result, xattrs: dict[str, bytes]) -> None:
        """Merge the upper directory src into dst, children first, its attributes last."""
        # (upper dir, target dir, its stat, its xattrs, children done?)
        stack: list[tuple[Path, Path, os.stat_result, dict[str, bytes], bool]] = [
            (src, dst, st, xattrs, False)
        ]
        while stack:
            s, d, dst_st, dx, done = stack.pop()
            if done:
                _set_meta(d, dst_st, dx, self.prefix)
                continue
            if os.path.islink(d) or (os.path.lexists(d) and not os.path.isdir(d)):
                _remove(d)
            if _is_opaque(dx, self.prefix) and d != self.target:
                self.opaque += 1
                _remove(d)
            elif _is_opaque(dx, self.prefix):
                self.opaque += 1
                for child in list(d.iterdir()):
                    _remove(child)
            if not os.path.isdir(d):
                os.mkdir(d, 0o700)
            stack.append((s, d, dst_st, dx, True))
            with os.scandir(s) as it:
                for e in it:
                    cst = e.stat(follow_symlinks=False)
                    cx = _xattrs(e.path)
                    cdst = d / e.name
                    if self.entry(Path(e.path), cdst, cst, cx):
                        stack.append((Path(e.path), cdst, cst, cx, False))


def apply(
    upper: Path,
    target: Path,
    *,
    userxattr: bool = False,
    progress: Progress | None = None,
) -> Counts:
    """Apply the upper layer `upper` onto the lower tree `target` (changed in place).

    check() runs first, so a refused layer leaves `target` untouched. ENOSPC while
    writing is a NoSpaceError naming the target.
    """
    total = check(upper, userxattr=userxattr)
    prefix = prefix_for(userxattr)
    work = _Applier(target, prefix, progress, total)
    try:
        work.directory(upper, target, os.lstat(upper), _xattrs(str(upper)))
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise NoSpaceError(
                f"no room left in {target} while the overlay's upper layer was applied to it",
                "give --workdir on a disk with more room",
            ) from None
        raise
    return Counts(work.entries, work.whiteouts, work.opaque, work.data)
