"""liveos-iso-to-disk pure parts: boot args, configs, labels, refusals, parsers."""

from __future__ import annotations

import struct

import pytest

from liveos_tools.errors import InUseError
from liveos_tools.mounts import parse_mountinfo
from liveos_tools.tools import mtools
from liveos_tools.tools.parted import PartSpec, layout
from liveos_tools.writer import bootcfg
from liveos_tools.writer import layout as lay
from liveos_tools.writer.source import Source, SourceFile, SourceKind
from liveos_tools.writer.stick import clean_label
from liveos_tools.writer.target import refuse_system_disk, system_disks

MIB = 1024 * 1024


def test_boot_args_follow_the_contract() -> None:
    args = bootcfg.BootArgs(
        "ABCD-1234", "vfat", source_args=("quiet", "rhgb"), extra=("console=ttyS0",)
    )
    words = args.words()
    assert words[:4] == ["root=live:UUID=ABCD-1234", "rootfstype=vfat", "rw", "rd.live.image"]
    assert "rd.live.overlay=UUID=ABCD-1234" in words
    assert words.index("rw") < words.index("rd.live.image")
    assert words[-3:] == ["quiet", "rhgb", "console=ttyS0"]
    assert not any(w.startswith("rd.live.dir") for w in words)


def test_boot_args_overlayfs_and_livedir() -> None:
    words = bootcfg.BootArgs(
        "u", "ext4", livedir="Live2", persistence=bootcfg.Persistence.OVERLAYFS
    ).words()
    assert "rd.live.dir=Live2" in words and "rd.live.overlay.overlayfs" in words
    temp = bootcfg.BootArgs("u", "ext4", persistence=bootcfg.Persistence.OVERLAYFS_TEMP).words()
    assert "rd.live.overlay.overlayfs" in temp
    assert not any(w.startswith("rd.live.overlay=") for w in temp)


def test_grub_cfg_is_derived_from_the_iso() -> None:
    src = (
        "set timeout=60\nsearch --no-floppy --set=root -l 'LIVE TEST'\n"
        "menuentry 'Start' {\n\tlinux /images/pxeboot/vmlinuz root=live:CDLABEL=LIVE\\x20TEST"
        " rd.live.image quiet\n\tinitrd /images/pxeboot/initrd.img\n}\n"
    )
    out = bootcfg.grub_cfg(
        src,
        bootcfg.BootArgs("ABCD-1234", "vfat"),
        title="t",
        kernel="/syslinux/vmlinuz",
        initrd="/syslinux/initrd.img",
        timeout_s=3,
    )
    assert "search --no-floppy --fs-uuid --set=root ABCD-1234" in out
    assert "\tlinux /syslinux/vmlinuz root=live:UUID=ABCD-1234 rootfstype=vfat rw" in out
    assert "\tinitrd /syslinux/initrd.img" in out
    assert "CDLABEL" not in out and "set timeout=3" in out


def test_syslinux_cfg_timeout_and_menu() -> None:
    cfg = bootcfg.syslinux_cfg(bootcfg.BootArgs("U", "vfat"), title="X", timeout_s=0, menu=False)
    assert "ui menu.c32" not in cfg and "prompt 0" in cfg
    assert "  append initrd=initrd.img root=live:UUID=U rootfstype=vfat rw rd.live.image" in cfg


@pytest.mark.parametrize(
    ("text", "fs", "want"),
    [
        ("LIVE TEST", "vfat", "LIVE_TEST"),
        ("Fedora-WS-Live 40", "vfat", "Fedora-WS-L"),
        ("Fedora-WS-Live 40", "ext4", "Fedora-WS-Live_4"),
        (None, "vfat", "LIVE"),
    ],
)
def test_labels_lose_spaces(text: str | None, fs: str, want: str) -> None:
    assert clean_label(text, fs) == want


def _src(paths: dict[str, bytes]) -> Source:
    return Source(
        SourceKind.ISO,
        "x.iso",
        "L",
        {p: SourceFile(p, len(d), "/dev/null", 0) for p, d in paths.items()},
    )


def test_layout_detection_by_kernel_place() -> None:
    grub = _src(
        {
            "/LiveOS/squashfs.img": b"",
            "/images/pxeboot/vmlinuz": b"",
            "/images/pxeboot/initrd.img": b"",
            "/EFI/BOOT/grub.cfg": b"",
        }
    )
    found = lay.detect(grub, squash_holds_nested=True)
    assert found.kind is lay.LayoutKind.GRUB and found.kernel == "/images/pxeboot/vmlinuz"
    flat = lay.detect(grub, squash_holds_nested=False)
    assert flat.kind is lay.LayoutKind.FLAT and not flat.nested
    loader = _src(
        {
            "/LiveOS/squashfs.img": b"",
            "/boot/aarch64/loader/linux": b"",
            "/boot/aarch64/loader/initrd": b"",
        }
    )
    assert lay.detect(loader, squash_holds_nested=True).kernel == "/boot/aarch64/loader/linux"
    unc = _src({"/LiveOS/rootfs.img": b"", "/syslinux/vmlinuz": b"", "/syslinux/initrd.img": b""})
    assert lay.detect(unc).kind is lay.LayoutKind.UNCOMPRESSED


def test_extra_args_drop_what_the_writer_owns() -> None:
    assert lay.extra_args_of(
        "initrd=initrd.img root=live:CDLABEL=X rd.live.image quiet rhgb ro BOOT_IMAGE=x"
    ) == ("quiet", "rhgb")


MOUNTINFO = (
    "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
    "30 27 254:2 / /boot rw,relatime - ext4 /dev/vdb2 rw\n"
    "31 27 8:17 / /media/stick rw - vfat /dev/sdb1 rw\n"
)


def test_the_system_disk_is_refused_from_the_mount_table() -> None:
    table = parse_mountinfo(MOUNTINFO)
    names = {(254, 0): "vda", (254, 2): "vdb", (8, 17): "sdb"}
    assert system_disks(table, names.get) == {"vda", "vdb"}
    with pytest.raises(InUseError, match=r"running system lives on .*holds /\)"):
        refuse_system_disk("vda", table, names.get)
    refuse_system_disk("sdb", table, names.get)  # a mounted stick is not the system


def test_showfat_runs() -> None:
    assert mtools.parse_showfat("::/a <3-9768><9800-9810>") == [(3, 9768), (9800, 9810)]
    assert mtools.parse_showfat("::/b <18153>") == [(18153, 18153)]


def test_fat32_geometry_from_a_boot_sector() -> None:
    boot = bytearray(512)
    struct.pack_into("<HBHBHHBH", boot, 11, 512, 8, 32, 2, 0, 0, 0xF8, 0)
    struct.pack_into("<I", boot, 32, 500000)
    struct.pack_into("<I", boot, 36, 488)
    struct.pack_into("<I", boot, 67, 0x4FA122D6)
    boot[71:82] = b"LIVE_TEST  "
    boot[510:512] = b"\x55\xaa"
    geo = mtools.fat_geometry(bytes(boot))
    assert geo.uuid == "4FA1-22D6" and geo.label == "LIVE_TEST"
    assert geo.cluster_offset(2) == (32 + 2 * 488) * 512
    assert geo.cluster_bytes == 4096


def test_partition_layout_is_mib_aligned() -> None:
    msdos = layout(256 * MIB, [PartSpec("LIVE", "vfat", None)], gpt=False)
    assert msdos == [(MIB, 255 * MIB)]
    gpt = layout(
        256 * MIB,
        [PartSpec("ESP", "vfat", 64 * MIB, esp=True), PartSpec("LIVE", "vfat", None)],
        gpt=True,
    )
    assert gpt[0] == (MIB, 64 * MIB) and gpt[1][0] == 65 * MIB
    assert gpt[1][0] + gpt[1][1] <= 256 * MIB - 34 * 512


def test_iso_to_disk_cli_imports_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, liveos_tools.cli.iso_to_disk as m; m.build_parser(); "
        "print(sorted(k for k in ('parted', 'pycdlib', 'textual') if k in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
