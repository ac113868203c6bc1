"""unsquashfs listing: which LiveOS image layout a squashfs.img holds."""

from __future__ import annotations

from pathlib import Path

from liveos_tools.run import run

NESTED_NAMES = ("LiveOS/rootfs.img", "LiveOS/ext3fs.img")


def parse_listing(text: str) -> set[str]:
    """Paths from `unsquashfs -l -d ''` output, without the leading slash."""
    return {line.strip().lstrip("/") for line in text.splitlines() if line.startswith("/")}


def find_paths(image: str | Path, paths: tuple[str, ...]) -> set[str]:
    """Which of `paths` exist inside the squashfs image (reads directory tables only)."""
    out = run(["unsquashfs", "-no-progress", "-l", "-d", "", str(image), *paths]).stdout
    return parse_listing(out) & set(paths)
