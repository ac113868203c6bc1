"""mtools: read and write FAT filesystems in userspace, inside an image or device at an offset.

The host kernel may have no vfat at all (docs/ARCHITECTURE.md F4), so every FAT
operation of the writer goes through mtools on ``DEVICE@@OFFSET``. Reading a file
back for verification does not go through mtools: ``mshowfat`` gives the file's
cluster runs and the boot sector gives where clusters live, so the bytes are read
with pread (``fat_geometry``, ``parse_showfat``).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from liveos_tools.errors import CorruptError
from liveos_tools.run import run


def drive(device: str | Path, offset: int) -> str:
    return f"{device}@@{offset}" if offset else str(device)


def mmd(device: str | Path, offset: int, path: str) -> None:
    """Make a directory (and its parents); an existing one is fine."""
    parts = [p for p in path.strip("/").split("/") if p]
    for i in range(1, len(parts) + 1):
        sub = "/".join(parts[:i])
        if not exists(device, offset, sub):
            run(["mmd", "-i", drive(device, offset), f"::/{sub}"])


def make_dirs(device: str | Path, offset: int, paths: list[str]) -> None:
    """Make new directories in one mmd run (parents listed before their children)."""
    run(["mmd", "-i", drive(device, offset), *[f"::/{p.strip('/')}" for p in paths]])


def exists(device: str | Path, offset: int, path: str) -> bool:
    res = run(
        ["mdir", "-b", "-a", "-i", drive(device, offset), f"::/{path.strip('/')}"], check=False
    )
    return res.returncode == 0


def listing(device: str | Path, offset: int, path: str = "") -> list[str]:
    """Full paths under `path` (recursive, `mdir -/ -b`), without the leading ::/."""
    res = run(
        ["mdir", "-/", "-b", "-a", "-i", drive(device, offset), f"::/{path.strip('/')}"],
        check=False,
    )
    if res.returncode != 0:
        return []
    return [
        line.strip()[3:].rstrip("/") for line in res.stdout.splitlines() if line.startswith("::/")
    ]


def copy_in(device: str | Path, offset: int, source: str | Path, dest: str) -> None:
    """Copy a host file (or a FIFO, read to its end) to `dest`, replacing what is there."""
    _mcopy(device, offset, [source], dest)


def copy_many(device: str | Path, offset: int, sources: list[Path], dest_dir: str) -> None:
    """Copy host files into a directory under their own names, in one mcopy run."""
    _mcopy(device, offset, sources, dest_dir)


def _mcopy(device: str | Path, offset: int, sources: Sequence[str | Path], dest: str) -> None:
    run(
        [
            "mcopy",
            "-D",
            "o",
            "-n",
            "-i",
            drive(device, offset),
            *map(str, sources),
            f"::/{dest.strip('/')}",
        ]
    )


def read_text(device: str | Path, offset: int, path: str) -> str:
    """A small text file's contents (a boot config), copied out to stdout."""
    return run(["mcopy", "-n", "-i", drive(device, offset), f"::/{path.strip('/')}", "-"]).stdout


def move_over(device: str | Path, offset: int, src: str, dest: str) -> None:
    """Rename `src` to `dest` in the same directory, replacing `dest`. mtools writes the
    directory's changed sector (the new entry and both removals) in one write, then the
    FAT: a sector write is the unit a power cut leaves whole."""
    run(
        [
            "mmove",
            "-D",
            "o",
            "-i",
            drive(device, offset),
            f"::/{src.strip('/')}",
            f"::/{dest.strip('/')}",
        ]
    )


def delete(device: str | Path, offset: int, path: str) -> None:
    run(["mdel", "-i", drive(device, offset), f"::/{path.strip('/')}"])


def deltree(device: str | Path, offset: int, path: str) -> None:
    run(["mdeltree", "-i", drive(device, offset), f"::/{path.strip('/')}"])


def label(device: str | Path, offset: int, new: str) -> None:
    run(["mlabel", "-i", drive(device, offset), f"::{new}"])


_RUN = re.compile(r"<(\d+)(?:-(\d+))?>")


def parse_showfat(text: str) -> list[tuple[int, int]]:
    """`mshowfat` output (`::/a/b <3-9768><9800-9810>`) into inclusive cluster runs."""
    return [(int(a), int(b or a)) for a, b in _RUN.findall(text)]


def clusters(device: str | Path, offset: int, path: str) -> list[tuple[int, int]]:
    out = run(["mshowfat", "-i", drive(device, offset), f"::/{path.strip('/')}"]).stdout
    return parse_showfat(out)


def clusters_many(device: str | Path, offset: int, paths: list[str]) -> list[list[tuple[int, int]]]:
    """`clusters` of several paths from one mshowfat run (it prints a line for each)."""
    out = run(
        ["mshowfat", "-i", drive(device, offset), *[f"::/{p.strip('/')}" for p in paths]]
    ).stdout
    lines = [line for line in out.splitlines() if line.startswith("::")]
    if len(lines) != len(paths):  # not one line each: ask one by one
        return [clusters(device, offset, p) for p in paths]
    return [parse_showfat(line) for line in lines]


@dataclass(frozen=True)
class FatGeometry:
    bytes_per_sector: int
    sectors_per_cluster: int
    reserved: int
    fats: int
    root_entries: int
    fat_sectors: int
    total_sectors: int
    volume_id: int
    label: str
    fat_type: str

    @property
    def cluster_bytes(self) -> int:
        return self.bytes_per_sector * self.sectors_per_cluster

    @property
    def data_start(self) -> int:
        root_bytes = self.root_entries * 32
        root_sectors = (root_bytes + self.bytes_per_sector - 1) // self.bytes_per_sector
        return (self.reserved + self.fats * self.fat_sectors + root_sectors) * self.bytes_per_sector

    def cluster_offset(self, cluster: int) -> int:
        return self.data_start + (cluster - 2) * self.cluster_bytes

    @property
    def uuid(self) -> str:
        """The serial number as blkid prints it: XXXX-XXXX."""
        return f"{self.volume_id >> 16:04X}-{self.volume_id & 0xFFFF:04X}"


def fat_geometry(boot: bytes) -> FatGeometry:
    """Parse a FAT12/16/32 boot sector."""
    if len(boot) < 512 or boot[510:512] != b"\x55\xaa":
        raise CorruptError("not a FAT boot sector (no 55aa signature)")
    bps, spc, reserved, fats, root_entries, total16, _media, fat16 = struct.unpack_from(
        "<HBHBHHBH", boot, 11
    )
    total32 = struct.unpack_from("<I", boot, 32)[0]
    if bps not in (512, 1024, 2048, 4096) or spc == 0 or fats == 0:
        raise CorruptError("not a FAT boot sector (impossible geometry)")
    if fat16 == 0:  # FAT32: extended BPB at 36
        fat_sectors = struct.unpack_from("<I", boot, 36)[0]
        vol_id = struct.unpack_from("<I", boot, 67)[0]
        lab = boot[71:82]
        kind = "fat32"
    else:
        fat_sectors = fat16
        vol_id = struct.unpack_from("<I", boot, 39)[0]
        lab = boot[43:54]
        kind = "fat16"
    return FatGeometry(
        bytes_per_sector=bps,
        sectors_per_cluster=spc,
        reserved=reserved,
        fats=fats,
        root_entries=root_entries,
        fat_sectors=fat_sectors,
        total_sectors=total16 or total32,
        volume_id=vol_id,
        label=lab.decode("ascii", "replace").rstrip(),
        fat_type=kind,
    )


def read_geometry(device: str | Path, offset: int) -> FatGeometry:
    with open(device, "rb") as f:
        f.seek(offset)
        return fat_geometry(f.read(512))


def read_file(
    device: str | Path, offset: int, path: str, size: int | None, chunk: int = 1 << 20
) -> Iterator[bytes]:
    """The bytes of a FAT file, read straight from its clusters (size None: every
    allocated cluster, so the tail is padded with what the last cluster holds)."""
    geo = read_geometry(device, offset)
    runs = clusters(device, offset, path)
    if size is None:
        size = sum(b - a + 1 for a, b in runs) * geo.cluster_bytes
    return _read_runs(device, offset, geo, runs, path, size, chunk)


def read_head(device: str | Path, offset: int, path: str, length: int) -> bytes:
    """A file's first `length` bytes, or all its allocated clusters if fewer (one mshowfat)."""
    geo = read_geometry(device, offset)
    runs = clusters(device, offset, path)
    size = min(length, sum(b - a + 1 for a, b in runs) * geo.cluster_bytes)
    return b"".join(_read_runs(device, offset, geo, runs, path, size, 1 << 20))


def _read_runs(
    device: str | Path,
    offset: int,
    geo: FatGeometry,
    runs: list[tuple[int, int]],
    path: str,
    size: int,
    chunk: int,
) -> Iterator[bytes]:
    left = size
    with open(device, "rb", buffering=0) as f:
        for first, last in runs:
            pos = offset + geo.cluster_offset(first)
            run_left = min(left, (last - first + 1) * geo.cluster_bytes)
            while run_left > 0:
                f.seek(pos)
                data = f.read(min(chunk, run_left))
                if not data:
                    raise CorruptError(f"{path}: the FAT image ends inside the file")
                yield data
                pos += len(data)
                run_left -= len(data)
                left -= len(data)
            if left <= 0:
                return
    if left > 0:
        raise CorruptError(f"{path}: its clusters hold {size - left} of {size} bytes")


def allocated_bytes(device: str | Path, offset: int, path: str) -> int:
    geo = read_geometry(device, offset)
    return sum(b - a + 1 for a, b in clusters(device, offset, path)) * geo.cluster_bytes
