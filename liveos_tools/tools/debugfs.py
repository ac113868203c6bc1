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


def parse_stat_size(text: str) -> int | None:
    """The file size from `debugfs -R 'stat PATH'` (`... Size: 1044480 ...`)."""
    import re

    m = re.search(r"\bSize: (\d+)", text)
    return int(m.group(1)) if m else None


def stat(image: str | Path, path: str) -> str | None:
    """`stat` of `path` in the image (`IMAGE?offset=N` works too); None when missing."""
    res = run(["debugfs", "-R", f"stat /{path.strip('/')}", str(image)], check=False)
    return res.stdout if res.returncode == 0 and "Inode:" in res.stdout else None


def blocks(image: str | Path, path: str) -> list[int]:
    """The filesystem blocks of `path`, in file order (`debugfs -R 'blocks PATH'`)."""
    out = run(["debugfs", "-R", f"blocks /{path.strip('/')}", str(image)]).stdout
    return [int(b) for b in out.split()]
