"""Boot config rewriting (writer/bootcfg.py) on the fixture ISO's configs and on
Fedora-like ones (tests/fixtures/bootcfg/: lorax's live templates filled in as Fedora 36
and 42 ship them): every entry kept with its own words and the stick's arguments, the
ISO's timeout kept unless asked, the GRUB modules for the stick's table and filesystem."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from liveos_tools.writer import bootcfg
from tests.fixtures import isobuild

CFGS = Path(__file__).parent.parent / "fixtures" / "bootcfg"
UUID = "1234-ABCD"
OURS = f"root=live:UUID={UUID} rootfstype=vfat rw rd.live.image rd.live.overlay=UUID={UUID}"
ARGS = bootcfg.BootArgs(UUID, "vfat", source_args=("quiet", "rhgb"), extra=("console=ttyS0",))


def appends(cfg: str) -> list[str]:
    return [x.strip() for x in cfg.splitlines() if x.strip().lower().startswith("append")]


def labels(cfg: str) -> list[str]:
    return re.findall(r"^label (\S+)", cfg, re.MULTILINE)


def test_fedora_isolinux_keeps_its_entries_with_the_sticks_arguments() -> None:
    src = (CFGS / "fedora36-isolinux.cfg").read_text()
    out = bootcfg.syslinux_cfg(ARGS, title="t", timeout_s=None, source_cfg=src)
    # memtest is not copied to the stick: its entry could only fail
    assert labels(out) == ["linux", "check", "basic", "local", "returntomain"]
    assert appends(out) == [
        f"append initrd=initrd.img {OURS} quiet rhgb console=ttyS0",
        f"append initrd=initrd.img {OURS} rd.live.check quiet console=ttyS0",
        f"append initrd=initrd.img {OURS} nomodeset quiet rhgb console=ttyS0",
    ]
    assert "CDLABEL" not in out and "memtest" not in out
    # the ISO's timeout, menu, boot message, default entry and submenu are all there
    for line in (
        "default vesamenu.c32",
        "timeout 600",
        "display boot.msg",
        "  menu default",
        "menu begin ^Troubleshooting",
        "  localboot 0xffff",
        "menu end",
        "  menu label Start Fedora-Workstation-Live 36 in ^basic graphics mode",
    ):
        assert line in out.splitlines(), line


def test_isolinux_timeout_nomenu_nobootmsg() -> None:
    src = (CFGS / "fedora36-isolinux.cfg").read_text()
    out = bootcfg.syslinux_cfg(
        ARGS, title="t", timeout_s=5, source_cfg=src, menu=False, bootmsg=False
    )
    lines = out.splitlines()
    assert "timeout 50" in lines and "timeout 600" not in lines
    assert "default linux" in lines and "default vesamenu.c32" not in lines
    assert "display boot.msg" not in lines
    assert "timeout 1" in bootcfg.syslinux_cfg(ARGS, title="t", timeout_s=0, source_cfg=src)
    # syslinux's 0 waits for ever: that is our -1
    assert "timeout 0" in bootcfg.syslinux_cfg(ARGS, title="t", timeout_s=-1, source_cfg=src)


def test_the_fixture_isos_isolinux_cfg() -> None:
    src = isobuild._isolinux_cfg("LIVE TEST")
    args = bootcfg.BootArgs(UUID, "ext4", persistence=bootcfg.Persistence.NONE)
    out = bootcfg.syslinux_cfg(args, title="t", timeout_s=None, source_cfg=src)
    assert labels(out) == ["linux", "check"]
    base = f"root=live:UUID={UUID} rootfstype=ext4 rw rd.live.image"
    assert appends(out) == [
        f"append initrd=initrd.img {base} quiet rhgb",
        f"append initrd=initrd.img {base} rd.live.check quiet",
    ]
    assert "timeout 600" in out and "CDLABEL" not in out


def test_rewriting_a_written_stick_again_changes_nothing() -> None:
    src = (CFGS / "fedora36-isolinux.cfg").read_text()
    once = bootcfg.syslinux_cfg(ARGS, title="t", timeout_s=None, source_cfg=src)
    assert bootcfg.syslinux_cfg(ARGS, title="t", timeout_s=None, source_cfg=once) == once
    grub = (CFGS / "fedora36-efi-grub.cfg").read_text()
    g1 = bootcfg.grub_cfg(
        grub,
        ARGS,
        title="t",
        kernel="/syslinux/vmlinuz",
        initrd="/syslinux/initrd.img",
        timeout_s=None,
        table="msdos",
    )
    g2 = bootcfg.grub_cfg(
        g1,
        ARGS,
        title="t",
        kernel="/syslinux/vmlinuz",
        initrd="/syslinux/initrd.img",
        timeout_s=None,
        table="msdos",
    )
    assert g1 == g2


def grub(src: str, fstype: str = "vfat", table: str = "msdos", **kw: object) -> str:
    args = bootcfg.BootArgs(UUID, fstype, source_args=("quiet", "rhgb"))
    return bootcfg.grub_cfg(
        src,
        args,
        title="t",
        kernel="/syslinux/vmlinuz",
        initrd="/syslinux/initrd.img",
        table=table,
        **kw,
    )  # type: ignore[arg-type]


def linux_lines(cfg: str) -> list[str]:
    return [x.strip() for x in cfg.splitlines() if x.strip().startswith(("linux", "initrd"))]


def test_fedora_efi_grub_on_an_msdos_fat_stick() -> None:
    out = grub((CFGS / "fedora36-efi-grub.cfg").read_text(), timeout_s=None)
    lines = out.splitlines()
    assert "insmod part_msdos" in lines and "insmod part_gpt" not in lines
    assert "insmod fat" in lines and "insmod ext2" not in lines
    assert f"search --no-floppy --fs-uuid --set=root {UUID}" in lines
    assert "set timeout=60" in lines and 'set default="1"' in lines
    ours = OURS
    assert linux_lines(out) == [
        f"linuxefi /syslinux/vmlinuz {ours} quiet rhgb",
        "initrdefi /syslinux/initrd.img",
        f"linuxefi /syslinux/vmlinuz {ours} rd.live.check quiet",
        "initrdefi /syslinux/initrd.img",
        f"linuxefi /syslinux/vmlinuz {ours} nomodeset quiet rhgb",
        "initrdefi /syslinux/initrd.img",
    ]
    titles = re.findall(r"menuentry '([^']*)'", out)
    assert titles == [
        "Start Fedora-Workstation-Live 36",
        "Test this media & start Fedora-Workstation-Live 36",
        "Start Fedora-Workstation-Live 36 in basic graphics mode",
        "Boot first drive",
    ]  # memtest dropped: not on the stick
    assert "chainloader (hd0)+1" in out and "submenu 'Troubleshooting -->' {" in lines
    assert out.count("{") == out.count("}")


@pytest.mark.parametrize(
    ("fstype", "table", "part", "fs"),
    [
        ("ext4", "gpt", "part_gpt", "ext2"),
        ("ext4", "msdos", "part_msdos", "ext2"),
        ("vfat", "gpt", "part_gpt", "fat"),
    ],
)
def test_grub_modules_follow_the_stick(fstype: str, table: str, part: str, fs: str) -> None:
    lines = grub((CFGS / "fedora42-loader-grub.cfg").read_text(), fstype, table).splitlines()
    assert f"insmod {part}" in lines and f"insmod {fs}" in lines
    assert "insmod iso9660" not in lines
    assert sum(x.startswith("insmod part_") for x in lines) == 1


def test_fedora42_loader_paths_and_timeout() -> None:
    out = grub((CFGS / "fedora42-loader-grub.cfg").read_text(), "ext4", timeout_s=3)
    assert "set timeout=3" in out.splitlines()
    assert "\tlinux /syslinux/vmlinuz root=live:UUID=" in out and "($root)" not in out
    assert "\tinitrd /syslinux/initrd.img" in out
    assert re.findall(r"menuentry '([^']*)'", out)[-1] == "Boot from local drive"


def test_the_fixture_isos_grub_cfg_gets_its_modules_before_the_search() -> None:
    out = grub(
        isobuild._grub_cfg("LIVE TEST", "/images/pxeboot"), "ext4", "msdos", timeout_s=0, menu=False
    )
    lines = out.splitlines()
    s = lines.index(f"search --no-floppy --fs-uuid --set=root {UUID}")
    assert lines[s - 2 : s] == ["insmod part_msdos", "insmod ext2"]
    assert "set timeout=0" in lines and 'set default="0"' in lines
    assert lines[0] == "set timeout_style=hidden"
    assert linux_lines(out)[0] == (
        f"linux /syslinux/vmlinuz root=live:UUID={UUID} "
        "rootfstype=ext4 rw rd.live.image "
        f"rd.live.overlay=UUID={UUID} quiet rhgb"
    )


def test_a_grub_only_iso_gets_a_bios_menu_from_its_grub_entries() -> None:
    src = (CFGS / "fedora36-efi-grub.cfg").read_text()
    out = bootcfg.syslinux_cfg(ARGS, title="t", timeout_s=None, grub_source=src)
    assert re.findall(r"menu label (.*)", out) == [
        "Start Fedora-Workstation-Live 36",
        "Test this media & start Fedora-Workstation-Live 36",
        "Start Fedora-Workstation-Live 36 in basic graphics mode",
        "Boot from local drive",
    ]
    assert appends(out)[2] == f"append initrd=initrd.img {OURS} nomodeset quiet rhgb console=ttyS0"


def test_without_any_source_config_a_plain_menu_keeps_the_source_words() -> None:
    out = bootcfg.syslinux_cfg(ARGS, title="X", timeout_s=0, menu=False)
    assert "ui menu.c32" not in out and "prompt 0" in out
    assert appends(out)[0] == f"append initrd=initrd.img {OURS} quiet rhgb console=ttyS0"
    g = grub("", "vfat", "gpt")
    assert linux_lines(g)[0] == f"linux /syslinux/vmlinuz {OURS} quiet rhgb"
    assert "insmod part_gpt" in g.splitlines()
