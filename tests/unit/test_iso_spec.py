"""The writer's decision step and step builder, without writing: spec.decide() ->
space.check() -> steps.build() for a new disk image target (nothing is created)."""

from __future__ import annotations

from pathlib import Path

import pytest

from liveos_tools.errors import NoSpaceError
from liveos_tools.writer import bootcfg, space, spec, steps
from liveos_tools.writer import layout as lay
from liveos_tools.writer.options import HomeAction, OverlayAction, WriteOptions
from liveos_tools.writer.source import Source, SourceFile, SourceKind
from liveos_tools.writer.target import resolve

MIB = 1024 * 1024
LAYOUT = lay.Layout(
    lay.LayoutKind.CLASSIC,
    "LiveOS",
    "/LiveOS/squashfs.img",
    True,
    "/isolinux/vmlinuz",
    "/isolinux/initrd.img",
    None,
    None,
    ("/EFI/BOOT/BOOTX64.EFI",),
    None,
    ("quiet",),
)


def _src(image_size: int = 20 * MIB) -> Source:
    sizes = {
        "/LiveOS/squashfs.img": image_size,
        "/isolinux/vmlinuz": 8 * MIB,
        "/isolinux/initrd.img": 1 * MIB,
        "/EFI/BOOT/BOOTX64.EFI": 4096,
    }
    return Source(
        SourceKind.ISO,
        "x.iso",
        "LIVE TEST",
        {p: SourceFile(p, n, "/dev/null", 0) for p, n in sizes.items()},
    )


def decide(tmp_path: Path, size: int, **opts: object) -> spec.StickSpec:
    o = WriteOptions(format=True, format_size=size, **opts)  # type: ignore[arg-type]
    target = resolve(str(tmp_path / "new.img"), format_size=size, formatting=True)
    return spec.decide(_src(), LAYOUT, target, o)


def test_ext4_on_msdos_gets_an_esp_and_exact_sectors(tmp_path: Path) -> None:
    s = decide(tmp_path, 400 * MIB, fstype="ext4", overlay_size=16 * MIB)
    assert s.parts is not None and not s.parts.gpt
    assert s.parts.placed == [(MIB, 335 * MIB), (336 * MIB, 64 * MIB)]
    assert (s.fs.device, s.fs.offset, s.fs.fstype, s.fs.label) == (
        str(tmp_path / "new.img"),
        MIB,
        "ext4",
        "LIVE_TEST",
    )
    assert s.overlay.action is OverlayAction.NEW and s.overlay.size == 16 * MIB
    assert s.overlay.rel == f"LiveOS/overlay-LIVE_TEST-{s.fs.uuid}"
    assert s.home.action is HomeAction.NONE
    assert (s.fw_disk, s.part_start) == (str(tmp_path / "new.img"), MIB)
    space.check(s)
    plan, result, run = steps.build(s)
    text = plan.render()
    assert "p1 ext4 sectors 2048-688127, p2 vfat (ESP) sectors 688128-819199" in text
    assert "-E offset=1048576,nodiscard" in text
    assert f"make ext4 labelled LIVE_TEST, UUID {s.fs.uuid} on p1" in text
    assert result.overlay_name == f"overlay-LIVE_TEST-{s.fs.uuid}"
    assert run.spec is s and not (tmp_path / "new.img").exists()  # building writes nothing


def test_efi_is_gpt_with_the_esp_first(tmp_path: Path) -> None:
    s = decide(tmp_path, 400 * MIB, fstype="vfat", efi=True)
    assert s.parts is not None and s.parts.gpt and s.boot.gpt
    assert [p.spec.esp for p in s.parts.parts] == [True, False]
    assert s.parts.live.number == 2 and s.fs.offset == 65 * MIB
    assert s.boot.cfg_name == "syslinux.cfg" and s.overlay.action is OverlayAction.NONE
    no_esp = decide(tmp_path, 400 * MIB, fstype="vfat", efi=True, noesp=True)
    assert no_esp.parts is not None and no_esp.parts.esp is None


def test_space_refusals(tmp_path: Path) -> None:
    with pytest.raises(NoSpaceError, match="too small"):
        space.check(decide(tmp_path, 400 * MIB, fstype="ext4", overlay_size=390 * MIB))
    with pytest.raises(NoSpaceError, match="FAT cannot hold a file of 4 GiB"):
        space.check(decide(tmp_path, 8192 * MIB, fstype="vfat", overlay_size=4096 * MIB))


def test_a_flat_squashfs_takes_overlayfs_persistence(tmp_path: Path) -> None:
    flat = lay.Layout(**{**LAYOUT.__dict__, "kind": lay.LayoutKind.FLAT, "nested": False})
    o = WriteOptions(format=True, format_size=400 * MIB, fstype="ext4", overlay_size=MIB)
    target = resolve(str(tmp_path / "new.img"), format_size=400 * MIB, formatting=True)
    s = spec.decide(_src(), flat, target, o)
    assert s.overlay.persistence is bootcfg.Persistence.OVERLAYFS
    assert any("flat" in n for n in s.notes)


def test_a_home_img_below_the_library_minimum_is_refused_before_writing(tmp_path: Path) -> None:
    from liveos_tools.errors import UsageError

    with pytest.raises(UsageError, match=r"home\.img of 8 MiB is too small"):
        decide(tmp_path, 400 * MIB, fstype="ext4", home_size=8 * MIB, encrypt_home=False)
    ok = decide(tmp_path, 400 * MIB, fstype="ext4", home_size=16 * MIB, encrypt_home=False)
    assert ok.home.action is HomeAction.CREATE and ok.sizes.home == 16 * MIB
