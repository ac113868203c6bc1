"""blkid: what is on a device or image file (filesystem, label, UUID, partition table)."""

from __future__ import annotations

from pathlib import Path

from liveos_tools.errors import ToolError
from liveos_tools.run import run

#: blkid exits 2 when it finds nothing it recognises.
_NOTHING_FOUND = 2


def _unescape(value: str) -> str:
    # `-o export` escapes for a shell: `LABEL=MY\ STICK`, `a\$b`, `\"`.
    out, i = [], 0
    while i < len(value):
        if value[i] == "\\" and i + 1 < len(value):
            i += 1
        out.append(value[i])
        i += 1
    return "".join(out)


def parse_export(text: str) -> dict[str, str]:
    """Parse `blkid -o export` KEY=VALUE lines (one device), undoing its shell escapes."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            out[key.strip()] = _unescape(value)
    return out


def probe(path: str | Path, *, offset: int | None = None) -> dict[str, str]:
    """Low-level probe (no cache): {} when nothing is recognised."""
    argv = ["blkid", "-p", "-o", "export"]
    if offset:
        argv += ["-O", str(offset)]
    result = run([*argv, str(path)], check=False)
    if result.returncode == _NOTHING_FOUND:
        return {}
    if result.returncode != 0:
        raise ToolError(result.argv, result.returncode, result.stderr)
    return parse_export(result.stdout)
