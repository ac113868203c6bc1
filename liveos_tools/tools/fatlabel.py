"""fatlabel (dosfstools): set a FAT filesystem's label on a device or partition node.
(Inside an image at an offset, mtools' mlabel does it: tools/mtools.label.)"""

from __future__ import annotations

from pathlib import Path

from liveos_tools.run import run


def set_label(device: str | Path, label: str) -> None:
    run(["fatlabel", str(device), label])
