"""e2label (e2fsprogs): set an ext2/3/4 filesystem's label; `offset` reaches one inside a
disk image (e2fsprogs' `IMAGE?offset=N` syntax)."""

from __future__ import annotations

from pathlib import Path

from liveos_tools.run import run


def set_label(device: str | Path, label: str, *, offset: int = 0) -> None:
    run(["e2label", f"{device}?offset={offset}" if offset else str(device), label])
