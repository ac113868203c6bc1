"""bootentries: boot configs pointed at an image slot, pure text in and out."""

from __future__ import annotations

from pathlib import Path

import pytest

from liveos_tools import bootentries as be
from liveos_tools.bootentries import Kind, Names, Slot
from liveos_tools.errors import TargetError
from liveos_tools.writer import bootcfg

UUID = "ABCD-1234"
NAMES = Names("LiveOS", f"overlay-LIVE-{UUID}")
ARGS = bootcfg.BootArgs(uuid=UUID, fstype="vfat", extra=("quiet",))
SYSLINUX = bootcfg.syslinux_cfg(ARGS, title="Live")
LIVE = "root=live:UUID=ABCD-1234 rd.live.image rd.live.overlay=UUID=ABCD-1234"
GRUB = f"""set default="0"
set timeout=5
search --no-floppy --fs-uuid --set=root ABCD-1234
menuentry 'Start Live' --class fedora {{
\tlinuxefi /images/pxeboot/vmlinuz {LIVE} quiet
\tinitrdefi /images/pxeboot/initrd.img
}}
menuentry 'Test this media' {{
\tlinuxefi /images/pxeboot/vmlinuz {LIVE} rd.live.check
\tinitrdefi /images/pxeboot/initrd.img
}}
"""


@pytest.mark.parametrize(("text", "kind"), [(SYSLINUX, Kind.SYSLINUX), (GRUB, Kind.GRUB)])
def test_every_slot_round_trips_to_the_original(text: str, kind: Kind) -> None:
    for default in Slot:
        for previous in (None, *Slot):
            out = be.render(text, kind, NAMES, default=default, previous=previous)
            assert be.default_slot(out) is default
            assert be.previous_slot(out) is previous
            back = be.render(out, kind, NAMES, default=Slot.CURRENT, previous=None)
            assert back == text, (default, previous)


def test_the_previous_entry_names_the_kept_pair_with_dracuts_arguments() -> None:
    out = be.render(GRUB, Kind.GRUB, NAMES, default=Slot.CURRENT, previous=Slot.PREVIOUS)
    head, _, block = out.partition(be.BEGIN)
    assert head == GRUB  # the ordinary entries are untouched
    assert block.count("menuentry ") == 1 and "--id liveos-previous" in block
    line = next(ln for ln in block.splitlines() if "linuxefi" in ln)
    assert line.split()[1:] == [
        "/images/pxeboot/vmlinuz",
        "root=live:UUID=ABCD-1234",
        "rd.live.image",
        "rd.live.dir=LiveOS",
        "rd.live.squashimg=previous/squashfs.img",
        f"rd.live.overlay=UUID=ABCD-1234:/LiveOS/previous/overlay-LIVE-{UUID}",
        "quiet",
    ]
    sys_out = be.render(SYSLINUX, Kind.SYSLINUX, NAMES, default=Slot.NEXT, previous=Slot.CURRENT)
    assert "label liveos-previous" in sys_out and "menu label Previous image" in sys_out
    assert sys_out.count("rd.live.squashimg=.liveos-next/squashfs.img") == 2  # linux + check


def test_a_slot_with_its_own_kernel_gets_it_in_every_kernel_line() -> None:
    names = Names(
        NAMES.livedir,
        NAMES.overlay,
        kernels=(
            ("previous", "/LiveOS/previous/vmlinuz", "/LiveOS/previous/initrd.img"),
            ("", "/images/pxeboot/vmlinuz", "/images/pxeboot/initrd.img"),
        ),
    )
    out = be.render(GRUB, Kind.GRUB, names, default=Slot.CURRENT, previous=Slot.PREVIOUS)
    head, _, block = out.partition(be.BEGIN)
    assert head == GRUB
    assert "linuxefi /LiveOS/previous/vmlinuz " in block
    assert "initrdefi /LiveOS/previous/initrd.img" in block
    sys_out = be.render(SYSLINUX, Kind.SYSLINUX, names, default=Slot.PREVIOUS, previous=None)
    assert "  kernel /LiveOS/previous/vmlinuz" in sys_out
    assert "initrd=/LiveOS/previous/initrd.img " in sys_out


def test_kernel_paths_are_read_relative_to_a_syslinux_config(tmp_path: Path) -> None:
    cfg = tmp_path / "syslinux" / "syslinux.cfg"
    cfg.parent.mkdir()
    cfg.write_text(SYSLINUX)
    assert be.kernel_paths(cfg, tmp_path) == ("/syslinux/vmlinuz", "/syslinux/initrd.img")
    grub = tmp_path / "EFI" / "BOOT" / "grub.cfg"
    grub.parent.mkdir(parents=True)
    grub.write_text(GRUB)
    assert be.kernel_paths(grub, tmp_path) == (
        "/images/pxeboot/vmlinuz",
        "/images/pxeboot/initrd.img",
    )
    assert be.find_configs(tmp_path) == [cfg, grub]


def test_an_entry_without_a_persistent_overlay_is_refused() -> None:
    with pytest.raises(TargetError):
        be.slot_args(["root=live:UUID=x", "rd.live.image"], Slot.NEXT, NAMES)
