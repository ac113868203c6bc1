"""refresh for OverlayFS-persistence sticks: fold the upper layer into a new image.

The upper layer is `LiveOS/overlay-<LABEL>-<UUID>/` beside `LiveOS/ovlwork/` (an ext4
stick), or an image file of that name holding an ext filesystem with `overlayfs/` and
`ovlwork/` (a vfat stick) (dracut 059 dmsquash-live-root.sh; docs/parts/refresh-overlayfs.md).
The base keeps its layout:

- nested (squashfs.img holding LiveOS/rootfs.img): rootfs.img is copied into the
  workdir (sparse), checked with e2fsck, grown if the upper's data would not fit,
  loop-mounted read-write on the host, the upper applied (liveos_tools/ovlapply.py),
  unmounted, its free blocks zeroed and compressed (liveos_tools/rebuild.py);
- flat (squashfs.img holding the root tree): unsquashfs into the workdir, apply,
  mksquashfs the tree keeping owners and xattrs.

An overlay image is read from a copy in the workdir (its journal replayed there by
e2fsck), never mounted from the stick. The fresh upper layer in NEXT is an empty
directory with an empty ovlwork/ sibling, or a new filesystem image of the same size,
type, label and UUID holding empty overlayfs/ and ovlwork/ (as `reset` makes one).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from liveos_tools import ovlapply, switch
from liveos_tools.errors import InUseError, UsageError
from liveos_tools.media import ImageLayout, Medium, OverlayKind
from liveos_tools.tasks import backup as bk
from liveos_tools.units import format_size

Meter = Callable[[str], Callable[[int, int], None]]
#: room the workdir estimate keeps beyond the data (e2fsck, a grown filesystem's metadata).
WORK_SLACK = 64 * 1024 * 1024


@dataclass(frozen=True)
class Fold:
    """What an OverlayFS refresh reads, and what it needs in the workdir."""

    nested: bool  # squashfs.img holds LiveOS/rootfs.img (else: the root tree, flat)
    image_overlay: bool  # the upper layer is in an image file (else: a directory)
    upper_bytes: int  # the upper layer's data
    base_tree_bytes: int  # the unpacked base: rootfs.img's size, or the flat tree's
    overlay_size: int  # what the fresh overlay takes on the stick

    @property
    def work_bytes(self) -> int:
        """Scratch in the workdir besides the new image: the unpacked base grown by the
        upper's data, and a copy of an overlay image."""
        extra = self.overlay_size if self.image_overlay else 0
        return self.base_tree_bytes + self.upper_bytes + WORK_SLACK + extra


def refuse_dir_in_use(path: Path) -> None:
    """An upper directory mounted as some overlay's upperdir (a running system's)."""
    want = f"upperdir={os.path.realpath(path)}"
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            _, _, tail = line.partition(" - ")
            if tail.startswith("overlay ") and (want + "," in tail + "," or want + " " in tail):
                raise InUseError(
                    f"{path.name} is the upper layer of a mounted overlay; it cannot be replaced",
                    "unmount that overlay (or shut down the system using it) first",
                )


def prepare(medium: Medium, cur: switch.Pair) -> Fold:
    """Check what a refresh of this OverlayFS stick needs (no writes)."""
    image_overlay = medium.overlay_kind is OverlayKind.OVERLAYFS_IMAGE
    if medium.image_layout not in (ImageLayout.NESTED, ImageLayout.FLAT):
        raise UsageError(
            f"the live image on {medium.target} has the {medium.image_layout.value} layout; "
            "refresh rebuilds a squashfs.img (holding LiveOS/rootfs.img or the root tree)",
            "an unreadable squashfs.img is damaged: put a good one back (check unsquashfs)",
        )
    if os.geteuid() != 0:
        from liveos_tools.errors import TargetError

        raise TargetError(
            "refreshing an OverlayFS stick needs root (the images are mounted)", "run with sudo"
        )
    nested = medium.image_layout is ImageLayout.NESTED
    if image_overlay:
        overlay_size = cur.overlay.stat().st_size
        # The image's used blocks bound its upper layer's data.
        from liveos_tools.tools import e2fs

        upper_bytes = e2fs.usage(cur.overlay).used_bytes
    else:
        refuse_dir_in_use(cur.overlay)
        overlay_size = 0
        upper_bytes = ovlapply.check(cur.overlay)
    assert medium.squashfs_path is not None
    if nested:
        from liveos_tools import merge

        with merge.open_base(medium) as rootfs:
            base_bytes = rootfs.stat().st_size
    else:
        from liveos_tools.tools import squashfs

        base_bytes = squashfs.tree_bytes(medium.squashfs_path)
    return Fold(nested, image_overlay, upper_bytes, base_bytes, overlay_size)


# --- building --------------------------------------------------------------------------


@contextlib.contextmanager
def mounted(image: Path, where: Path, *, writable: bool) -> Iterator[Path]:
    """An ext image file of the workdir, loop-mounted (read-only: journal not replayed)."""
    from liveos_tools.tools import losetup
    from liveos_tools.tools import mount as mount_tool

    where.mkdir()
    with contextlib.ExitStack() as stack:
        stack.callback(os.rmdir, where)
        loop = losetup.attach(image, readonly=not writable)
        stack.callback(losetup.detach, loop)
        mount_tool.mount(loop, where, fstype="ext4", options="rw" if writable else None)
        stack.callback(mount_tool.umount, where)
        yield where


def release(scratch: Path) -> None:
    """Unmount what a killed refresh left mounted below its scratch directory, then
    detach the loop devices backed by files there (nothing of the stick's)."""
    if os.geteuid() != 0:
        return
    from liveos_tools import mounts
    from liveos_tools.tools import losetup
    from liveos_tools.tools import mount as mount_tool

    mine = os.path.realpath(scratch) + "/"
    for m in reversed(mounts.mounts()):
        if m.mountpoint.startswith(mine):
            mount_tool.umount(m.mountpoint)
    for dev in losetup.list_devices():
        if dev.back_file and dev.back_file.startswith(mine):
            losetup.detach(dev.name)


@contextlib.contextmanager
def upper_layer(medium: Medium, cur: switch.Pair, scratch: Path, meter: Meter) -> Iterator[Path]:
    """The upper directory to apply: the stick's, or the one inside a checked copy of
    the overlay image."""
    if medium.overlay_kind is not OverlayKind.OVERLAYFS_IMAGE:
        yield cur.overlay
        return
    from liveos_tools import rebuild

    copy = scratch / "overlay.img"
    ovlapply.copy_sparse(cur.overlay, copy, meter("read overlay"))
    try:
        rebuild.check_clean(copy)  # replays the journal of a stick pulled while live
        with mounted(copy, scratch / "overlay", writable=False) as mnt:
            upper = mnt / "overlayfs"
            if not upper.is_dir():
                from liveos_tools.errors import CorruptError

                raise CorruptError(
                    f"the overlay image {cur.overlay.name} has no overlayfs/ directory",
                    "it is not an OverlayFS overlay dracut can use; reset it",
                )
            yield upper
    finally:
        copy.unlink(missing_ok=True)


def build(
    medium: Medium, cur: switch.Pair, fold: Fold, scratch: Path, comp: str, meter: Meter
) -> Path:
    """scratch/squashfs.img: the base with the upper layer applied, in the base's layout."""
    dest = scratch / "squashfs.img"
    with upper_layer(medium, cur, scratch, meter) as upper:
        if fold.nested:
            _build_nested(medium, upper, fold, scratch, dest, comp, meter)
        else:
            _build_flat(medium, upper, scratch, dest, comp, meter)
    return dest


def _build_nested(
    medium: Medium, upper: Path, fold: Fold, scratch: Path, dest: Path, comp: str, meter: Meter
) -> None:
    from liveos_tools import rebuild
    from liveos_tools.tools import squashfs

    assert medium.squashfs_path is not None and medium.rootfs_path is not None
    image = scratch / "tree" / "LiveOS" / "rootfs.img"
    # unsquashfs (sparse, on every core) is faster than reading the mounted image
    got = squashfs.extract(medium.squashfs_path, str(medium.rootfs_path), scratch / "tree")
    if got != image:  # LiveOS/ext3fs.img of old images: the new one has rootfs.img
        os.rename(got, image)
    meter("unpack base")(fold.base_tree_bytes, fold.base_tree_bytes)
    try:
        bk.kill_point("refresh-merged")
        rebuild.check_clean(image)
        _grow_for(image, fold.upper_bytes)
        with mounted(image, scratch / "root", writable=True) as root:
            ovlapply.apply(upper, root, progress=meter("apply"))
            bk.kill_point("refresh-applied")  # a kill leaves this mounted: release()
        rebuild.zero_free_blocks(image)
        rebuild.make_squashfs(image, dest, compressor=comp, progress=meter("compress"))
    finally:
        rebuild.remove_scratch(image)


def _grow_for(image: Path, upper_bytes: int) -> None:
    """Grow the copy of rootfs.img when the upper's data would not fit its free space
    (an OverlayFS upper layer is bounded by the stick, not by the root filesystem)."""
    from liveos_tools.tools import e2fs, resize2fs

    use = e2fs.usage(image)
    free = use.total_bytes - use.used_bytes
    # room for the data plus an eighth for its metadata and directories
    need = upper_bytes + upper_bytes // 8 + 4 * 1024 * 1024
    if free >= need:
        return
    size = use.total_bytes + need - free
    size += -size % (1024 * 1024)
    os.truncate(image, size)
    resize2fs.resize(image, size)


def _build_flat(
    medium: Medium, upper: Path, scratch: Path, dest: Path, comp: str, meter: Meter
) -> None:
    from liveos_tools import rebuild
    from liveos_tools.tools import squashfs

    assert medium.squashfs_path is not None
    tree = scratch / "root"
    bk.kill_point("refresh-merged")
    squashfs.unpack(medium.squashfs_path, tree)
    ovlapply.apply(upper, tree, progress=meter("apply"))
    rebuild.squash_tree(
        tree,
        dest,
        compressor=comp,
        total=switch.tree_size(tree),
        progress=meter("compress"),
        keep_owners=True,
    )


# --- the fresh overlay ------------------------------------------------------------------


def make_fresh(stick: switch.StickFiles, old: switch.Pair, nxt: switch.Pair) -> None:
    """An empty upper layer in NEXT, for the new base (fsynced)."""
    from liveos_tools.bootentries import fsync_dir

    if stick.overlay_dir:
        assert nxt.work is not None
        nxt.overlay.mkdir(0o755)
        nxt.work.mkdir(0o755)
    else:
        from liveos_tools.tasks.reset import remake_image

        st = old.overlay.stat()
        fd = os.open(nxt.overlay, os.O_WRONLY | os.O_CREAT | os.O_EXCL, st.st_mode & 0o777)
        try:
            os.posix_fallocate(fd, 0, st.st_size)
        finally:
            os.close(fd)
        remake_image(nxt.overlay, like=old.overlay)
    fsync_dir(nxt.overlay.parent)


def describe(fold: Fold) -> str:
    what = "rootfs.img" if fold.nested else "the root tree"
    upper = "the overlay image's overlayfs/" if fold.image_overlay else "the overlay directory"
    return (
        (
            "copy the overlay image into the workdir and check it with e2fsck; "
            if fold.image_overlay
            else ""
        )
        + f"unpack {what} of squashfs.img ({format_size(fold.base_tree_bytes)}) into the workdir"
        + (" and check it with e2fsck (grown if the upper does not fit)" if fold.nested else "")
        + f", apply {upper} ({format_size(fold.upper_bytes)}: whiteouts, opaque directories, "
        "files, owners, modes, times, xattrs)"
        + (", zero its free blocks" if fold.nested else "")
        + ", compress it with mksquashfs"
    )
