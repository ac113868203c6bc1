"""Dependencies as declared: every third-party module the code imports is declared in
pyproject.toml, in the part that ships the code importing it (the library's own
dependencies, or the tui extra for tui/)."""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: distribution name -> the module it installs, where they differ.
IMPORT_NAME = {"pyparted": "parted"}
LOCAL = {"liveos_tools", "liveos_tools_tui", "tui", "tests"}


def declared(names: list[str]) -> set[str]:
    out = set()
    for spec in names:
        dist = spec.split(";")[0].split("[")[0]
        for sep in "<>=!~ ":
            dist = dist.split(sep)[0]
        out.add(IMPORT_NAME.get(dist.lower(), dist.lower().replace("-", "_")))
    return out


def third_party_imports(folder: str) -> set[str]:
    found = set()
    for path in (REPO / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in LOCAL:
                    found.add(top)
    return found


def test_every_imported_package_is_declared_where_it_is_used() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = declared(project["dependencies"])
    tui = declared(project["optional-dependencies"]["tui"])
    assert third_party_imports("liveos_tools") <= core
    assert third_party_imports("tui") <= core | tui
    # the TUI's own packages are not forced on users of the command line
    assert {"textual", "rich", "pyudev"} <= tui and not {"textual", "rich", "pyudev"} & core
