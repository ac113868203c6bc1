"""espcfg's pure parts, and a config that is not a path going through point_configs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from liveos_tools import bootentries as be
from liveos_tools import espcfg
from liveos_tools.bootentries import Slot
from liveos_tools.media import Medium, Source
from tests.unit.test_bootentries import GRUB, NAMES, SYSLINUX


@dataclass
class MemoryConfig:
    """A ConfigFile held in memory: what the ESP's grub.cfg is to the switch."""

    name: str
    text: str
    writes: list[str] = field(default_factory=list)

    def read_text(self) -> str:
        return self.text

    def replace_text(self, text: str) -> bool:
        if text == self.text:
            return False
        self.text = text
        self.writes.append(text)
        return True


def test_a_config_elsewhere_is_pointed_with_the_paths(tmp_path: Path) -> None:
    path = tmp_path / "extlinux.conf"
    path.write_text(SYSLINUX)
    esp = MemoryConfig("grub.cfg", GRUB)
    changed = be.point_configs([path, esp], NAMES, default=Slot.NEXT, previous=None)
    assert changed == [path, esp]
    assert be.default_slot(esp.text) is Slot.NEXT and be.default_slot(path.read_text()) is Slot.NEXT
    assert "linuxefi" in esp.text  # rendered as GRUB, by its name
    # idempotent: a re-run writes nothing
    assert be.point_configs([path, esp], NAMES, default=Slot.NEXT, previous=None) == []
    assert len(esp.writes) == 1
    be.point_configs([path, esp], NAMES, default=Slot.CURRENT, previous=Slot.PREVIOUS)
    assert be.previous_slot(esp.text) is Slot.PREVIOUS
    be.point_configs([path, esp], NAMES, default=Slot.CURRENT, previous=None)
    assert (esp.text, path.read_text()) == (GRUB, SYSLINUX)


def test_which_files_on_an_esp_are_grub_configs() -> None:
    assert espcfg._is_grub_config("EFI/BOOT/grub.cfg")
    assert espcfg._is_grub_config("EFI/fedora/GRUB.CFG")
    assert espcfg._is_grub_config("EFI/BOOT/BOOT.conf")
    assert not espcfg._is_grub_config("EFI/BOOT/grub.cfg.new")  # our own temporary name
    assert not espcfg._is_grub_config("EFI/BOOT/BOOTX64.EFI")


def test_a_directory_target_is_not_searched_and_the_plan_says_so(tmp_path: Path) -> None:
    from liveos_tools.media import HomeKind, ImageLayout, OverlayKind, Volume

    medium = Medium(
        source=Source.DIRECTORY,
        target=str(tmp_path),
        root=tmp_path,
        livedir="LiveOS",
        volume=Volume("/dev/sdb1", "LIVE", "1234", "ext4"),
        overlay_path=None,
        overlay_kind=OverlayKind.DM,
        image_layout=ImageLayout.NESTED,
        squashfs_path=None,
        rootfs_path=None,
        home_path=None,
        home_kind=HomeKind.ABSENT,
        swap_path=None,
    )
    found = espcfg.find(medium)
    assert found.configs == ()
    assert "its grub.cfg is not rewritten" in found.notes[0]
