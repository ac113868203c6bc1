"""Find a LiveOS medium from whatever the user points at, and say what it holds.

TARGET may be nothing (the running live system), a mounted stick's directory, a
block device or partition, a disk image file, or an overlay file itself. Devices
and images are attached and mounted read-only for as long as the `open_medium()`
context lasts, and always released afterwards.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterator, Mapping
from enum import Enum
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, NamedTuple

from liveos_tools import mounts
from liveos_tools.errors import InUseError, LiveOSError, TargetError
from liveos_tools.which import which

if TYPE_CHECKING:
    from liveos_tools.tasks.leftovers import Recorder
    from liveos_tools.tools.losetup import LoopDevice

LIVE_ROOT = Path("/run/initramfs/live")
DEFAULT_LIVEDIR = "LiveOS"
LIVE_RW = "live-rw"
EXT_MAGIC_OFFSET = 1080  # superblock at 1024, s_magic at +56
EXT_MAGIC = b"\x53\xef"
SNAP_MAGIC = b"SnAp"
LUKS_MAGIC = b"LUKS\xba\xbe"  # LUKS1 and LUKS2 both start so
#: how much of a file kind_of_head() needs to see.
HEAD_BYTES = EXT_MAGIC_OFFSET + 2


#: an EFI system partition's type, as blkid -p prints PART_ENTRY_TYPE (msdos, GPT)
ESP_PART_TYPES = ("0xef", "c12a7328-f81f-11d2-ba4b-00a0c93ec93b")

#: Mount points this process makes for a moment (read-only, writable).
TEMP_MOUNT_PREFIXES = ("liveos-ro-", "liveos-rw-")


class Source(Enum):
    LIVE = "live"
    DIRECTORY = "directory"
    DEVICE = "device"
    IMAGE = "image"
    OVERLAY_FILE = "overlay-file"


class OverlayKind(Enum):
    DM = "dm-snapshot"
    OVERLAYFS_DIR = "overlayfs-dir"
    OVERLAYFS_IMAGE = "overlayfs-image"
    NONE = "none"


class ImageLayout(Enum):
    NESTED = "nested"  # squashfs.img holding LiveOS/rootfs.img (or ext3fs.img)
    FLAT = "flat"  # squashfs.img holding the root tree itself
    UNCOMPRESSED = "uncompressed"  # LiveOS/rootfs.img on the stick (--skipcompress)
    NONE = "none"
    UNKNOWN = "unknown"  # squashfs.img present, but unsquashfs is missing or cannot read it


class HomeKind(Enum):
    PLAIN = "plain"
    LUKS = "luks"
    ABSENT = "absent"
    UNKNOWN = "unknown"


#: Records here are NamedTuples, not dataclasses: `liveos-overlay status` must start
#: fast, and importing dataclasses (with inspect) costs more than the rest of the path.
_NO_ARGS: Mapping[str, str] = MappingProxyType({})


class Volume(NamedTuple):
    """The filesystem that holds the LiveOS directory, as blkid names it."""

    device: str | None
    label: str | None
    uuid: str | None
    fstype: str | None

    def overlay_name(self) -> str | None:
        """dracut's default overlay name for this volume: overlay-<LABEL>-<UUID>."""
        if self.label is None or self.uuid is None:
            return None
        return f"overlay-{self.label}-{self.uuid}"


class Medium(NamedTuple):
    source: Source
    target: str
    root: Path | None
    livedir: str
    volume: Volume | None
    overlay_path: Path | None
    overlay_kind: OverlayKind
    image_layout: ImageLayout
    squashfs_path: Path | None
    rootfs_path: Path | None
    home_path: Path | None
    home_kind: HomeKind
    swap_path: Path | None
    other_overlays: tuple[Path, ...] = ()
    live_dm: str | None = None  # the dm device of a running live system
    boot_args: Mapping[str, str] = _NO_ARGS
    #: an image or device this process mounted read-only to look at (writing commands
    #: plan on it, then open it again writable): its read-only mount is not the stick's.
    opened_readonly: bool = False

    @property
    def livedir_path(self) -> Path | None:
        return self.root / self.livedir if self.root else None

    def shown_path(self, path: str | Path) -> str:
        """A path on the medium as the user can name it: TARGET:/LiveOS/... for a stick
        image or device mounted by this process for a moment; a mount the user made
        (say /media/SOAS) stays as it is, since the user knows it."""
        text = str(path)
        if (
            self.source in (Source.DEVICE, Source.IMAGE)
            and self.root is not None
            and self.root.name.startswith(TEMP_MOUNT_PREFIXES)
        ):
            root = str(self.root)
            if text == root or text.startswith(root + "/"):
                return f"{self.target}:{text[len(root) :] or '/'}"
        return text

    @property
    def expected_overlay_name(self) -> str | None:
        return self.volume.overlay_name() if self.volume else None

    @property
    def overlay_name_problem(self) -> str | None:
        """Why dracut will not find this overlay at boot, or None if it will."""
        if self.overlay_path is None or self.volume is None:
            return None
        if self.volume.label and " " in self.volume.label:
            return (
                f"the volume label {self.volume.label!r} has a space, so no overlay name can "
                "match it; relabel the partition with '_' for spaces"
            )
        expected = self.expected_overlay_name
        if expected is None or self.overlay_path.name == expected:
            return None
        return f"dracut looks for {expected}, but the overlay is named {self.overlay_path.name}"


# --- kernel command line ------------------------------------------------------------


def parse_cmdline(text: str) -> dict[str, str]:
    """The live-boot arguments of a kernel command line (rd.live.*, rd.overlay*, root=)."""
    args: dict[str, str] = {}
    for word in text.split():
        key, sep, value = word.partition("=")
        if key == "root" or key.startswith(("rd.live", "rd.overlay")):
            args[key] = value if sep else "1"
    return args


def livedir_from_args(args: dict[str, str]) -> str:
    return args.get("rd.live.dir", DEFAULT_LIVEDIR).strip("/") or DEFAULT_LIVEDIR


# --- what is inside a LiveOS directory --------------------------------------------------


def _head(path: Path, length: int, offset: int = 0) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(length)
    except OSError:
        return b""


def overlay_kind_of(path: Path) -> OverlayKind:
    if path.is_dir():
        return OverlayKind.OVERLAYFS_DIR
    if _head(path, 2, EXT_MAGIC_OFFSET) == EXT_MAGIC and _head(path, 4) != SNAP_MAGIC:
        return OverlayKind.OVERLAYFS_IMAGE
    return OverlayKind.DM


def kind_of_head(head: bytes) -> HomeKind:
    """LUKS, PLAIN (an ext filesystem) or UNKNOWN, from a file's first HEAD_BYTES bytes.

    The one place that knows the magic numbers of a home.img."""
    if head[: len(LUKS_MAGIC)] == LUKS_MAGIC:
        return HomeKind.LUKS
    if head[EXT_MAGIC_OFFSET:HEAD_BYTES] == EXT_MAGIC:
        return HomeKind.PLAIN
    return HomeKind.UNKNOWN


def _home_kind(path: Path) -> HomeKind:
    kind = kind_of_head(_head(path, HEAD_BYTES))
    if kind is not HomeKind.UNKNOWN:
        return kind
    if which("blkid"):
        from liveos_tools.tools import blkid

        found = blkid.probe(path)
        if found.get("TYPE") == "crypto_LUKS":
            return HomeKind.LUKS
        if found.get("USAGE") == "filesystem":
            return HomeKind.PLAIN
    return HomeKind.UNKNOWN


def _image_layout(livedir: Path) -> tuple[ImageLayout, Path | None, Path | None]:
    squash = livedir / "squashfs.img"
    for name in ("rootfs.img", "ext3fs.img"):
        if (livedir / name).is_file():
            return ImageLayout.UNCOMPRESSED, None, livedir / name
    if not squash.is_file():
        return ImageLayout.NONE, None, None
    if not which("unsquashfs"):
        return ImageLayout.UNKNOWN, squash, None
    from liveos_tools.tools import squashfs

    try:
        found = squashfs.find_paths(squash, squashfs.NESTED_NAMES)
    except LiveOSError:
        # A damaged squashfs.img must not stop status, grow or reset, which never read
        # it; repair, which needs it, reads it again and names the damage.
        return ImageLayout.UNKNOWN, squash, None
    if found:
        return ImageLayout.NESTED, squash, Path(sorted(found)[0])
    return ImageLayout.FLAT, squash, None


def volume_of_path(path: Path) -> Volume | None:
    """The filesystem holding `path`: its device, and the label and UUID blkid reads."""
    mount = mounts.mount_of(path)
    if mount is None:
        return None
    return volume_of_device(mount.source, fstype=mount.fstype)


def volume_of_device(device: str, *, fstype: str | None = None) -> Volume:
    info: dict[str, str] = {}
    if device.startswith("/dev/") and which("blkid") and os.access(device, os.R_OK):
        from liveos_tools.tools import blkid

        with contextlib.suppress(LiveOSError):
            info = blkid.probe(device)
    if not info:
        info = _udev_names(device)
    return Volume(
        device=device if device.startswith("/dev/") else None,
        label=info.get("LABEL"),
        uuid=info.get("UUID"),
        fstype=info.get("TYPE", fstype),
    )


def _udev_names(device: str) -> dict[str, str]:
    # Without root, blkid cannot read the device; udev's symlinks still name it.
    out: dict[str, str] = {}
    real = os.path.realpath(device)
    for key, folder in (("UUID", "/dev/disk/by-uuid"), ("LABEL", "/dev/disk/by-label")):
        with contextlib.suppress(OSError):
            for entry in os.scandir(folder):
                if os.path.realpath(entry.path) == real:
                    out[key] = entry.name.encode().decode("unicode_escape")
    return out


def inspect_root(
    root: Path,
    *,
    source: Source,
    target: str,
    livedir: str,
    volume: Volume | None,
    overlay: Path | None = None,
    live_dm: str | None = None,
    boot_args: dict[str, str] | None = None,
) -> Medium:
    """Describe the LiveOS directory `root/livedir` (the overlay may be given)."""
    ldir = root / livedir
    candidates = sorted(p for p in ldir.glob("overlay-*")) if ldir.is_dir() else []
    if overlay is None and candidates:
        expected = volume.overlay_name() if volume else None
        named = [p for p in candidates if p.name == expected]
        overlay = named[0] if named else candidates[0]
    layout, squash, rootfs = _image_layout(ldir)
    home = ldir / "home.img"
    swap = ldir / "swap.img"
    return Medium(
        source=source,
        target=target,
        root=root,
        livedir=livedir,
        volume=volume,
        overlay_path=overlay,
        overlay_kind=overlay_kind_of(overlay) if overlay else OverlayKind.NONE,
        image_layout=layout,
        squashfs_path=squash,
        rootfs_path=rootfs,
        home_path=home if home.exists() else None,
        home_kind=_home_kind(home) if home.exists() else HomeKind.ABSENT,
        swap_path=swap if swap.exists() else None,
        other_overlays=tuple(p for p in candidates if p != overlay),
        live_dm=live_dm,
        boot_args=boot_args or {},
    )


IMAGE_NAMES = ("squashfs.img", "rootfs.img", "ext3fs.img")


def _holds_image(ldir: Path) -> bool:
    # A refresh's journal: mid-switch the pair may be in LiveOS/previous/ for a moment.
    return any((ldir / n).exists() for n in (*IMAGE_NAMES, ".liveos-refresh.json"))


def _has_livedir(root: Path, livedir: str) -> bool:
    ldir = root / livedir
    if not ldir.is_dir():
        return False
    return _holds_image(ldir) or any(ldir.glob("overlay-*"))


# --- the five kinds of target ---------------------------------------------------------------


def _running_live(stack: contextlib.ExitStack, livedir: str | None, cmdline: str) -> Medium:
    args = parse_cmdline(cmdline)
    ldir = livedir or livedir_from_args(args)
    table = mounts.mounts()
    live_mount = next((m for m in table if m.mountpoint == str(LIVE_ROOT)), None)
    overlay: Path | None = None
    live_dm: str | None = None
    if which("dmsetup") and os.path.exists("/dev/mapper/control"):
        from liveos_tools.tools import dmsetup, losetup

        with contextlib.suppress(LiveOSError):
            lines = dmsetup.table(LIVE_RW)
            live_dm = LIVE_RW
            snap = lines[0].snapshot if lines else None
            if snap is not None:
                overlay = _loop_back_file(snap.cow.text, losetup.list_devices())
    if live_mount is None and live_dm is None:
        raise TargetError(
            "no running live system here (no /run/initramfs/live, no live-rw device)",
            "give the stick's mount point, its device, a disk image or an overlay file",
        )
    root = LIVE_ROOT if live_mount else None
    volume = volume_of_device(live_mount.source, fstype=live_mount.fstype) if live_mount else None
    if root is None:
        medium = Medium(
            source=Source.LIVE,
            target="live",
            root=None,
            livedir=ldir,
            volume=None,
            overlay_path=overlay,
            overlay_kind=OverlayKind.DM if overlay else OverlayKind.NONE,
            image_layout=ImageLayout.UNKNOWN,
            squashfs_path=None,
            rootfs_path=None,
            home_path=None,
            home_kind=HomeKind.UNKNOWN,
            swap_path=None,
            live_dm=live_dm,
            boot_args=args,
        )
        return medium
    return inspect_root(
        root,
        source=Source.LIVE,
        target="live",
        livedir=ldir,
        volume=volume,
        overlay=overlay,
        live_dm=live_dm,
        boot_args=args,
    )


def _loop_back_file(devref: str, loops: list[LoopDevice]) -> Path | None:
    for dev in loops:
        majmin = f"{dev.majmin[0]}:{dev.majmin[1]}" if dev.majmin else None
        if devref in (dev.name, majmin) and dev.back_file:
            return Path(dev.back_file.removesuffix(" (deleted)"))
    return None


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise TargetError(f"reading {what} needs root", "run the command with sudo")


def _mounted_root(
    stack: contextlib.ExitStack,
    device: str,
    fstype: str | None,
    *,
    writable: bool = False,
    rec: Recorder | None = None,
) -> Path:
    """Where the device's filesystem is mounted; mount it (read-only unless `writable`) if not.

    A writing command needs a read-write mount: an existing read-write mount is used as
    it is; a read-only mount by someone else is refused rather than remounted under them.
    """
    st = os.stat(device)
    existing = mounts.mounts_of_device((os.major(st.st_rdev), os.minor(st.st_rdev)))
    if existing:
        if writable:
            rw = [m for m in existing if not m.readonly]
            if not rw:
                raise InUseError(
                    f"{device} is mounted read-only at {existing[0].mountpoint}",
                    "remount it read-write (mount -o remount,rw) or unmount it, then try again",
                )
            return Path(rw[0].mountpoint)
        return Path(existing[0].mountpoint)
    import tempfile

    from liveos_tools.tools import mount as mount_tool

    where = Path(tempfile.mkdtemp(prefix=TEMP_MOUNT_PREFIXES[1 if writable else 0]))
    stack.callback(os.rmdir, where)
    if rec is not None:
        rec.mounting(device, where)  # before it exists: a kill leaves it findable
    mount_tool.mount(device, where, fstype=fstype, options="rw" if writable else None)
    stack.callback(mount_tool.umount, where)
    return where


def _from_device(
    stack: contextlib.ExitStack,
    device: str,
    *,
    source: Source,
    target: str,
    livedir: str,
    writable: bool = False,
    rec: Recorder | None = None,
) -> Medium:
    _need_root(f"the device {device}")
    from liveos_tools.tools import blkid, losetup

    whole = blkid.probe(device)
    parts = losetup.wait_for_partitions(device) if whole.get("PTTYPE") else []
    probed = [(dev, blkid.probe(dev)) for dev in parts or [device]]
    # An EFI system partition is looked at last (the writer's GPT layout puts it first):
    # mounted here, it would be in use while refresh rewrites its grub.cfg (espcfg.py).
    probed.sort(key=lambda p: p[1].get("PART_ENTRY_TYPE", "").lower() in ESP_PART_TYPES)
    seen = []
    for dev, info in probed:
        fstype = info.get("TYPE")
        if info.get("USAGE") != "filesystem" or fstype in (None, "squashfs", "iso9660"):
            continue
        seen.append(f"{dev} ({fstype})")
        root = _mounted_root(stack, dev, fstype, writable=writable, rec=rec)
        if _has_livedir(root, livedir):
            volume = Volume(dev, info.get("LABEL"), info.get("UUID"), fstype)
            medium = inspect_root(
                root, source=source, target=target, livedir=livedir, volume=volume
            )
            return medium._replace(opened_readonly=not writable)
    if not seen:
        raise TargetError(
            f"{target} holds no filesystem: it is not a LiveOS stick, a disk image or an overlay",
            "check the path; point at the stick, its partition, or LiveOS/overlay-*",
        )
    where = ", ".join(seen)
    raise TargetError(
        f"no {livedir} directory on {target} ({where})",
        "is this a LiveOS stick? Give --livedir if its directory has another name",
    )


def _from_image(
    stack: contextlib.ExitStack, path: Path, *, livedir: str, writable: bool = False
) -> Medium:
    _need_root(f"the disk image {path}")
    from liveos_tools.tasks import leftovers as lf
    from liveos_tools.tools import losetup

    # A writing command's attach is recorded beside the image (and cleared by the next
    # one, killed or not by a reboot); a read-only look's only in /run.
    rec = _recorder(stack, path, path.parent if writable else lf.MEDIA, str(path))
    if writable:
        _tell(lf.clear_medium(path))
    attached = losetup.find_by_file(path)
    if attached:
        # Never a second loop device over the same image: two kernels' views of one
        # filesystem, one of them writing, corrupt it.
        if writable:
            raise InUseError(
                f"{path} is in use: {_describe_users([d.name for d in attached])}",
                "unmount it and detach it (umount MOUNTPOINT; losetup -d DEVICE), "
                "or point at its mounted directory instead",
            )
        return _from_device(
            stack,
            attached[0].name,
            source=Source.IMAGE,
            target=str(path),
            livedir=livedir,
            rec=rec,
        )
    loop = rec.attach(path, readonly=not writable)
    stack.callback(losetup.detach, loop)
    return _from_device(
        stack,
        loop,
        source=Source.IMAGE,
        target=str(path),
        livedir=livedir,
        writable=writable,
        rec=rec,
    )


def _recorder(stack: contextlib.ExitStack, subject: Path, directory: Path, target: str) -> Recorder:
    """The journal of what this open attaches and mounts; forgotten on release (run
    last: after the unmount and the detach), unless something it names is still there."""
    from liveos_tools.tasks import leftovers as lf

    rec = lf.Recorder(directory, subject, target)
    stack.callback(rec.close)
    return rec


def _tell(lines: list[str]) -> None:
    """What was cleared on opening (diagnostics go to stderr, as a plan's notes do)."""
    import sys

    for line in lines:
        print(f"note: {line}", file=sys.stderr, flush=True)


def _describe_users(devices: list[str]) -> str:
    """'attached to /dev/loop3 (partition /dev/loop3p1 mounted at /mnt)' for a message."""
    table = mounts.mounts()
    parts = []
    for dev in devices:
        names = [dev, *(p for p in _partition_nodes(dev))]
        where = [f"{m.source} mounted at {m.mountpoint}" for m in table if m.source in names]
        parts.append(f"attached to {dev}" + (f" ({', '.join(where)})" if where else ""))
    return "; ".join(parts)


def _partition_nodes(device: str) -> list[str]:
    from liveos_tools.tools import losetup

    return losetup.partitions(device)


def _from_overlay_file(path: Path, *, livedir: str) -> Medium:
    ldir = path.parent
    if _holds_image(ldir):
        return inspect_root(
            ldir.parent,
            source=Source.OVERLAY_FILE,
            target=str(path),
            livedir=ldir.name,
            volume=volume_of_path(ldir),
            overlay=path,
        )
    return Medium(
        source=Source.OVERLAY_FILE,
        target=str(path),
        root=None,
        livedir=livedir,
        volume=None,
        overlay_path=path,
        overlay_kind=overlay_kind_of(path),
        image_layout=ImageLayout.NONE,
        squashfs_path=None,
        rootfs_path=None,
        home_path=None,
        home_kind=HomeKind.ABSENT,
        swap_path=None,
    )


def _looks_like_overlay(path: Path) -> bool:
    if path.name.startswith("overlay-"):
        return True
    head = _head(path, 512)
    if head[:4] == SNAP_MAGIC:
        return True
    # An all-zero start is a new overlay, unless something else lives further in
    # (an ext4 image starts with 1 KiB of zeros, a partition table ends its sector with 55aa).
    return (
        len(head) == 512
        and not any(head)
        and _head(path, 2, EXT_MAGIC_OFFSET) != EXT_MAGIC
        and _head(path, 5, 32769) != b"CD001"
    )


@contextlib.contextmanager
def open_medium(
    target: str | None,
    *,
    livedir: str | None = None,
    cmdline: str | None = None,
    writable: bool = False,
) -> Iterator[Medium]:
    """Find the LiveOS that `target` names; release whatever was attached on exit.

    With `writable`, devices and images are mounted read-write (for the writing
    commands); a filesystem someone else has mounted read-only is refused.
    """
    with contextlib.ExitStack() as stack:
        if target is None:
            text = cmdline if cmdline is not None else _read_cmdline()
            yield _running_live(stack, livedir, text)
            return
        ldir = livedir or DEFAULT_LIVEDIR
        path = Path(target)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise TargetError(f"{target}: no such file or directory", "check the path") from None
        except PermissionError:
            raise TargetError(f"{target}: permission denied", "run with sudo") from None
        if stat.S_ISDIR(st.st_mode):
            yield _from_directory(path, ldir)
        elif stat.S_ISBLK(st.st_mode):
            from liveos_tools.tasks import leftovers as lf

            rec = _recorder(stack, path, lf.MEDIA, target)
            if writable:
                _tell(lf.clear_medium(path))
            yield _from_device(
                stack,
                str(path),
                source=Source.DEVICE,
                target=target,
                livedir=ldir,
                writable=writable,
                rec=rec,
            )
        elif stat.S_ISREG(st.st_mode):
            if st.st_size == 0:
                raise TargetError(
                    f"{target} is empty (0 bytes): not an overlay, a stick or a disk image",
                    "check the path; an overlay file is never empty",
                )
            if _looks_like_overlay(path):
                yield _from_overlay_file(path, livedir=ldir)
            else:
                yield _from_image(stack, path, livedir=ldir, writable=writable)
        else:
            raise TargetError(f"{target} is not a directory, a block device or a file")


def _from_directory(path: Path, livedir: str) -> Medium:
    root = path
    if not _has_livedir(root, livedir) and _has_livedir(path.parent, path.name):
        root, livedir = path.parent, path.name
    if not _has_livedir(root, livedir):
        raise TargetError(
            f"no {livedir} directory with a live image or overlay in {path}",
            "point at the stick's mount point (the folder that holds LiveOS/)",
        )
    return inspect_root(
        root,
        source=Source.DIRECTORY,
        target=str(path),
        livedir=livedir,
        volume=volume_of_path(root),
    )


def _read_cmdline() -> str:
    try:
        return Path("/proc/cmdline").read_text()
    except OSError:
        return ""


# --- one file in a stick's LiveOS folder (home.img, swap.img) -------------------------------


def is_stick_image(path: Path, livedir: str = DEFAULT_LIVEDIR) -> bool:
    """A stick's image, not a home.img or a backup of one: a partition table (or a FAT
    boot sector), or an ext filesystem whose root holds the LiveOS folder with a live
    image or an overlay in it (read with debugfs: nothing is mounted)."""
    head = _head(path, HEAD_BYTES)
    if kind_of_head(head) is HomeKind.LUKS:
        return False
    if len(head) >= 512 and head[510:512] == b"\x55\xaa":
        return True
    if kind_of_head(head) is not HomeKind.PLAIN:
        return False
    from liveos_tools.tools import debugfs

    names = debugfs.list_dir(path, livedir)
    return any(n in IMAGE_NAMES or n.startswith("overlay-") for n in names)


def open_livedir_file(
    stack: contextlib.ExitStack,
    target: str,
    livedir: str | None,
    name: str,
    *,
    writable: bool,
    mode: str = "existing",
    is_file_itself: Callable[[Path], bool] | None = None,
) -> tuple[Path, Medium | None]:
    """The path of LiveOS/<name> for TARGET (it need not exist yet), and the medium
    opened for it when TARGET is a stick image or device (its root is a temporary
    mount, shown to users as "TARGET:").

    `mode`: "existing" (resize, check, copy source, swap remove), "create" (TARGET must
    exist, or be a file named `name` in an existing folder) or "dest" (a new file in an
    existing folder is fine). A regular file is the file itself unless it is a stick
    image, which is opened (read-only unless `writable`); for "create", a file not named
    `name` must pass `is_file_itself` (say, "is a home.img").
    """
    ldir = livedir or DEFAULT_LIVEDIR
    path = Path(target)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if mode == "create" and path.name != name:
            raise TargetError(
                f"{target}: no such directory",
                "check the path: give the stick's mount point (the folder holding "
                f"{ldir}/), its {ldir} folder, or a path ending in {name}",
            ) from None
        if path.parent.is_dir():
            # a file to create, or (mode "existing") the task says "no such file"
            return path, None
        raise TargetError(f"{target}: no such file or directory", "check the path") from None
    except PermissionError:
        raise TargetError(f"{target}: permission denied", "run with sudo") from None
    if stat.S_ISDIR(st.st_mode):
        if (path / ldir).is_dir():
            return path / ldir / name, None
        if path.name == ldir or (path / "squashfs.img").exists() or any(path.glob("overlay-*")):
            return path / name, None
        raise TargetError(
            f"no {ldir} folder in {target}",
            "point at the stick's mount point (the folder that holds LiveOS/)",
        )
    if stat.S_ISREG(st.st_mode) and not is_stick_image(path, ldir):
        if mode == "create" and path.name != name and not (is_file_itself or bool)(path):
            raise TargetError(
                f"{target} is neither a stick nor a {name}",
                f"give the stick's mount point, its {ldir} folder, or a path ending in {name}",
            )
        return path, None
    if stat.S_ISBLK(st.st_mode) or stat.S_ISREG(st.st_mode):
        medium = stack.enter_context(open_medium(target, livedir=livedir, writable=writable))
        if medium.livedir_path is None or medium.root is None:
            raise TargetError(f"{target} has no {ldir} folder")
        return medium.livedir_path / name, medium
    raise TargetError(f"{target} is not a directory, a block device or a file")


# --- what a plugged stick and its boot loader say ------------------------------------------


def mounted_livedir(node: str, livedir: str = DEFAULT_LIVEDIR) -> str | None:
    """Where the block device `node` is mounted with a LiveOS folder, if it is (a desktop's
    automount: readable without root)."""
    with contextlib.suppress(OSError):
        st = os.stat(node)
        for m in mounts.mounts_of_device((os.major(st.st_rdev), os.minor(st.st_rdev))):
            if (Path(m.mountpoint) / livedir).is_dir():
                return m.mountpoint
    return None


#: boot loader files that carry the kernel command line, relative to the stick's root.
BOOT_FILES = (
    "EFI/BOOT/grub.cfg",
    "boot/grub2/grub.cfg",
    "boot/grub/grub.cfg",
    "syslinux/syslinux.cfg",
    "syslinux/extlinux.conf",
    "extlinux/extlinux.conf",
    "isolinux/isolinux.cfg",
)


def boot_args_from_config(text: str) -> dict[str, str]:
    """The live-boot arguments of the first kernel line that boots a live image."""
    for line in text.splitlines():
        if "root=live:" in line or "rd.live.image" in line:
            return parse_cmdline(line)
    return {}


def boot_args_on_stick(root: Path) -> tuple[dict[str, str], tuple[str, ...]]:
    """The live-boot arguments the stick's boot loaders pass, and the files that say so
    (the first file to name an argument wins)."""
    found: dict[str, str] = {}
    files: list[str] = []
    for rel in BOOT_FILES:
        try:
            text = (root / rel).read_text(errors="replace")
        except OSError:
            continue
        args = boot_args_from_config(text)
        if args:
            files.append(rel)
            for k, v in args.items():
                found.setdefault(k, v)
    return found, tuple(files)
