"""debugfs: read an ext2/3/4 filesystem image without mounting it."""

from __future__ import annotations

from pathlib import Path

from liveos_tools.run import run


def parse_ls_p(text: str) -> list[str]:
    """Names from `debugfs -R 'ls -p DIR'`: lines like /12/040755/0/0/name//."""
    return [line.split("/")[5] for line in text.splitlines() if line.count("/") >= 6]


def list_dir(image: str | Path, folder: str) -> list[str]:
    """The names in `folder` of the image; [] when it is missing or nothing reads."""
    out = run(["debugfs", "-R", f"ls -p /{folder.strip('/')}", str(image)], check=False)
    return parse_ls_p(out.stdout)
