"""Pure parsers of tool output, on output captured from the real tools."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from liveos_tools import mounts
from liveos_tools.errors import CorruptError, UsageError
from liveos_tools.media import parse_cmdline
from liveos_tools.tools import blkid, dmsetup, e2fs, losetup, squashfs
from liveos_tools.tools.dmsetup import SnapshotState
from liveos_tools.units import format_size, parse_size

TOOLS = Path(__file__).resolve().parent.parent / "fixtures" / "tools"


# --- dmsetup status: every form the kernel's snapshot_status() prints ------------------------


@pytest.mark.parametrize(
    ("line", "state", "numbers"),
    [
        ("0 131072 snapshot 816/16384 16", SnapshotState.ACTIVE, (816, 16384, 16)),
        ("0 131072 snapshot Invalid", SnapshotState.INVALID, (None, None, None)),
        ("0 131072 snapshot Overflow", SnapshotState.OVERFLOW, (None, None, None)),
        ("0 131072 snapshot Merge failed", SnapshotState.MERGE_FAILED, (None, None, None)),
        ("0 131072 snapshot Unknown", SnapshotState.UNKNOWN, (None, None, None)),
        ("0 8388608 snapshot-merge 24/2097152 16", SnapshotState.ACTIVE, (24, 2097152, 16)),
        ("0 8388608 snapshot-merge Merge failed", SnapshotState.MERGE_FAILED, (None,) * 3),
    ],
)
def test_snapshot_status_forms(line: str, state: SnapshotState, numbers: tuple[int, ...]) -> None:
    st = dmsetup.parse_status_line(line)
    assert st.snapshot is not None
    assert st.snapshot.state is state
    got = (st.snapshot.sectors_allocated, st.snapshot.total_sectors, st.snapshot.metadata_sectors)
    assert got == numbers


def test_linear_and_origin_status_have_no_snapshot_part() -> None:
    lin = dmsetup.parse_status_line("0 2097152 linear ")
    org = dmsetup.parse_status_line("0 2097152 snapshot-origin")
    assert (lin.target, lin.snapshot, lin.length) == ("linear", None, 2097152)
    assert (org.target, org.snapshot) == ("snapshot-origin", None)


@pytest.mark.parametrize(
    "junk",
    [
        "",
        "snapshot 1/2 3",
        "0 x snapshot 1/2 3",
        "0 10 snapshot 1/2",
        "0 10 snapshot 1-2 3",
        "0 10 snapshot overflow",
        "0 10 snapshot 1/2 3 4",
    ],
)
def test_junk_status_is_refused(junk: str) -> None:
    with pytest.raises(CorruptError):
        dmsetup.parse_status_line(junk)


@pytest.mark.parametrize(
    ("line", "origin", "cow", "flags", "chunk"),
    [
        ("0 4194304 snapshot 7:1 7:2 PO 8", (7, 1), (7, 2), (True, True), 8),
        ("0 4194304 snapshot 7:1 7:2 P 16", (7, 1), (7, 2), (True, False), 16),
        ("0 4194304 snapshot /dev/loop1 /dev/loop2 N 32", None, None, (False, False), 32),
        ("0 4194304 snapshot 7:1 7:2 p 8", (7, 1), (7, 2), (True, False), 8),
        ("0 4194304 snapshot-merge 7:1 7:2 P 8", (7, 1), (7, 2), (True, False), 8),
        ("0 4194304 snapshot 7:1 7:2 PO 8 1 discard_zeroes_cow", (7, 1), (7, 2), (True, True), 8),
    ],
)
def test_snapshot_tables(
    line: str,
    origin: tuple[int, int] | None,
    cow: tuple[int, int] | None,
    flags: tuple[bool, bool],
    chunk: int,
) -> None:
    t = dmsetup.parse_table_line(line)
    assert t.snapshot is not None
    assert (t.snapshot.origin.majmin, t.snapshot.cow.majmin) == (origin, cow)
    assert (t.snapshot.persistent, t.snapshot.overflow, t.snapshot.chunk_sectors) == (*flags, chunk)


def test_linear_table_and_paths() -> None:
    t = dmsetup.parse_table_line("0 2097152 linear 7:1 0")
    assert t.linear is not None and t.linear.device.majmin == (7, 1) and t.linear.offset == 0
    t = dmsetup.parse_table_line("0 2097152 linear /dev/loop1 2048")
    assert t.linear is not None and t.linear.device.text == "/dev/loop1"
    assert t.linear.offset == 2048


@pytest.mark.parametrize(
    "junk", ["0 10 snapshot 7:1 7:2 X 8", "0 10 snapshot 7:1 7:2 P", "0 10 linear 7:1", "0 10"]
)
def test_junk_tables_are_refused(junk: str) -> None:
    with pytest.raises(CorruptError):
        dmsetup.parse_table_line(junk)


def test_named_output_of_all_devices() -> None:
    text = "live-base: 0 4194304 linear 7:1 0\nlive-rw: 0 4194304 snapshot 7:1 7:2 PO 8\n"
    named = dmsetup.parse_named(text)
    assert sorted(named) == ["live-base", "live-rw"]
    assert dmsetup.parse_named("No devices found\n") == {}
    with pytest.raises(CorruptError):
        dmsetup.parse_named("garbage without a name\n")


def test_info() -> None:
    info = dmsetup.parse_info("live-rw;254;0;L--w;1;\n")
    assert (info.name, info.major, info.minor, info.open_count) == ("live-rw", 254, 0, 1)
    assert (info.suspended, info.readonly, info.node) == (False, False, "/dev/dm-0")
    assert dmsetup.parse_info("x;254;3;Ls-r;0;CRYPT-LUKS2-abc").suspended is True
    with pytest.raises(CorruptError):
        dmsetup.parse_info("x;254;;L--w;0;")


def test_captured_dmsetup_outputs() -> None:
    """Every line captured from the real kernel parses (scripts/capture-tool-output)."""
    captured = sorted(TOOLS.glob("dmsetup-*.txt"))
    assert captured, "no captured dmsetup output in tests/fixtures/tools"
    kinds: set[tuple[str, object]] = set()
    for path in captured:
        if path.name.startswith("dmsetup-status"):
            for line in path.read_text().splitlines():
                st = dmsetup.parse_status_line(line)
                kinds.add((st.target, st.snapshot.state if st.snapshot else None))
        if path.name.startswith("dmsetup-table"):
            for lines in dmsetup.parse_named(path.read_text()).values():
                for line in lines:
                    kinds.add((dmsetup.parse_table_line(line).target, "table"))
    assert ("snapshot", SnapshotState.OVERFLOW) in kinds
    assert ("snapshot", SnapshotState.INVALID) in kinds
    assert ("snapshot", SnapshotState.ACTIVE) in kinds
    assert ("snapshot-merge", SnapshotState.ACTIVE) in kinds
    assert ("linear", None) in kinds and ("snapshot-origin", None) in kinds
    assert {("linear", "table"), ("snapshot", "table"), ("snapshot-merge", "table")} <= kinds
    info = dmsetup.parse_info((TOOLS / "dmsetup-info.txt").read_text())
    assert info.name == "cap-num" and info.open_count == 0


# --- losetup --------------------------------------------------------------------------------


def test_losetup_list_captured() -> None:
    devs = losetup.parse_list((TOOLS / "losetup-list-2.json").read_text())
    by_name = {d.name: d for d in devs}
    assert sorted(by_name) == ["/dev/loop0", "/dev/loop1"]
    assert by_name["/dev/loop0"].readonly is True and by_name["/dev/loop1"].partscan is True
    assert by_name["/dev/loop0"].back_dev == (254, 0)
    assert by_name["/dev/loop0"].majmin == (7, 0)
    assert by_name["/dev/loop0"].back_ino == 2146433
    assert losetup.parse_list((TOOLS / "losetup-list-empty.json").read_text()) == []
    assert losetup.parse_list("") == []


def test_losetup_old_string_flags_and_deleted_files() -> None:
    text = json.dumps(
        {
            "loopdevices": [
                {
                    "name": "/dev/loop3",
                    "back-file": "/x (deleted)",
                    "ro": "1",
                    "partscan": "0",
                    "offset": "512",
                }
            ]
        }
    )
    (dev,) = losetup.parse_list(text)
    assert (dev.readonly, dev.partscan, dev.offset, dev.deleted) == (True, False, 512, True)


@pytest.mark.parametrize("junk", ["{", "[]", '{"loopdevices": [1]}', '{"other": []}'])
def test_losetup_junk(junk: str) -> None:
    with pytest.raises(CorruptError):
        losetup.parse_list(junk)


# --- blkid, dumpe2fs, unsquashfs, mountinfo, cmdline ----------------------------------------


def test_blkid_export() -> None:
    # As blkid 2.38 prints it: values escaped for a shell.
    text = "DEVNAME=/dev/loop0p1\nLABEL=SoaS\\ v7\nUUID=1234-ABCD\nTYPE=vfat\nUSAGE=filesystem\n"
    assert blkid.parse_export(text) == {
        "DEVNAME": "/dev/loop0p1",
        "LABEL": "SoaS v7",
        "UUID": "1234-ABCD",
        "TYPE": "vfat",
        "USAGE": "filesystem",
    }
    assert blkid.parse_export('LABEL=a\\ b\\$c\\"d\n') == {"LABEL": 'a b$c"d'}


def test_dumpe2fs_header() -> None:
    text = (TOOLS / "dumpe2fs-h.txt").read_text()
    use = e2fs.parse_dumpe2fs(text)
    assert (use.block_size, use.block_count, use.free_blocks) == (1024, 4096, 2766)
    assert use.used_bytes == (4096 - 2766) * 1024 and use.state == "clean" and use.label is None
    with pytest.raises(CorruptError):
        e2fs.parse_dumpe2fs("Block size: 1024\n")


def test_unsquashfs_listing() -> None:
    assert squashfs.parse_listing("\n/LiveOS\n/LiveOS/rootfs.img\n") == {
        "LiveOS",
        "LiveOS/rootfs.img",
    }


def test_mountinfo_with_escapes() -> None:
    text = (
        "36 25 7:0 / /run/initramfs/live rw,relatime shared:1 - vfat /dev/sdb1 rw,fmask=0022\n"
        "37 25 7:1 / /media/my\\040stick ro,relatime - ext4 /dev/sdc1 ro\n"
    )
    table = mounts.parse_mountinfo(text)
    assert [(m.mountpoint, m.fstype, m.readonly) for m in table] == [
        ("/run/initramfs/live", "vfat", False),
        ("/media/my stick", "ext4", True),
    ]
    assert mounts.mount_of("/run/initramfs/live/LiveOS", table) == table[0]
    assert mounts.mounts_of_device((7, 1), table) == [table[1]]


def test_cmdline() -> None:
    args = parse_cmdline(
        "BOOT_IMAGE=/vmlinuz root=live:UUID=1234-ABCD rootfstype=vfat rw rd.live.image "
        "rd.live.overlay=UUID=1234-ABCD rd.live.dir=SoaS quiet rd.live.overlay.overlayfs"
    )
    assert args == {
        "root": "live:UUID=1234-ABCD",
        "rd.live.image": "1",
        "rd.live.overlay": "UUID=1234-ABCD",
        "rd.live.dir": "SoaS",
        "rd.live.overlay.overlayfs": "1",
    }


# --- sizes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("300", 300 << 20),
        ("300M", 300 << 20),
        ("1.5G", 3 << 29),
        ("4096b", 4096),
        ("8s", 4096),
        ("2GiB", 2 << 30),
        ("1GB", 10**9),
        ("512k", 512 << 10),
    ],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "abc", "12Q", "-5M", "1.2.3G"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(UsageError):
        parse_size(text)


def test_format_size() -> None:
    assert [format_size(n) for n in (512, 1536, 300 << 20, 3 << 29)] == [
        "512 B",
        "1.5 KiB",
        "300 MiB",
        "1.5 GiB",
    ]


def test_kernel_filesystems() -> None:
    from liveos_tools.tools.mount import kernel_filesystems

    text = "nodev\tsysfs\nnodev\ttmpfs\n\text4\n\tsquashfs\nnodev\toverlay\n"
    assert kernel_filesystems(text) == {"sysfs", "tmpfs", "ext4", "squashfs", "overlay"}
