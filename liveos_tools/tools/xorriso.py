"""xorriso: build an ISO 9660 image (its mkisofs emulation) and read one back.

Only the argument list is built here; the ISO itself is written by xorriso (real,
maintained code), never by us. `mkisofs_argv` is pure so a plan can show it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from liveos_tools.run import run

#: ISO 9660 volume identifiers hold 32 characters.
MAX_LABEL = 32


@dataclass(frozen=True)
class Graft:
    """A file or directory of the host put at `iso_path` in the image (no copy made)."""

    iso_path: str
    host_path: Path

    def spec(self) -> str:
        # '=' and '\\' in pathspecs are escaped with a backslash (xorriso -graft-points).
        def esc(text: str) -> str:
            return text.replace("\\", "\\\\").replace("=", "\\=")

        return f"{esc(self.iso_path)}={esc(str(self.host_path))}"


@dataclass(frozen=True)
class ElTorito:
    """Boot records: BIOS through isolinux, EFI through a FAT image, hybrid MBR for dd."""

    bios_image: str | None  # 'isolinux/isolinux.bin'
    catalog: str  # 'isolinux/boot.cat'
    efi_image: str | None  # 'images/efiboot.img'
    isohybrid_mbr: Path | None  # /usr/lib/ISOLINUX/isohdpfx.bin


def mkisofs_argv(output: Path, label: str, grafts: Sequence[Graft], boot: ElTorito) -> list[str]:
    argv = [
        "xorriso",
        "-as",
        "mkisofs",
        "-o",
        str(output),
        "-V",
        label,
        # level 3: a squashfs.img of 4 GiB or more is stored in several extents
        "-iso-level",
        "3",
        "-R",
        "-J",
        "-joliet-long",
    ]
    if boot.isohybrid_mbr is not None:
        argv += ["-isohybrid-mbr", str(boot.isohybrid_mbr)]
    if boot.bios_image is not None:
        argv += [
            "-b",
            boot.bios_image,
            "-c",
            boot.catalog,
            "-no-emul-boot",
            "-boot-load-size",
            "4",
            "-boot-info-table",
        ]
    if boot.efi_image is not None:
        if boot.bios_image is not None:
            argv.append("-eltorito-alt-boot")
        else:
            argv += ["-c", boot.catalog]
        argv += ["-e", boot.efi_image, "-no-emul-boot"]
        if boot.isohybrid_mbr is not None:
            # a GPT/MBR partition entry for the EFI image, so a dd'd stick boots by EFI too
            argv.append("-isohybrid-gpt-basdat")
    argv.append("-graft-points")
    argv += [g.spec() for g in grafts]
    return argv


def mkisofs(
    output: Path, label: str, grafts: Sequence[Graft], boot: ElTorito, *, timeout: float | None
) -> None:
    run(mkisofs_argv(output, label, grafts, boot), timeout=timeout)


@dataclass(frozen=True)
class BootEntry:
    platform: str  # 'BIOS' or 'UEFI'
    image: str  # the boot image's path in the ISO


def parse_el_torito(text: str) -> list[BootEntry]:
    """Boot entries from `xorriso -report_el_torito plain` output."""
    entries: list[BootEntry] = []
    for line in text.splitlines():
        # El Torito boot img :   1  BIOS  y   none  0x0000  0x00      4     ...
        # El Torito img path :   1  /isolinux/isolinux.bin
        words = line.split(":", 1)
        if len(words) != 2:
            continue
        key, value = words[0].strip(), words[1].split()
        if key == "El Torito boot img" and len(value) >= 2 and value[0].isdigit():
            entries.append(BootEntry(value[1], ""))
        elif key == "El Torito img path" and len(value) >= 2 and value[0].isdigit():
            i = int(value[0]) - 1
            if 0 <= i < len(entries):
                entries[i] = BootEntry(entries[i].platform, value[1])
    return entries


def el_torito(iso: Path) -> list[BootEntry]:
    out = run(["xorriso", "-indev", str(iso), "-report_el_torito", "plain"])
    return parse_el_torito(out.stdout)
