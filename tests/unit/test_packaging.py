"""Packaging and import hygiene: the library stays free of textual, and every package ships."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent


def test_every_package_folder_is_listed_in_pyproject() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = set()
    for top, name in (("liveos_tools", "liveos_tools"), ("tui", "liveos_tools_tui")):
        for init in (REPO / top).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / top)
            found.add(".".join([name, *rel.parts]))
    assert found == listed


def test_the_library_and_cli_never_import_textual() -> None:
    code = (
        "import sys, liveos_tools.cli.main as m, liveos_tools.tasks.status, liveos_tools.media\n"
        "m.build_parser()\n"
        "print(sorted(k for k in sys.modules if k.split('.')[0] in "
        "('textual', 'parted', 'pyudev', 'rich')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=REPO
    ).stdout.strip()
    assert out == "[]"
