"""The shared "merged root -> new squashfs.img" pipeline of refresh and remix.

    view (merge.MergedView) -> scratch_image -> check_clean -> zero_free_blocks
                            -> make_squashfs(compressor=squashfs_compressor(old))

Each step works on the scratch copy in a work directory, never on the stick. The
root of a used stick was never cleanly unmounted, so a journal replay and preen-level
fixes on the copy are expected; anything more means the overlay needs `repair`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from liveos_tools.errors import CorruptError, NoSpaceError, TargetError, ToolError
from liveos_tools.merge import MergedView
from liveos_tools.units import format_size

Progress = Callable[[int, int], None]
REPAIR_HINT = "run `liveos-overlay repair` on the stick, then try again; nothing was changed"
SCRATCH_PREFIX = "liveos-rebuild-"
#: room kept free in the work directory beyond the image's data (e2fsck, filesystem slack).
SPARE_BYTES = 64 * 1024 * 1024


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def scratch_image(
    view: MergedView, workdir: Path, *, progress: Progress | None = None, name: str = "rootfs.img"
) -> Path:
    """The merged image as workdir/liveos-rebuild-XXXX/LiveOS/<name> (sparse).

    NoSpaceError (exit 6, with the sizes) before anything is written if workdir has
    not room for it. remove_scratch() removes it with its directory.
    """
    if not workdir.is_dir():
        raise TargetError(
            f"the work directory {workdir} does not exist", "create it, or choose another --workdir"
        )
    need = view.data_bytes() + SPARE_BYTES
    free = free_bytes(workdir)
    if free < need:
        raise NoSpaceError(
            f"not enough room in {workdir} for the merged image: {format_size(need)} needed, "
            f"{format_size(free)} free",
            "free space there, or choose another --workdir with room for it",
        )
    try:
        run_dir = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=workdir))
    except OSError as exc:
        raise TargetError(f"{workdir}: cannot write there: {exc.strerror}") from None
    image = run_dir / "LiveOS" / name
    try:
        image.parent.mkdir()
        # Not fsynced: a scratch copy is rebuilt after a crash, never trusted.
        if view.packed_base is not None:
            unpack_merged(view, image, progress=progress)
        else:
            view.write_image(image, progress=progress, fsync=False)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return image


def unpack_merged(view: MergedView, image: Path, *, progress: Progress | None = None) -> None:
    """write_image()'s bytes by the fast road: unsquashfs unpacks the base (sparse, on
    every core, several times faster than reading the loop-mounted file), then
    view.apply_to() writes the overlay's chunks over it. Progress counts the base's
    size, then the overlay's chunks."""
    from liveos_tools.merge import write_error
    from liveos_tools.tools import squashfs

    assert view.packed_base is not None
    packed, inner = view.packed_base
    size, cb = view.size_bytes, view.chunk_bytes
    total = size + sum(1 for c in view.exceptions() if c * cb < size) * cb
    tree = image.parent / ".unpack"
    unpacked = tree / inner.strip("/")
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            job = pool.submit(squashfs.extract, packed, inner, tree)
            while not _finished(job, 0.5):
                if progress is not None:
                    with contextlib.suppress(OSError):
                        progress(min(size, unpacked.stat().st_blocks * 512), total)
            job.result()
        os.rename(unpacked, image)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    fd = os.open(image, os.O_RDWR | os.O_CLOEXEC)
    try:
        meter = None if progress is None else (lambda d, _t: progress(size + d, total))
        view.apply_to(fd, progress=meter)
    except OSError as exc:
        raise write_error(image, exc) from None
    finally:
        os.close(fd)
    if progress is not None:
        progress(total, total)


def _finished(job: concurrent.futures.Future[Path], seconds: float) -> bool:
    done, _ = concurrent.futures.wait([job], timeout=seconds)
    return bool(done)


def remove_scratch(image: Path) -> None:
    """Remove a scratch_image() and the directory it made for it."""
    run_dir = image.parent.parent
    if run_dir.name.startswith(SCRATCH_PREFIX):
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            image.unlink()


def check_clean(image: Path) -> None:
    """e2fsck -f -p on the scratch copy: journal replay and preen fixes are accepted.

    Anything preen will not fix raises CorruptError (exit 10): the overlay needs repair.
    """
    from liveos_tools.tools import e2fsck

    res = e2fsck.check(image, repair=True)
    if res.clean:
        return
    if res.code & (4 | 8) and res.code & (16 | 32 | 128) == 0:
        detail = "; ".join(res.problems(3))
        raise CorruptError(
            f"the root filesystem in the overlay is damaged (e2fsck -p: {res.meaning}"
            + (f": {detail}" if detail else "")
            + ")",
            REPAIR_HINT,
        )
    raise ToolError(["e2fsck", "-f", "-p", str(image)], res.code, res.output)


def zero_free_blocks(image: Path) -> None:
    """Free blocks of the ext image become holes (e2fsck -E discard punches them out of
    an image file), so deleted data is neither shipped nor compressed.

    e2fsck skips the discard in a run that changed the filesystem, so a run that
    corrects something is followed by one more.
    """
    from liveos_tools.tools import e2fsck

    for _ in range(2):
        res = e2fsck.check(image, repair=True, discard=True)
        if res.code == 0:
            return
        if not res.clean:
            break
    raise CorruptError(
        f"e2fsck could not finish on the merged image (exit {res.describe()})", REPAIR_HINT
    )


def squashfs_compressor(squashfs_img: Path) -> str:
    """The compressor named in the image's superblock (gzip, lzma, lzo, xz, lz4, zstd)."""
    from liveos_tools.tools import squashfs

    return squashfs.read_superblock(squashfs_img).compressor


def read_bytes_of(pid: int) -> int | None:
    """How much the process has read so far (rchar of /proc/PID/io), or None."""
    try:
        text = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return None
    return parse_proc_io(text).get("rchar")


def parse_proc_io(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip().isdigit():
            out[key.strip()] = int(value)
    return out


def make_squashfs(
    image: Path,
    dest: Path,
    *,
    compressor: str,
    progress: Progress | None = None,
    block_size: int | None = None,
) -> None:
    """dest = a squashfs holding LiveOS/rootfs.img (dracut's nested layout), fsynced.

    The caller names dest (a temporary name) and renames it into place; a partial
    dest is removed on failure. Progress is how much of the image mksquashfs has read.
    """
    from liveos_tools.tools import mksquashfs

    if compressor not in mksquashfs.WRITABLE_COMPRESSORS:
        from liveos_tools.errors import UsageError

        raise UsageError(
            f"mksquashfs cannot write {compressor}-compressed images",
            f"choose one of {', '.join(mksquashfs.WRITABLE_COMPRESSORS)} (--compress)",
        )
    with contextlib.ExitStack() as stack:
        source = _tree_of(image, dest, stack)
        squash_tree(
            source,
            dest,
            compressor=compressor,
            total=image.stat().st_size,
            progress=progress,
            block_size=block_size,
        )


def squash_tree(
    source: Path,
    dest: Path,
    *,
    compressor: str,
    total: int,
    progress: Progress | None = None,
    block_size: int | None = None,
    keep_owners: bool = False,
) -> None:
    """mksquashfs of the tree `source` into dest, fsynced with its directory; a partial
    dest is removed on any failure. Progress is how much of `total` mksquashfs has read
    (`rchar` in /proc/PID/io: mksquashfs 4.5 has no -percentage)."""
    from liveos_tools.tools import mksquashfs

    watch: Callable[[int], None] | None = None
    if progress is not None:
        report = progress

        def watch(pid: int) -> None:
            done = read_bytes_of(pid)
            if done is not None:
                report(min(done, total), total)

    try:
        mksquashfs.make(
            source,
            dest,
            compressor=compressor,
            block_size=block_size,
            while_running=watch,
            keep_owners=keep_owners,
        )
        _fsync(dest)
        _fsync(dest.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            dest.unlink()
        raise
    if progress is not None:
        progress(total, total)


def _tree_of(image: Path, dest: Path, stack: contextlib.ExitStack) -> Path:
    """A directory holding exactly LiveOS/rootfs.img = image, for mksquashfs.

    scratch_image() already made one. Otherwise a staging tree beside the image gets a
    hard link to it (same filesystem, no copy), removed when the stack closes.
    """
    tree = image.parent.parent
    if (
        image.name == "rootfs.img"
        and image.parent.name == "LiveOS"
        and os.listdir(tree) == ["LiveOS"]
        and os.listdir(image.parent) == ["rootfs.img"]
        and not dest.resolve().is_relative_to(tree.resolve())
    ):
        return tree
    try:
        stage = Path(tempfile.mkdtemp(prefix=".liveos-squash-", dir=image.parent))
        stack.callback(shutil.rmtree, stage, ignore_errors=True)
        (stage / "LiveOS").mkdir()
        os.link(image, stage / "LiveOS" / "rootfs.img")
    except OSError as exc:
        raise TargetError(
            f"cannot stage {image} for mksquashfs: {exc.strerror}",
            "use a work directory on a filesystem with hard links (ext4, xfs, tmpfs)",
        ) from None
    return stage


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
