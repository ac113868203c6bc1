"""ISO assembly on the host, read back with pycdlib and xorriso: the El Torito catalog, the
isohybrid MBR, checkisomd5, the CD boot arguments in every boot config (also the one
inside efiboot.img), and the squashfs byte for byte. The boot itself: tests/boot."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
from pathlib import Path

import pycdlib
import pytest

from liveos_tools.remix import iso
from liveos_tools.tools import checkisomd5, xorriso
from liveos_tools.writer.source import read_directory, read_iso
from tests.fixtures import isobuild

STICK_APPEND = (
    "initrd=initrd.img root=live:UUID=4C2A-11F0 rootfstype=vfat rw rd.live.image "
    "rd.live.overlay=UUID=4C2A-11F0 console=ttyS0 quiet"
)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _iso_file(pc: pycdlib.PyCdlib, path: str) -> bytes:
    out = io.BytesIO()
    pc.get_file_from_iso_fp(out, rr_path=path)
    return out.getvalue()


@pytest.fixture(scope="module")
def fixture_iso(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return isobuild.build_iso(tmp_path_factory.mktemp("src") / "live.iso", "classic").path


def _stick_tree(tmp: Path, src_iso: Path) -> Path:
    """The files a stick written by liveos-iso-to-disk holds (syslinux/, EFI/, images/)."""
    tree = tmp / "stick"
    src = read_iso(src_iso)
    for iso_path, rel in (
        ("/isolinux/vmlinuz", "syslinux/vmlinuz"),
        ("/isolinux/initrd.img", "syslinux/initrd.img"),
        ("/EFI/BOOT/BOOTX64.EFI", "EFI/BOOT/BOOTX64.EFI"),
        ("/images/efiboot.img", "images/efiboot.img"),
        ("/LiveOS/squashfs.img", "LiveOS/squashfs.img"),
    ):
        sf = src.get(iso_path)
        assert sf is not None
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        iso.copy_range(Path(sf.backing), sf.offset, sf.size, tree / rel)
    (tree / "syslinux" / "syslinux.cfg").write_text(
        f"default linux\nlabel linux\n  kernel vmlinuz\n  append {STICK_APPEND}\n"
    )
    (tree / "EFI" / "BOOT" / "grub.cfg").write_text(
        "search --no-floppy --fs-uuid --set=root 4C2A-11F0\nmenuentry 'Start' {\n"
        f"\tlinux /syslinux/vmlinuz {STICK_APPEND.removeprefix('initrd=initrd.img ')}\n"
        "\tinitrd /syslinux/initrd.img\n}\n"
    )
    (tree / "LiveOS" / "overlay-LIVE-4C2A-11F0").write_bytes(b"\0" * 4096)
    return tree


def test_iso_from_a_stick_boots_by_bios_efi_and_dd(tmp_path: Path, fixture_iso: Path) -> None:
    tree = _stick_tree(tmp_path, fixture_iso)
    before = {p: _sha(p) for p in tree.rglob("*") if p.is_file()}
    boot = iso.boot_set(read_directory(tree))
    assert (boot.bios, boot.efi, boot.source_args) == (True, True, ("console=ttyS0", "quiet"))
    squash = tree / "LiveOS" / "squashfs.img"
    work = tmp_path / "work"
    work.mkdir()
    extra = [xorriso.Graft("/LiveOS/home.img", tree / "LiveOS" / "overlay-LIVE-4C2A-11F0")]
    label = iso.check_label("Class Remix 1")
    layout = iso.stage(work, label=label, squashfs=squash, boot=boot, extra=extra)
    out = tmp_path / "remix.iso"
    seen: list[tuple[int, int]] = []
    iso.write_iso(layout, out, progress=lambda d, t: seen.append((d, t)))
    assert seen and seen[-1] == (out.stat().st_size, out.stat().st_size)

    # El Torito: BIOS isolinux and UEFI efiboot.img; the isohybrid MBR is a real one
    entries = xorriso.el_torito(out)
    assert entries == [
        xorriso.BootEntry("BIOS", "/isolinux/isolinux.bin"),
        xorriso.BootEntry("UEFI", "/images/efiboot.img"),
    ]
    head = out.read_bytes()[:512]
    assert head[510:512] == b"\x55\xaa"
    # isohdpfx.bin, with the boot image's address patched in from byte 432 on
    assert head[:432] == Path("/usr/lib/ISOLINUX/isohdpfx.bin").read_bytes()[:432]
    assert any(head[446 + 16 * i + 4] != 0 for i in range(4))  # a partition entry for dd

    # the implanted md5 is what checkisomd5 (and rd.live.check) verifies
    assert checkisomd5.check(out) == "PASS"
    assert checkisomd5.implanted(out) is not None
    damaged = tmp_path / "damaged.iso"
    shutil.copyfile(out, damaged)
    with open(damaged, "r+b") as f:
        f.seek(out.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert checkisomd5.check(damaged) == "FAIL"

    pc = pycdlib.PyCdlib()
    pc.open(str(out))
    try:
        assert pc.pvd.volume_identifier.decode().rstrip() == "Class_Remix_1"
        assert pc.eltorito_boot_catalog is not None
        assert hashlib.sha256(_iso_file(pc, "/LiveOS/squashfs.img")).hexdigest() == _sha(squash)
        assert _iso_file(pc, "/LiveOS/home.img") == b"\0" * 4096
        assert _iso_file(pc, "/images/pxeboot/vmlinuz") == (tree / "syslinux/vmlinuz").read_bytes()
        cfgs = {
            "isolinux": _iso_file(pc, "/isolinux/isolinux.cfg").decode(),
            "grub": _iso_file(pc, "/EFI/BOOT/grub.cfg").decode(),
        }
        efiboot = tmp_path / "efiboot.img"
        efiboot.write_bytes(_iso_file(pc, "/images/efiboot.img"))
        names = set()
        for d in ("/", "/isolinux", "/LiveOS"):
            names |= {
                c.rock_ridge.name().decode()
                for c in pc.list_children(rr_path=d)
                if c.rock_ridge is not None
            }
    finally:
        pc.close()
    cfgs["efiboot"] = subprocess.run(
        ["mtype", "-i", str(efiboot), "::EFI/BOOT/grub.cfg"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert not any(n.startswith("overlay-") for n in names)
    assert {"isolinux.bin", "ldlinux.c32", "squashfs.img"} <= names
    for name, text in cfgs.items():
        lines = [ln for ln in text.splitlines() if ln.strip().startswith(("append", "linux"))]
        assert lines, name
        for ln in lines:
            assert "root=live:CDLABEL=Class_Remix_1 rd.live.image console=ttyS0 quiet" in ln, (
                name,
                ln,
            )
            assert "rd.live.overlay" not in ln and "UUID" not in ln and " rw " not in ln
    assert "search --no-floppy --set=root -l 'Class_Remix_1'" in cfgs["efiboot"]
    # nothing of the stick changed
    assert {p: _sha(p) for p in tree.rglob("*") if p.is_file()} == before


def test_iso_from_a_base_iso_without_syslinux_boots_by_efi(tmp_path: Path) -> None:
    src = isobuild.build_iso(tmp_path / "grub.iso", "grub").path
    boot = iso.boot_set(read_iso(src))
    assert (boot.bios, boot.efi) == (False, True)
    sq = tmp_path / "squashfs.img"
    sf = read_iso(src).get("/LiveOS/squashfs.img")
    assert sf is not None
    iso.copy_range(Path(sf.backing), sf.offset, sf.size, sq)
    (tmp_path / "w").mkdir()
    out = tmp_path / "efi-only.iso"
    iso.write_iso(iso.stage(tmp_path / "w", label="EFI", squashfs=sq, boot=boot), out)
    assert xorriso.el_torito(out) == [xorriso.BootEntry("UEFI", "/images/efiboot.img")]
    assert checkisomd5.check(out) == "PASS"


def test_a_stick_without_efiboot_img_gets_one_made_of_its_efi_loaders(
    tmp_path: Path, fixture_iso: Path
) -> None:
    tree = _stick_tree(tmp_path, fixture_iso)
    (tree / "images" / "efiboot.img").unlink()  # as the reference writer leaves sticks
    boot = iso.boot_set(read_directory(tree))
    assert boot.efiboot is None and boot.efi
    (tmp_path / "w").mkdir()
    out = tmp_path / "made.iso"
    layout = iso.stage(
        tmp_path / "w", label="MADE", squashfs=tree / "LiveOS" / "squashfs.img", boot=boot
    )
    iso.write_iso(layout, out)
    assert [e.platform for e in xorriso.el_torito(out)] == ["BIOS", "UEFI"]
    efiboot = tmp_path / "efiboot.img"
    subprocess.run(
        [
            "xorriso",
            "-osirrox",
            "on",
            "-indev",
            str(out),
            "-extract",
            "/images/efiboot.img",
            str(efiboot),
        ],
        check=True,
        capture_output=True,
    )
    loader = subprocess.run(
        ["mtype", "-i", str(efiboot), "::EFI/BOOT/BOOTX64.EFI"], capture_output=True, check=True
    ).stdout
    assert loader == (tree / "EFI" / "BOOT" / "BOOTX64.EFI").read_bytes()
    cfg = subprocess.run(
        ["mtype", "-i", str(efiboot), "::EFI/BOOT/grub.cfg"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "search --no-floppy --set=root -l 'MADE'" in cfg
    assert "root=live:CDLABEL=MADE rd.live.image" in cfg
