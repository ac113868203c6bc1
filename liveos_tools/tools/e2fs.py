"""dumpe2fs -h: an ext2/3/4 filesystem's size and use, read without mounting it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from liveos_tools.errors import CorruptError
from liveos_tools.run import run


@dataclass(frozen=True)
class Ext4Usage:
    block_size: int
    block_count: int
    free_blocks: int
    state: str
    label: str | None

    @property
    def total_bytes(self) -> int:
        return self.block_size * self.block_count

    @property
    def used_bytes(self) -> int:
        return self.block_size * (self.block_count - self.free_blocks)


def parse_dumpe2fs(text: str) -> Ext4Usage:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    try:
        label = fields.get("Filesystem volume name", "<none>")
        return Ext4Usage(
            block_size=int(fields["Block size"]),
            block_count=int(fields["Block count"]),
            free_blocks=int(fields["Free blocks"]),
            state=fields.get("Filesystem state", "unknown"),
            label=None if label == "<none>" else label,
        )
    except (KeyError, ValueError) as exc:
        raise CorruptError(f"unrecognised dumpe2fs output (missing {exc})") from None


def usage(image: str | Path) -> Ext4Usage:
    return parse_dumpe2fs(run(["dumpe2fs", "-h", str(image)]).stdout)
