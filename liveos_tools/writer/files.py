"""What the steps do to the stick besides copying: the disk's boot code and flags, the
boot sector's hidden sectors, relabelling, and the persistence files (overlay image,
home.img, swap.img) made on the host and put on the stick."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from liveos_tools.errors import TargetError
from liveos_tools.writer import copy
from liveos_tools.writer.dest import Dest, FatDest, fsync_path
from liveos_tools.writer.options import HomeSpec, StickFs
from liveos_tools.writer.source import SourceFile


def create_image(path: str, size: int) -> None:
    """A new file, or an empty one (never one that holds anything)."""
    with open(path, "ab") as f:
        if f.tell():
            raise TargetError(f"{path} is no longer empty", "run again")
        f.truncate(size)


def write_mbr(path: str, code: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, code, 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def set_active(path: str, number: int) -> None:
    """msdos table: partition `number` (1-4) active (0x80), the other primaries not."""
    fd = os.open(path, os.O_RDWR)
    try:
        sector = bytearray(os.pread(fd, 512, 0))
        if sector[510:512] != b"\x55\xaa" or sector[446 + 16 * (number - 1) + 4] == 0:
            raise TargetError(f"{path}: partition {number} is not in its msdos table")
        for i in range(4):
            if sector[446 + 16 * i + 4]:  # a used entry
                sector[446 + 16 * i] = 0x80 if i == number - 1 else 0x00
        os.pwrite(fd, bytes(sector[446:510]), 446)
        os.fsync(fd)
    finally:
        os.close(fd)


def set_hidden(device: str, offset: int, sector: int) -> None:
    """Set the VBR's hidden sectors (the partition's start) where it differs."""
    from liveos_tools.writer import bootsector

    fd = os.open(device, os.O_RDWR)
    try:
        vbr = os.pread(fd, 512, offset)
        if bootsector.hidden_sectors(vbr) != sector:
            os.pwrite(fd, bootsector.with_hidden(vbr, sector), offset)
            os.fsync(fd)
    finally:
        os.close(fd)


def relabel(fs: StickFs, label: str) -> None:
    """fatlabel/e2label on a partition node; inside a disk image (an offset) mlabel, or
    e2label's `?offset=`. The label blkid then reads must be the one the overlay is named
    after, else dracut would not find the overlay: checked."""
    from liveos_tools.tools import blkid, e2label, fatlabel, mtools

    if fs.fstype == "vfat" and fs.offset:
        mtools.label(fs.device, fs.offset, label)
    elif fs.fstype == "vfat":
        fatlabel.set_label(fs.device, label)
    else:
        e2label.set_label(fs.device, label, offset=fs.offset)
    got = blkid.probe(fs.device, offset=fs.offset).get("LABEL", "")
    if got != label:
        raise TargetError(
            f"relabelling gave the label {got!r}, not {label!r}: the overlay would not be "
            "found by dracut (nothing else was written)",
            "give an upper-case label without spaces with --label",
        )


def nested_rootfs_size(backing: str, offset: int) -> int | None:
    from liveos_tools.tools import squashfs

    return squashfs.file_size(backing, "LiveOS/rootfs.img", offset=offset)


def extract_rootfs(backing: str, offset: int, scratch: Path) -> Path:
    from liveos_tools.tools import squashfs

    return squashfs.extract(backing, "LiveOS/rootfs.img", scratch / "unpacked", offset=offset)


def overlayfs_image(
    d: Dest, rel: str, size: int, scratch: Path, fstype: str = "ext4", blocksize: int | None = None
) -> None:
    """On vfat, OverlayFS persistence is a filesystem image (ext4 unless
    --overlay-size-mb N,FSTYPE,BLKSZ says otherwise) holding overlayfs/ and ovlwork/."""
    from liveos_tools.tools import mkfs

    tree = scratch / "ovl-tree"
    (tree / "overlayfs").mkdir(parents=True, exist_ok=True)
    (tree / "ovlwork").mkdir(exist_ok=True)
    img = scratch / "ovl.img"
    mkfs.make_ext(img, fstype=fstype, populate=tree, blocksize=blocksize, size=size)
    put_file(d, rel, img)
    img.unlink()


def put_file(d: Dest, rel: str, host: Path) -> None:
    if isinstance(d, FatDest):
        d.remove(rel)
        d.write_file(rel, SourceFile(rel, host.stat().st_size, str(host), 0), None, checksum=None)
    else:
        hp = d.host_path(rel)
        assert hp is not None
        import shutil

        shutil.copyfile(host, hp)


def make_home(d: Dest, home: HomeSpec, scratch: Path) -> None:
    """A new home.img through the home.img library (made on the host for FAT)."""
    from liveos_tools.tasks import home as home_lib

    hp = d.host_path(home.rel)
    where = hp if hp is not None else scratch / "home.img"
    if hp is not None and hp.exists():
        hp.unlink()
    p = home_lib.plan_create(
        where,
        size=home.size,
        fstype=home.fstype,
        encrypt=home.encrypt,
        passphrase=home.passphrase,
        delete_existing=True,
    )
    p.execute()
    if home.blocksize and not home.encrypt:
        # home.plan_create has no block size: make the (still empty) filesystem again
        from liveos_tools.tools import mkfs

        mkfs.make_ext(
            where, fstype=home.fstype, label=home_lib.HOME_LABEL, blocksize=home.blocksize
        )
    if hp is None:
        d.remove(home.rel)
        put_file(d, home.rel, where)
        where.unlink()
    d.private(home.rel)


def copy_home(
    d: Dest,
    rel: str,
    sf: SourceFile,
    record: Callable[[Dest, str, copy.Checksum | None], None],
    checksum: str | None,
    progress: copy.Progress | None = None,
) -> None:
    """Copy the source's home.img (a stick's file, or a byte range of an ISO) with the
    run's checksum, which the final pass verifies.

    On a mounted filesystem it is written under a temporary name made 0600 before the
    first byte, fsynced, then renamed: an interrupted copy never leaves a truncated
    home.img that the live system would mount. The old one is removed first (the space
    check counts it freed before the new one is written)."""
    d.remove(rel)
    hp = d.host_path(rel)
    if hp is None:  # FAT has no modes
        record(d, rel, d.write_file(rel, sf, progress, checksum=checksum))
        return
    from liveos_tools.tasks.home import partial_name

    tmp = partial_name(hp)
    tmp.unlink(missing_ok=True)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    os.chmod(tmp, 0o600)  # whatever the umask
    tmp_rel = str(Path(rel).parent / tmp.name)
    written = d.write_file(tmp_rel, sf, progress, checksum=checksum)
    fsync_path(str(tmp))
    os.rename(tmp, hp)
    fsync_path(str(hp.parent))
    record(d, rel, written)


def make_swap(d: Dest, rel: str, size: int, scratch: Path) -> None:
    from liveos_tools.tasks import swap

    hp = d.host_path(rel)
    where = hp if hp is not None else scratch / "swap.img"
    p = swap.plan_create(where, size)
    p.execute()
    if hp is None:
        put_file(d, rel, where)
        where.unlink()
    d.private(rel)
