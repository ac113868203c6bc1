"""tune2fs: ext2/3/4 features read and changed in place (here: the journal dropped and
made anew)."""

from __future__ import annotations

from pathlib import Path

from liveos_tools.run import run


def parse_features(text: str) -> set[str]:
    """The 'Filesystem features:' of `tune2fs -l` (or `dumpe2fs -h`) output."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "Filesystem features":
            return set(value.split())
    return set()


def features(image: str | Path) -> set[str]:
    return parse_features(run(["tune2fs", "-l", str(image)]).stdout)


def remove_journal(image: str | Path) -> bool:
    """Drop the journal (the filesystem must be clean): its blocks become free blocks.
    Returns whether there was one (an ext2 filesystem has none)."""
    if "has_journal" not in features(image):
        return False
    run(["tune2fs", "-O", "^has_journal", str(image)])
    return True


def add_journal(image: str | Path) -> None:
    """A new journal of the default size for the filesystem."""
    run(["tune2fs", "-j", str(image)])
