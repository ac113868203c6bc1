"""The space check of a StickSpec, before anything is written: FAT's 4 GiB file limit, a
new filesystem's capacity, or an existing one's free space counted in write order."""

from __future__ import annotations

from liveos_tools.errors import NoSpaceError
from liveos_tools.units import format_size
from liveos_tools.writer.existing import existing_bytes, free_bytes
from liveos_tools.writer.options import (
    FAT_MAX_FILE,
    FS_OVERHEAD,
    RESERVE,
    OverlayAction,
    Sizes,
    StickFs,
)
from liveos_tools.writer.spec import StickSpec


def check(spec: StickSpec) -> None:
    sizes = spec.sizes
    if spec.fstype == "vfat":
        for what, n in (
            ("the live image", sizes.image),
            ("the overlay", sizes.overlay),
            ("home.img", sizes.home),
            ("swap.img", sizes.swap),
        ):
            if n > FAT_MAX_FILE:
                raise NoSpaceError(
                    f"{what} would be {format_size(n)}: FAT cannot hold a file of 4 GiB or more",
                    "use smaller sizes (at most 4095 MiB), or --format with ext4",
                )
    if spec.fs.new:
        need, capacity = sizes.total + RESERVE, int(spec.fs.length * (1 - FS_OVERHEAD))
        if need > capacity:
            raise NoSpaceError(
                f"{spec.target.spec} is too small: the stick needs {format_size(need)} (image "
                f"{format_size(sizes.image)}, overlay {format_size(sizes.overlay)}, home "
                f"{format_size(sizes.home)}, swap {format_size(sizes.swap)}, 100 MiB left "
                f"free), the filesystem holds {format_size(capacity)}",
                "use a bigger stick, or smaller --overlay-size-mb/--home-size-mb/--swap-size-mb",
            )
        return
    check_free_space(spec.fs, spec.target.spec, write_order(spec), sizes)


def write_order(spec: StickSpec) -> list[tuple[str, int]]:
    """Every file this spec writes into an existing filesystem, with its size, in the
    order written (each old file goes just before its new one)."""
    order = [(spec.image.rel, spec.image.size)] if spec.image else []
    order += [(rel, sf.size) for sf, rel in spec.boot.files]
    ov = spec.overlay
    if ov.rel and ov.size and ov.action in (OverlayAction.NEW, OverlayAction.COPY):
        order.append((ov.rel, ov.size))
    if spec.sizes.home:
        order.append((spec.home.rel, spec.sizes.home))
    if spec.swap_size:
        order.append((f"{spec.livedir}/swap.img", spec.swap_size))
    return order


def check_free_space(fs: StickFs, where: str, order: list[tuple[str, int]], sizes: Sizes) -> None:
    """Writing into an existing filesystem: its files stay, so what counts is its free
    space plus what the replaced files free, with 100 MiB left at the end, as the reference
    tool demands. Checked step by step: no write may run out of space half-way."""
    free, unit = free_bytes(fs)
    left = lowest = free
    for rel, new in order:
        left += existing_bytes(fs, rel) - -(-new // unit) * unit
        lowest = min(lowest, left)
    if lowest < 0 or left < RESERVE:
        short = max(RESERVE - left, -lowest)
        raise NoSpaceError(
            f"{where} has too little free space: it has {format_size(free)} free, the files "
            f"to write (image {format_size(sizes.image)}, overlay {format_size(sizes.overlay)}"
            f", home {format_size(sizes.home)}, swap {format_size(sizes.swap)}, boot files) "
            f"need {format_size(short)} more, counting what the files they replace free and "
            "100 MiB left free",
            "delete files from it, or use smaller --overlay-size-mb/--home-size-mb/"
            "--swap-size-mb (or --format it, which erases it)",
        )
