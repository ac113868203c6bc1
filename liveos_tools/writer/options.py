"""What a stick write is asked for, and the records every writer module shares."""

from __future__ import annotations

import secrets
import uuid as uuidlib
from dataclasses import dataclass, field
from enum import Enum

from liveos_tools.units import MiB
from liveos_tools.writer import bootcfg
from liveos_tools.writer.source import SourceFile

FAT_MAX_FILE = 4 * 1024**3 - 1
RESERVE = 100 * MiB  # the reference tool stops if less would remain
FS_OVERHEAD = 0.03
FAT_LABEL_MAX = 11
EXT_LABEL_MAX = 16
FSTYPES = ("vfat", "ext4", "ext3", "ext2")
RESET_BYTES = 64 * 1024  # dracut's rd.live.overlay.reset zeroes this much


@dataclass
class WriteOptions:
    format: bool = False
    format_size: int | None = None
    fstype: str = "ext4"
    blocksize: int | None = None
    reset_mbr: bool = False
    efi: bool = False
    msdos_table: bool = False  # --msdos-table: msdos even with --efi
    noesp: bool = False
    noverify: bool = False
    verify_hash: str = "xxh3"  # the verification's checksum (copy.ALGORITHMS)
    skipcopy: bool = False
    force: bool = False
    label: str | None = None
    livedir: str = "LiveOS"
    skipcompress: bool = False
    overlay: bootcfg.Persistence | None = None  # None: decided from the layout
    overlay_size: int = 0
    reset_overlay: bool = False
    copy_overlay: bool = False
    home_size: int = 0
    home_fstype: str = "ext4"
    home_blocksize: int | None = None
    overlay_fstype: str | None = None  # for an OverlayFS overlay image on vfat
    overlay_blocksize: int | None = None
    copy_home: bool = False
    delete_home: bool = False
    encrypt_home: bool = True
    passphrase: bytes | None = None
    swap_size: int = 0
    extra_args: tuple[str, ...] = ()
    timeout: int | None = None  # None: the ISO's own
    nomenu: bool = False
    nobootmsg: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class StickFs:
    """The filesystem that will hold LiveOS."""

    device: str  # disk/image path or partition node
    offset: int
    length: int
    fstype: str
    label: str
    uuid: str  # as blkid prints it
    new: bool  # made by this plan


@dataclass(frozen=True)
class BootDisk:
    """Writing into an existing filesystem: the disk whose MBR boots it."""

    path: str  # the parent disk of a partition (/dev/sdb for /dev/sdb1), or the image file
    table: str | None  # "msdos", "gpt"; None: no table (the filesystem starts at byte 0)
    number: int | None  # the partition's number in that table
    flags: tuple[str, ...] = ()  # parted's: "boot" (msdos active), "legacy_boot" (GPT)
    mbr_blank: bool = False  # no boot code in its first 440 bytes


def clean_label(text: str | None, fstype: str) -> str:
    """Spaces cannot appear in an overlay name dracut matches: they become '_'."""
    raw = (text or "LIVE").strip().replace(" ", "_")
    limit = FAT_LABEL_MAX if fstype == "vfat" else EXT_LABEL_MAX
    return raw[:limit]


def new_uuid(fstype: str) -> tuple[str, str]:
    """(value for mkfs, UUID as blkid prints it)."""
    if fstype == "vfat":
        vid = secrets.token_hex(4).upper()
        return vid, f"{vid[:4]}-{vid[4:]}"
    u = str(uuidlib.uuid4())
    return u, u


@dataclass(frozen=True)
class Sizes:
    image: int
    boot: int
    overlay: int
    home: int
    swap: int

    @property
    def total(self) -> int:
        return self.image + self.boot + self.overlay + self.home + self.swap


@dataclass
class StickResult:
    target: str
    uuid: str
    label: str
    overlay_name: str | None
    checksums: dict[str, str] = field(default_factory=dict)
    #: bytes of the live image this plan writes and reads back (for the overall progress)
    copy_bytes: int = 0


def overlay_rel(livedir: str, label: str, uuid: str) -> str:
    return f"{livedir}/overlay-{label}-{uuid}"


class OverlayAction(Enum):
    NONE = "none"
    NEW = "new"  # made empty (zeros, an OverlayFS image or directory)
    COPY = "copy"  # the source stick's overlay, renamed for this stick
    RESET = "reset"  # the stick's own, its first 64 KiB zeroed
    KEEP = "keep"  # the stick's own, as it is


@dataclass(frozen=True)
class OverlaySpec:
    persistence: bootcfg.Persistence
    action: OverlayAction
    rel: str | None  # LiveOS/overlay-<LABEL>-<UUID>
    size: int  # bytes of the file (0 for an OverlayFS directory)
    source: SourceFile | None = None  # COPY
    fstype: str = "ext4"  # an OverlayFS overlay image on vfat
    blocksize: int | None = None


class HomeAction(Enum):
    NONE = "none"
    KEEP = "keep"  # the reference tool keeps home.img unless --delete-home
    CREATE = "create"
    REPLACE = "replace"  # --delete-home
    COPY = "copy"  # --copy-home


@dataclass(frozen=True)
class HomeSpec:
    action: HomeAction
    rel: str
    size: int = 0
    fstype: str = "ext4"
    blocksize: int | None = None
    encrypt: bool = True
    passphrase: bytes | None = field(default=None, repr=False)
    source: SourceFile | None = None  # COPY
