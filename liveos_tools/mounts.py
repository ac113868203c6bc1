"""Mounts, read from /proc/self/mountinfo (a pure parser, so it is testable anywhere)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple


class Mount(NamedTuple):
    mountpoint: str
    source: str
    fstype: str
    majmin: tuple[int, int]
    readonly: bool
    root: str  # the path inside the source filesystem that is mounted (bind mounts)


def _unescape(text: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 3 < len(text) and text[i + 1 : i + 4].isdigit():
            out.append(chr(int(text[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        pre, sep, post = line.partition(" - ")
        if not sep:
            continue
        fields, tail = pre.split(), post.split()
        if len(fields) < 6 or len(tail) < 2:
            continue
        major, _, minor = fields[2].partition(":")
        options = fields[5].split(",")
        mounts.append(
            Mount(
                mountpoint=_unescape(fields[4]),
                source=_unescape(tail[1]),
                fstype=tail[0],
                majmin=(int(major), int(minor)),
                readonly="ro" in options,
                root=_unescape(fields[3]),
            )
        )
    return mounts


def mounts() -> list[Mount]:
    return parse_mountinfo(Path("/proc/self/mountinfo").read_text())


def mount_of(path: str | Path, table: list[Mount] | None = None) -> Mount | None:
    """The mount that holds `path` (the longest mountpoint prefix; later mounts win)."""
    real = os.path.realpath(path)
    best: Mount | None = None
    for m in table if table is not None else mounts():
        mp = m.mountpoint
        inside = real == mp or real.startswith(mp.rstrip("/") + "/")
        if inside and (best is None or len(mp) >= len(best.mountpoint)):
            best = m
    return best


def mounts_of_device(majmin: tuple[int, int], table: list[Mount] | None = None) -> list[Mount]:
    return [m for m in (table if table is not None else mounts()) if m.majmin == majmin]
