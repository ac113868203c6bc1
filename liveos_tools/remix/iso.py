"""Assemble a bootable hybrid LiveOS ISO around a squashfs.img, with xorriso.

Boot paths (docs/ARCHITECTURE.md F2, the CD form of the boot contract):

* BIOS: El Torito through isolinux, when the source boots by syslinux/isolinux. The
  isolinux.bin and its modules come from this machine (Debian: isolinux,
  syslinux-common), so the boot sector and ldlinux.c32 are always of one version.
* EFI: El Torito through ``images/efiboot.img`` (a FAT image holding EFI/BOOT), when the
  source has EFI. Its grub.cfg is rewritten for the new label.
* isohybrid: the MBR code isohdpfx.bin (and a partition entry for the EFI image), so the
  ISO can also be copied to a stick with dd.

The kernel arguments are ``root=live:CDLABEL=<label> rd.live.image`` plus the source's
own harmless ones (quiet, console=...): no persistence, no rd.live.overlay, no UUIDs.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from liveos_tools.errors import ToolMissingError, UsageError
from liveos_tools.tools.xorriso import MAX_LABEL, ElTorito, Graft
from liveos_tools.writer.source import Source, SourceFile

ProgressFn = Callable[[int, int], None]

KERNEL = "images/pxeboot/vmlinuz"
INITRD = "images/pxeboot/initrd.img"
ISOLINUX_DIR = "isolinux"
EFIBOOT = "images/efiboot.img"
ISOLINUX_DIRS = (Path("/usr/lib/ISOLINUX"), Path("/usr/share/syslinux"))
#: What isolinux loads after its boot sector, and the menu.
ISOLINUX_MODULES = ("ldlinux.c32", "libcom32.c32", "libutil.c32", "menu.c32")
#: Words of the source's command line that belong to its stick, not to a CD: persistence,
#: the stick's UUID, its home.img path. The rest (quiet, console=...) is kept.
STICK_ARGS = re.compile(
    r"^(root=|rootfstype=|initrd=|rd\.live\.|rd\.overlay|ro$|rw$|liveimg$|overlay=|"
    r"BOOT_IMAGE=|inst\.stage2=|persistenthome=|CDLABEL=)"
)
_LABEL_OK = re.compile(r"^[A-Za-z0-9_.+-]+$")


def check_label(label: str) -> str:
    """The ISO's volume label: at most 32 characters a kernel argument can carry.

    Spaces become '_': dracut 059 reads root=live:CDLABEL=A\\x20B as 'Ax20B' and never
    finds the CD (seen under qemu), and a literal space would end the argument.
    """
    clean = label.strip().replace(" ", "_")
    if len(clean) > MAX_LABEL:
        raise UsageError(
            f"--label {label!r} has {len(clean)} characters; an ISO label holds at most "
            f"{MAX_LABEL}",
            "choose a shorter label",
        )
    if not clean or not _LABEL_OK.match(clean):
        raise UsageError(
            f"--label {label!r}: use letters, digits and _ . + - only",
            "the label goes into root=live:CDLABEL=... on the kernel command line",
        )
    return clean


def kernel_args(label: str, source_args: Sequence[str]) -> list[str]:
    kept = [w for w in source_args if not STICK_ARGS.match(w)]
    return [f"root=live:CDLABEL={label}", "rd.live.image", *kept]


def isolinux_cfg(label: str, args: Sequence[str], *, timeout_s: int = 5) -> str:
    line = " ".join(args)
    return "\n".join(
        [
            "ui menu.c32",
            f"menu title {label}",
            "default linux",
            f"timeout {max(1, timeout_s * 10)}",
            "",
            "label linux",
            f"  menu label ^Start {label}",
            f"  kernel /{KERNEL}",
            f"  append initrd=/{INITRD} {line}",
            "",
            "label check",
            f"  menu label Test this ^media & start {label}",
            f"  kernel /{KERNEL}",
            f"  append initrd=/{INITRD} {line} rd.live.check",
            "",
        ]
    )


_LINUX = re.compile(r"^(\s*)(linux|linuxefi)\s+\S+(.*)$")
_INITRD = re.compile(r"^(\s*)(initrd|initrdefi)\s+\S+.*$")
_SEARCH = re.compile(r"^(\s*)search\b.*$")


def grub_cfg(source_cfg: str | None, label: str, args: Sequence[str]) -> str:
    """The source's GRUB menu, finding the ISO by label and booting its kernel with the
    CD's arguments; a plain two-entry menu when the source has none."""
    if not source_cfg or "menuentry" not in source_cfg:
        source_cfg = (
            'set default="0"\nset timeout=5\nsearch\n'
            f"menuentry 'Start {label}' {{\n\tlinux x\n\tinitrd x\n}}\n"
            f"menuentry 'Test this media & start {label}' {{\n\tlinux x rd.live.check\n"
            "\tinitrd x\n}\n"
        )
    line = " ".join(args)
    out = []
    for text in source_cfg.splitlines():
        if m := _SEARCH.match(text):
            out.append(f"{m.group(1)}search --no-floppy --set=root -l '{label}'")
        elif m := _LINUX.match(text):
            keep = [w for w in m.group(3).split() if w in ("rd.live.check", "nomodeset")]
            out.append(f"{m.group(1)}{m.group(2)} /{KERNEL} {' '.join([line, *keep])}")
        elif m := _INITRD.match(text):
            out.append(f"{m.group(1)}{m.group(2)} /{INITRD}")
        else:
            out.append(text)
    return "\n".join(out) + "\n"


# --- what the new ISO boots with --------------------------------------------------------------


@dataclass(frozen=True)
class BootSet:
    """The boot files of the stick (or of --base-iso) that go into the new ISO."""

    origin: str
    kernel: SourceFile
    initrd: SourceFile
    bios: bool  # the source boots by syslinux/isolinux: the ISO gets isolinux
    efi_files: tuple[SourceFile, ...]  # EFI/BOOT/* loaders (grub.cfg is written anew)
    efiboot: SourceFile | None
    grub_cfg: str | None
    source_args: tuple[str, ...]

    @property
    def efi(self) -> bool:
        """The ISO can boot by EFI: an efiboot.img to copy, or EFI loaders to make one of."""
        return self.efiboot is not None or any(
            f.path.lower().endswith(".efi") for f in self.efi_files
        )

    def size(self) -> int:
        files = [self.kernel, self.initrd, *self.efi_files]
        return sum(f.size for f in files) + (self.efiboot.size if self.efiboot else 0)


def boot_set(src: Source) -> BootSet:
    """Find the kernel, initrd, boot loaders and kernel arguments of a stick or ISO."""
    from liveos_tools.writer.layout import detect

    layout = detect(src, squash_holds_nested=True)
    kernel, initrd = src.get(layout.kernel), src.get(layout.initrd)
    assert kernel is not None and initrd is not None
    efi = tuple(
        f
        for p in layout.efi_files
        if (f := src.get(p)) is not None and not p.lower().endswith(".cfg")
    )
    grub_text = src.read_text(layout.grub_cfg) if layout.grub_cfg else None
    return BootSet(
        origin=src.origin,
        kernel=kernel,
        initrd=initrd,
        bios=layout.syslinux_cfg is not None,
        efi_files=efi,
        efiboot=src.get(layout.efiboot) if layout.efiboot else None,
        grub_cfg=grub_text,
        source_args=_source_args(src, layout.syslinux_cfg, layout.grub_cfg),
    )


def _source_args(src: Source, syslinux_cfg: str | None, grub: str | None) -> tuple[str, ...]:
    from liveos_tools.writer.layout import source_boot_args

    return tuple(w for w in source_boot_args(src, syslinux_cfg, grub) if not STICK_ARGS.match(w))


def find_isolinux(name: str) -> Path:
    for d in ISOLINUX_DIRS:
        if (d / name).is_file():
            return d / name
    raise ToolMissingError(f"{name} (looked in {', '.join(map(str, ISOLINUX_DIRS))})", "isolinux")


def host_path(sf: SourceFile, workdir: Path) -> Path:
    """A host file holding exactly `sf`: its own file, or a copy of its byte range."""
    backing = Path(sf.backing)
    if sf.offset == 0 and backing.is_file() and backing.stat().st_size == sf.size:
        return backing
    dest = workdir / sf.path.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    copy_range(backing, sf.offset, sf.size, dest)
    return dest


def copy_range(src: Path, offset: int, length: int, dest: Path) -> None:
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        fin.seek(offset)
        left = length
        while left > 0:
            block = fin.read(min(left, 4 << 20))
            if not block:
                break
            fout.write(block)
            left -= len(block)


# --- the image ----------------------------------------------------------------------------


@dataclass(frozen=True)
class IsoLayout:
    """Everything that goes into the ISO, by ISO path, and how it boots."""

    label: str
    args: tuple[str, ...]
    grafts: tuple[Graft, ...]
    boot: ElTorito

    def size_estimate(self) -> int:
        total = 0
        for g in self.grafts:
            if g.host_path.is_dir():
                total += sum(p.stat().st_size for p in g.host_path.rglob("*") if p.is_file())
            else:
                total += g.host_path.stat().st_size
        return total + (1 << 20)


def stage(
    workdir: Path,
    *,
    label: str,
    squashfs: Path,
    boot: BootSet,
    extra: Sequence[Graft] = (),
) -> IsoLayout:
    """Put the small boot files in workdir/stage; graft the big ones where they are."""
    from liveos_tools.tools import mtools

    root = workdir / "stage"
    root.mkdir(parents=True)
    args = tuple(kernel_args(label, boot.source_args))
    files = workdir / "source-files"
    grafts = [
        Graft("/LiveOS/squashfs.img", squashfs),
        Graft(f"/{KERNEL}", host_path(boot.kernel, files)),
        Graft(f"/{INITRD}", host_path(boot.initrd, files)),
    ]
    bios_image = None
    if boot.bios:
        iso_dir = root / ISOLINUX_DIR
        iso_dir.mkdir()
        # a copy: -boot-info-table patches isolinux.bin
        shutil.copyfile(find_isolinux("isolinux.bin"), iso_dir / "isolinux.bin")
        from liveos_tools.tools.syslinux import MODULE_DIRS, find_file

        for mod in ISOLINUX_MODULES:
            shutil.copyfile(find_file(mod, MODULE_DIRS), iso_dir / mod)
        (iso_dir / "isolinux.cfg").write_text(isolinux_cfg(label, args))
        bios_image = f"{ISOLINUX_DIR}/isolinux.bin"
    efi_image = None
    grub_text = grub_cfg(boot.grub_cfg, label, args)
    if boot.efi_files or boot.efiboot:
        efi_dir = root / "EFI" / "BOOT"
        efi_dir.mkdir(parents=True)
        for sf in boot.efi_files:
            grafts.append(Graft(f"/EFI/BOOT/{Path(sf.path).name}", host_path(sf, files)))
        (efi_dir / "grub.cfg").write_text(grub_text)
    cfg = workdir / "efiboot-grub.cfg"
    cfg.write_text(grub_text)
    img = root / EFIBOOT
    if boot.efiboot is not None:
        img.parent.mkdir(parents=True, exist_ok=True)
        copy_range(Path(boot.efiboot.backing), boot.efiboot.offset, boot.efiboot.size, img)
        # every grub.cfg in the FAT image: GRUB's prefix names its own directory
        for rel in mtools.listing(img, 0, "EFI"):
            if rel.lower().endswith("/grub.cfg"):
                mtools.copy_in(img, 0, cfg, rel)
        efi_image = EFIBOOT
    elif boot.efi:
        # A stick with EFI loaders but no efiboot.img (the reference writer leaves it out):
        # El Torito's EFI entry needs a FAT image, so make one holding EFI/BOOT.
        loaders = [(Path(sf.path).name, host_path(sf, files)) for sf in boot.efi_files]
        make_efiboot(img, [*loaders, ("grub.cfg", cfg)])
        efi_image = EFIBOOT
    grafts.insert(0, Graft("/", root))
    grafts += list(extra)
    mbr = find_isolinux("isohdpfx.bin") if bios_image else None
    catalog = f"{ISOLINUX_DIR}/boot.cat" if bios_image else "images/boot.cat"
    return IsoLayout(label, args, tuple(grafts), ElTorito(bios_image, catalog, efi_image, mbr))


def make_efiboot(dest: Path, files: Sequence[tuple[str, Path]]) -> None:
    """A FAT image holding EFI/BOOT/<name> for each (name, host file)."""
    from liveos_tools.tools import mkfs_fat, mtools

    data = sum(p.stat().st_size for _, p in files)
    # room for FAT tables, directories and cluster slack, in whole MiB
    size = ((data * 11 // 10 + (2 << 20)) >> 20) << 20
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as f:
        f.truncate(size)
    mkfs_fat.make(dest, 0, size, label="EFIBOOT", volume_id="45464942", hidden_sectors=0)
    mtools.mmd(dest, 0, "EFI/BOOT")
    for name, host in files:
        mtools.copy_in(dest, 0, host, f"EFI/BOOT/{name}")


@contextmanager
def watch_growth(path: Path, total: int, progress: ProgressFn | None) -> Iterator[None]:
    """Report a file's size while a program writes it (xorriso prints no byte counts)."""
    if progress is None:
        yield
        return
    done = threading.Event()

    def poll() -> None:
        while not done.wait(0.5):
            with suppress(OSError):
                progress(min(os.stat(path).st_size, total), total)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def write_iso(layout: IsoLayout, dest: Path, *, progress: ProgressFn | None = None) -> None:
    """xorriso, then implantisomd5; fsync. `dest` is the temporary name the caller renames."""
    from liveos_tools.tools import implantisomd5, xorriso

    total = layout.size_estimate()
    if progress is not None:
        progress(0, total)  # the rate counts from here, also when xorriso is quick
    with watch_growth(dest, total, progress):
        xorriso.mkisofs(dest, layout.label, layout.grafts, layout.boot, timeout=None)
    implantisomd5.implant(dest)
    fd = os.open(dest, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if progress is not None:
        size = dest.stat().st_size
        progress(size, size)
