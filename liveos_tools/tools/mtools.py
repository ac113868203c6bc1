"""mtools: read and write FAT filesystems in userspace, inside an image or device at an offset.

The host kernel may have no vfat at all (FACTS.md section 4), so every FAT
operation of the writer goes through mtools on ``DEVICE@@OFFSET``. Reading a file
back for verification does not go through mtools: ``mshowfat`` gives the file's
cluster runs and the boot sector gives where clusters live, so the bytes are read
with pread (``fat_geometry``, ``parse_showfat``).
"""

from __future__ import annotations

import itertools
import re
import struct
from collections.abc import Iterator
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


def exists(device: str | Path, offset: int, path: str) -> bool:
    res = run(["mdir", "-b", "-a", "-i", drive(device, offset), f"::/{path.strip('/')}"],
              check=False)  # fmt: skip
    return res.returncode == 0


def listing(device: str | Path, offset: int, path: str = "") -> list[str]:
    """Full paths under `path` (recursive, `mdir -/ -b`), without the leading ::/."""
    res = run(["mdir", "-/", "-b", "-a", "-i", drive(device, offset), f"::/{path.strip('/')}"],
              check=False)  # fmt: skip
    if res.returncode != 0:
        return []
    return [line.strip()[3:].rstrip("/") for line in res.stdout.splitlines()
            if line.startswith("::/")]  # fmt: skip


def copy_in(device: str | Path, offset: int, source: str | Path, dest: str) -> None:
    """Copy a host file (or a FIFO, read to its end) to `dest`, replacing what is there."""
    run(["mcopy", "-D", "o", "-n", "-i", drive(device, offset), str(source),
         f"::/{dest.strip('/')}"])  # fmt: skip


def delete(device: str | Path, offset: int, path: str) -> None:
    run(["mdel", "-i", drive(device, offset), f"::/{path.strip('/')}"])


def deltree(device: str | Path, offset: int, path: str) -> None:
    run(["mdeltree", "-i", drive(device, offset), f"::/{path.strip('/')}"])


def set_attr_system(device: str | Path, offset: int, path: str) -> None:
    run(["mattrib", "-i", drive(device, offset), "+s", "+h", "+r", f"::/{path.strip('/')}"])


def label(device: str | Path, offset: int, new: str) -> None:
    run(["mlabel", "-i", drive(device, offset), f"::{new}"])


_RUN = re.compile(r"<(\d+)(?:-(\d+))?>")


def parse_showfat(text: str) -> list[tuple[int, int]]:
    """`mshowfat` output (`::/a/b <3-9768><9800-9810>`) into inclusive cluster runs."""
    return [(int(a), int(b or a)) for a, b in _RUN.findall(text)]


def clusters(device: str | Path, offset: int, path: str) -> list[tuple[int, int]]:
    out = run(["mshowfat", "-i", drive(device, offset), f"::/{path.strip('/')}"]).stdout
    return parse_showfat(out)


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
    left = size
    with open(device, "rb", buffering=0) as f:
        for first, last in clusters(device, offset, path):
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


# -- growing a file in place: allocate its clusters ourselves, so the data can be written
# -- with big sequential pwrites straight into them instead of through mcopy.

FAT12_MAX_CLUSTERS = 4084
DIRENT = 32
ATTR_LFN, ATTR_DIR, ATTR_VOLUME = 0x0F, 0x10, 0x08


def cluster_count(geo: FatGeometry) -> int:
    return (geo.total_sectors * geo.bytes_per_sector - geo.data_start) // geo.cluster_bytes


def fat_bits(geo: FatGeometry) -> int:
    if geo.fat_type == "fat32":
        return 32
    return 12 if cluster_count(geo) <= FAT12_MAX_CLUSTERS else 16


def allocate(fat: bytes | bytearray, bits: int, first: int, need: int, count: int
             ) -> list[tuple[int, int]]:  # fmt: skip
    """Clusters for a file of `need` clusters whose first cluster is `first` (already
    allocated): inclusive runs in file order, the first starting at `first`. Takes the
    clusters right after `first` when they are free (a fresh filesystem), else the first
    free ones found from there on, wrapping around. Raises if there are not enough."""
    if bits not in (16, 32):
        raise ValueError("only FAT16 and FAT32 are allocated here")
    w = bits // 8
    mask = 0x0FFFFFFF if bits == 32 else 0xFFFF
    last = count + 1  # clusters are numbered 2..count+1
    if need <= 1:
        return [(first, first)]
    end = first + need - 1
    span = fat[w * (first + 1): w * (end + 1)]
    if end <= last and span == bytes(len(span)):
        return [(first, end)]
    entries = memoryview(bytes(fat[: w * (last + 1)])).cast("I" if bits == 32 else "H")
    runs = [[first, first]]
    got = 1
    for c in itertools.chain(range(first + 1, last + 1), range(2, first)):
        if entries[c] & mask:
            continue
        if runs[-1][1] == c - 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
        got += 1
        if got == need:
            return [(a, b) for a, b in runs]
    from liveos_tools.errors import NoSpaceError

    raise NoSpaceError(f"the FAT filesystem has only {got} free clusters, {need} are needed",
                       "use a bigger stick, or smaller overlay/home/swap sizes")


def chain(runs: list[tuple[int, int]], bits: int) -> list[tuple[int, bytes]]:
    """FAT entries linking `runs` (inclusive, in file order), ending with end-of-chain:
    [(first cluster of the slice, little-endian entry bytes)]."""
    from array import array

    eoc = 0x0FFFFFFF if bits == 32 else 0xFFFF
    out = []
    for i, (a, b) in enumerate(runs):
        nxt = runs[i + 1][0] if i + 1 < len(runs) else eoc
        vals = array("I" if bits == 32 else "H", range(a + 1, b + 1))
        vals.append(nxt)
        if vals.itemsize != bits // 8:  # pragma: no cover - exotic platforms
            raise RuntimeError("unexpected array item size")
        out.append((a, vals.tobytes()))
    return out


def find_dirent(data: bytes, cluster: int, size: int) -> int | None:
    """Index (byte offset) of the directory entry of a file starting at `cluster` with
    `size` bytes, in raw directory data."""
    for i in range(0, len(data) - DIRENT + 1, DIRENT):
        first = data[i]
        if first == 0:
            return None
        attr = data[i + 11]
        if first == 0xE5 or attr == ATTR_LFN or attr & (ATTR_DIR | ATTR_VOLUME):
            continue
        hi, lo, sz = struct.unpack_from("<H4xHI", data, i + 20)
        if (hi << 16 | lo) == cluster and sz == size:
            return i
    return None


def _dir_pieces(device: str | Path, offset: int, geo: FatGeometry, parent: str
                ) -> list[tuple[int, int]]:  # fmt: skip
    """Absolute byte ranges of a directory's entries."""
    if not parent.strip("/") and geo.fat_type != "fat32":
        start = offset + (geo.reserved + geo.fats * geo.fat_sectors) * geo.bytes_per_sector
        return [(start, geo.root_entries * DIRENT)]
    runs = clusters(device, offset, parent or "/")
    if not runs and not parent.strip("/"):
        with open(device, "rb") as f:
            f.seek(offset + 44)
            root = struct.unpack("<I", f.read(4))[0]
        runs = [(root, root)]  # mshowfat does not list the FAT32 root on every version
    return [(offset + geo.cluster_offset(a), (b - a + 1) * geo.cluster_bytes) for a, b in runs]


def data_pieces(geo: FatGeometry, offset: int, runs: list[tuple[int, int]], size: int
                ) -> list[tuple[int, int]]:  # fmt: skip
    """Absolute byte ranges holding a file's `size` bytes, in file order."""
    out = []
    left = size
    for a, b in runs:
        n = min(left, (b - a + 1) * geo.cluster_bytes)
        if n <= 0:
            break
        out.append((offset + geo.cluster_offset(a), n))
        left -= n
    return out


def grow_placeholder(device: str | Path, offset: int, path: str, placeholder: int, size: int
                     ) -> list[tuple[int, int]]:  # fmt: skip
    """`path` was just written by mcopy with `placeholder` bytes (one cluster). Give it
    `size` bytes: allocate its clusters in every FAT, set its directory entry's size and
    the FAT32 free count. Returns where its data goes (absolute ranges, file order); the
    caller writes every byte of them."""
    import os

    geo = read_geometry(device, offset)
    bits = fat_bits(geo)
    runs0 = clusters(device, offset, path)
    if bits == 12 or len(runs0) != 1 or runs0[0][0] != runs0[0][1]:
        raise CorruptError(f"{path}: cannot grow it in place (FAT{bits}, runs {runs0})")
    first = runs0[0][0]
    need = max(1, -(-size // geo.cluster_bytes))
    fat_off = offset + geo.reserved * geo.bytes_per_sector
    fat_len = geo.fat_sectors * geo.bytes_per_sector
    parent = path.strip("/").rpartition("/")[0]
    fd = os.open(device, os.O_RDWR)
    try:
        fat = os.pread(fd, fat_len, fat_off)
        runs = allocate(fat, bits, first, need, cluster_count(geo))
        entry_at = None
        for start, length in _dir_pieces(device, offset, geo, parent):
            i = find_dirent(os.pread(fd, length, start), first, placeholder)
            if i is not None:
                entry_at = start + i
                break
        if entry_at is None:
            raise CorruptError(f"{path}: its directory entry was not found")
        w = bits // 8
        for copy_no in range(geo.fats):
            base = fat_off + copy_no * fat_len
            for cl, data in chain(runs, bits):
                os.pwrite(fd, data, base + w * cl)
        os.pwrite(fd, struct.pack("<I", size), entry_at + 28)
        if bits == 32:
            fsinfo = struct.unpack_from("<H", os.pread(fd, 2, offset + 48))[0]
            at = offset + fsinfo * geo.bytes_per_sector
            sector = os.pread(fd, 512, at)
            if sector[:4] == b"RRaA" and sector[484:488] == b"rrAa":
                free = struct.unpack_from("<I", sector, 488)[0]
                if free != 0xFFFFFFFF:
                    os.pwrite(fd, struct.pack("<I", max(0, free - (need - 1))), at + 488)
                os.pwrite(fd, struct.pack("<I", runs[-1][1] + 1), at + 492)
    finally:
        os.close(fd)
    return data_pieces(geo, offset, runs, size)
