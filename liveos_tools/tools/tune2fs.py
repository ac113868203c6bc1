"""tune2fs: ext2/3/4 features changed in place (here: the journal dropped and made anew)."""

from __future__ import annotations

from pathlib import Path

from liveos_tools.run import run


def remove_journal(image: str | Path) -> None:
    """Drop the journal (the filesystem must be clean): its blocks become free blocks."""
    run(["tune2fs", "-O", "^has_journal", str(image)])


def add_journal(image: str | Path) -> None:
    """A new journal of the default size for the filesystem."""
    run(["tune2fs", "-j", str(image)])
