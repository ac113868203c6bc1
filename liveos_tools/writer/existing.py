"""An existing (unmounted) stick filesystem, read without mounting it, and the persistence
files a source stick offers (--copy-overlay, --copy-home)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from liveos_tools.errors import CorruptError, TargetError, UsageError
from liveos_tools.media import HomeKind
from liveos_tools.writer import copy
from liveos_tools.writer.dest import FatDest
from liveos_tools.writer.layout import Layout
from liveos_tools.writer.options import StickFs, WriteOptions
from liveos_tools.writer.source import Source, SourceFile


def _ext_where(fs: StickFs) -> str:
    return f"{fs.device}?offset={fs.offset}" if fs.offset else fs.device


def fs_has(fs: StickFs, rel: str) -> bool:
    """Does the (unmounted) filesystem hold `rel`? mtools for FAT, debugfs for ext*."""
    from liveos_tools.tools import debugfs, mtools

    if fs.fstype == "vfat":
        return mtools.exists(fs.device, fs.offset, rel)
    return debugfs.stat(_ext_where(fs), rel) is not None


def ext_pieces(fs: StickFs, rel: str) -> tuple[int, list[tuple[int, int]]]:
    """(size, absolute byte ranges in file order) of a file on an unmounted ext*
    filesystem, from debugfs's `stat` and `blocks` (read-only, no journal replay)."""
    import struct

    from liveos_tools.tools import debugfs

    size = debugfs.parse_stat_size(debugfs.stat(_ext_where(fs), rel) or "")
    if size is None:
        raise TargetError(f"{rel}: debugfs shows no size for it")
    blocks = debugfs.blocks(_ext_where(fs), rel)
    with open(fs.device, "rb") as f:
        f.seek(fs.offset + 1024 + 24)
        bs = 1024 << struct.unpack("<I", f.read(4))[0]
    pieces: list[tuple[int, int]] = []
    for b in blocks:
        off = fs.offset + b * bs
        if pieces and pieces[-1][0] + pieces[-1][1] == off:
            pieces[-1] = (pieces[-1][0], pieces[-1][1] + bs)
        else:
            pieces.append((off, bs))
    return size, pieces


def free_bytes(fs: StickFs) -> tuple[int, int]:
    """(free bytes, allocation unit) of an unmounted filesystem: FAT from its first FAT
    copy, ext* from its superblock (dumpe2fs -h)."""
    if fs.fstype == "vfat":
        from liveos_tools.writer import fatwrite

        return fatwrite.free_bytes(fs.device, fs.offset)
    from liveos_tools.tools import e2fs

    where = f"{fs.device}?offset={fs.offset}" if fs.offset else fs.device
    u = e2fs.usage(where)
    return u.free_blocks * u.block_size, u.block_size


def existing_bytes(fs: StickFs, rel: str) -> int:
    """What `rel` occupies on the unmounted filesystem now (0 when it is not there)."""
    from liveos_tools.tools import mtools

    if not fs_has(fs, rel):
        return 0
    if fs.fstype == "vfat":
        return mtools.allocated_bytes(fs.device, fs.offset, rel)
    return sum(n for _, n in ext_pieces(fs, rel)[1])


def _stick_source(src: Source, what: str) -> None:
    from liveos_tools.writer.source import SourceKind

    if src.kind is SourceKind.ISO:
        raise UsageError(
            f"{what}: an ISO image has no {what.split('-')[-1]} to copy",
            "give a stick as SOURCE: `live`, its device, or its mounted directory",
        )


def source_overlay(src: Source, layout: Layout) -> SourceFile:
    """The source stick's overlay file (overlay-<LABEL>-<UUID> in its LiveOS directory)."""
    _stick_source(src, "--copy-overlay")
    prefix = f"/{layout.livedir}/overlay-".lower()
    found = sorted((p for p in src.files if p.lower().startswith(prefix)), key=str.lower)
    if len(found) > 1 and src.label:
        mine = [p for p in found if p.lower().startswith(f"{prefix}{src.label.lower()}-")]
        found = mine or found
    if not found:
        raise TargetError(
            f"--copy-overlay: {src.origin} has no overlay file in /{layout.livedir}",
            "drop --copy-overlay to make a new overlay",
        )
    if len(found) > 1:
        raise TargetError(
            f"--copy-overlay: {src.origin} has several overlays: " + ", ".join(found),
            "remove the stale ones first",
        )
    return src.files[found[0]]


def source_home(src: Source, layout: Layout) -> SourceFile:
    """The source's home.img: a stick's, or the one `liveos-overlay remix --clone` put
    into an ISO (LiveOS/home.img), as livecd-iso-to-disk takes either."""
    sf = src.get(f"/{layout.livedir}/home.img")
    if sf is None:
        raise TargetError(
            f"--copy-home: {src.origin} has no /{layout.livedir}/home.img",
            "drop --copy-home, or make a new one with --home-size-mb N (an ISO "
            "carries one when made by `liveos-overlay remix --clone`)",
        )
    if sf.size == 0:
        raise CorruptError(
            f"--copy-home: {src.origin}'s /{layout.livedir}/home.img is empty",
            "drop --copy-home, or make a new one with --home-size-mb N",
        )
    if not packed(src, sf):
        # A stick's home.img may be open (mounted, dm-crypt); inside an ISO it is read-only.
        from liveos_tools.tasks import home

        home.ensure_not_in_use(Path(sf.backing))
    return sf


def packed(src: Source, sf: SourceFile) -> bool:
    """Is the file a byte range of the source itself (an ISO image or device), rather
    than a file of its own in a mounted filesystem?"""
    return sf.backing == src.origin


def home_kind(sf: SourceFile) -> HomeKind:
    """LUKS or PLAIN (a filesystem), read from the source's bytes; a home.img that is
    neither is refused (exit 10) before anything is written."""
    from liveos_tools.media import HEAD_BYTES, kind_of_head

    try:
        with open(sf.backing, "rb") as f:
            f.seek(sf.offset)
            head = f.read(min(HEAD_BYTES, sf.size))
    except OSError as exc:
        raise TargetError(
            f"--copy-home: cannot read {sf.path} of {sf.backing}: {exc.strerror}"
        ) from None
    kind = kind_of_head(head)
    if kind is HomeKind.UNKNOWN:
        # not ext: another filesystem the reference tool can make (btrfs, xfs)?
        from liveos_tools.tools import blkid

        found = blkid.probe(sf.backing, offset=sf.offset or None)
        if found.get("TYPE") == "crypto_LUKS":
            return HomeKind.LUKS
        if found.get("USAGE") == "filesystem":
            return HomeKind.PLAIN
        raise CorruptError(
            f"--copy-home: the source's {sf.path} is neither a LUKS container nor a filesystem",
            "is the source damaged? drop --copy-home, or make a new one with --home-size-mb N",
        )
    return kind


def check_same_base(src: Source, layout: Layout, opts: WriteOptions, fs: StickFs | None) -> str:
    """An overlay only means something on top of the image it was made over: refused
    unless it is; returns the note that says why it is."""
    if not opts.skipcopy:
        return (
            "--copy-overlay: the overlay goes with the very image it was made "
            f"over ({layout.image}, copied from the same source)"
        )
    image_sf = src.get(layout.image)
    assert image_sf is not None
    hint = "drop --skipcopy so the source's image is copied with its overlay"
    rel = f"{opts.livedir}/{Path(layout.image).name}"
    if fs is None:
        raise UsageError("--copy-overlay with --skipcopy needs a stick with an image", hint)
    from liveos_tools.tools import mtools

    if not fs_has(fs, rel):
        raise TargetError(f"--copy-overlay: the stick has no {rel} for the overlay", hint)
    mine: copy.Checksum | None = None
    if fs.fstype == "vfat":
        same_size = mtools.allocated_bytes(fs.device, fs.offset, rel) >= image_sf.size
        with tempfile.TemporaryDirectory(prefix="liveos-cmp-") as tmp:
            mine = FatDest(fs.device, fs.offset, Path(tmp)).checksum(rel, image_sf.size)
    else:
        size, pieces = ext_pieces(fs, rel)
        same_size = size == image_sf.size
        if same_size and sum(n for _, n in pieces) < size:
            raise UsageError(
                f"--copy-overlay: the stick's {rel} is sparse, so it cannot be "
                "compared with the source's image here",
                hint,
            )
        fd = os.open(fs.device, os.O_RDONLY)
        try:
            mine = copy.read_back(fd, pieces, size, rel) if same_size else None
        finally:
            os.close(fd)
    theirs = copy.checksum_of(copy.source_chunks(image_sf, None, None))
    same = same_size and mine is not None and mine.first_difference(theirs) is None
    if not same:
        raise UsageError(
            f"--copy-overlay: the stick's {rel} is not the image the source's overlay was "
            f"made over (checksums differ): the overlay would corrupt the root filesystem",
            hint,
        )
    return f"--copy-overlay: the stick's {rel} has the same checksum as the source's {layout.image}"


def home_notes(src: Source, layout: Layout, copy_home: SourceFile | None) -> list[str]:
    """What the plan says about the source's home.img: that a LUKS one keeps its
    passphrase in every copy, or that an ISO carries one not asked for."""
    if copy_home is None:
        sf = src.get(f"/{layout.livedir}/home.img")
        if sf is not None and packed(src, sf):
            # livecd-iso-to-disk copies it unasked (and asks later to delete the stick's);
            # here nothing goes on the stick that was not asked for
            return [
                f"{src.origin} carries /{layout.livedir}/home.img (an ISO made by "
                "`liveos-overlay remix --clone`): add --copy-home to put it on the stick"
            ]
        return []
    if home_kind(copy_home) is HomeKind.LUKS:
        return [
            f"--copy-home: {copy_home.path} is encrypted (LUKS) and is copied as it is: "
            "every stick made from this source opens with the same passphrase, and all "
            "share one master key (`cryptsetup luksChangeKey` changes only the passphrase)"
        ]
    return []
