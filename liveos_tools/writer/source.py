"""The source of a stick: an ISO read with pycdlib (no mount, no root), a directory,
a block device, or `live` (the running medium). Every file is a byte range of some
backing file, so copying is a plain pread loop whatever the source is."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from liveos_tools.errors import CorruptError, TargetError

ISO_MAGIC_OFFSET = 32769
LIVE_ROOT = Path("/run/initramfs/live")


class SourceKind(Enum):
    ISO = "iso"
    DEVICE = "device"
    DIRECTORY = "directory"
    LIVE = "live"


@dataclass(frozen=True)
class SourceFile:
    path: str  # absolute inside the source, '/LiveOS/squashfs.img'
    size: int
    backing: str  # the file or device holding the bytes
    offset: int  # where they start in `backing`


@dataclass
class Source:
    kind: SourceKind
    origin: str
    label: str | None
    files: dict[str, SourceFile] = field(default_factory=dict)
    #: the mounted root of a directory/device/live source
    root: Path | None = None

    def get(self, path: str) -> SourceFile | None:
        """Case-insensitive lookup: ISO9660 and FAT names differ in case."""
        f = self.files.get(path)
        if f is not None:
            return f
        low = path.lower()
        for name, sf in self.files.items():
            if name.lower() == low:
                return sf
        return None

    def read(self, path: str, limit: int = 1 << 20) -> bytes:
        f = self.get(path)
        if f is None:
            raise TargetError(f"{self.origin}: no {path}")
        with open(f.backing, "rb") as fh:
            fh.seek(f.offset)
            return fh.read(min(f.size, limit))

    def read_text(self, path: str) -> str:
        return self.read(path).decode("utf-8", "replace")


def is_iso(path: str | Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(ISO_MAGIC_OFFSET)
            return f.read(5) == b"CD001"
    except OSError:
        return False


def read_iso(path: str | Path, kind: SourceKind = SourceKind.ISO) -> Source:
    """Every file of an ISO 9660 image (Rock Ridge names, else Joliet, else plain)."""
    import pycdlib
    from pycdlib.pycdlibexception import PyCdlibException

    iso = pycdlib.PyCdlib()
    try:
        iso.open(str(path))
    except (PyCdlibException, OSError) as exc:
        raise TargetError(
            f"{path}: not a readable ISO image ({exc})", "check the file; is the download complete?"
        ) from None
    try:
        label = iso.pvd.volume_identifier.decode("ascii", "replace").rstrip(" \0") or None
        if iso.has_rock_ridge():
            facade: str = "rr_path"
        elif iso.has_joliet():
            facade = "joliet_path"
        else:
            facade = "iso_path"
        files: dict[str, SourceFile] = {}
        for dirpath, _dirs, names in iso.walk(**{facade: "/"}):
            for name in names:
                full = (dirpath.rstrip("/") + "/" + name) if dirpath != "/" else "/" + name
                rec = iso.get_record(**{facade: full})
                clean = full.split(";")[0] if facade == "iso_path" else full
                files[clean] = SourceFile(
                    clean, rec.get_data_length(), str(path), rec.extent_location() * 2048
                )
    except PyCdlibException as exc:
        raise CorruptError(f"{path}: the ISO's directory is damaged ({exc})") from None
    finally:
        iso.close()
    return Source(kind, str(path), label, files)


def read_directory(root: Path, kind: SourceKind = SourceKind.DIRECTORY) -> Source:
    files: dict[str, SourceFile] = {}
    for dirpath, dirs, names in os.walk(root):
        dirs.sort()
        for name in names:
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                rel = "/" + str(p.relative_to(root))
                files[rel] = SourceFile(rel, p.stat().st_size, str(p), 0)
    label = None
    from liveos_tools.media import volume_of_path

    with contextlib.suppress(Exception):
        vol = volume_of_path(root)
        label = vol.label if vol else None
    return Source(kind, str(root), label, files, root=root)


@contextlib.contextmanager
def open_source(spec: str) -> Iterator[Source]:
    """Read SOURCE as the command line gives it; release any mount on exit."""
    if spec == "live":
        if not (LIVE_ROOT / "LiveOS").is_dir() and not LIVE_ROOT.is_dir():
            raise TargetError(
                "no running live medium here (no /run/initramfs/live)",
                "give the ISO, a device or a directory as SOURCE",
            )
        yield read_directory(LIVE_ROOT, SourceKind.LIVE)
        return
    path = Path(spec)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise TargetError(f"{spec}: no such file or directory", "check the SOURCE path") from None
    except PermissionError:
        raise TargetError(f"{spec}: permission denied", "run with sudo") from None
    if stat.S_ISDIR(st.st_mode):
        yield read_directory(path)
    elif is_iso(path):
        yield read_iso(path, SourceKind.DEVICE if stat.S_ISBLK(st.st_mode) else SourceKind.ISO)
    elif stat.S_ISBLK(st.st_mode):
        from liveos_tools.tools import blkid
        from liveos_tools.tools import mount as mount_tool

        fstype = blkid.probe(str(path)).get("TYPE")
        where = Path(tempfile.mkdtemp(prefix="liveos-src-"))
        try:
            mount_tool.mount(str(path), where, fstype=fstype)
            try:
                src = read_directory(where, SourceKind.DEVICE)
                src.origin = spec
                yield src
            finally:
                mount_tool.umount(where)
        finally:
            os.rmdir(where)
    else:
        raise TargetError(
            f"{spec} is not an ISO image, a block device or a directory",
            "SOURCE is an .iso, a device (/dev/sr0, /dev/sdb1), a directory, or `live`",
        )
