"""One wrapper per program: only liveos_tools/tools/ (and run.py itself) starts programs,
and every program a wrapper names has its Debian package in run.TOOL_PACKAGES (so a
missing one is reported as `apt install PACKAGE`). Read from the code's syntax trees."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

from liveos_tools.run import TOOL_PACKAGES

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "liveos_tools" / "tools"
RUN = REPO / "liveos_tools" / "run.py"
#: Modules that still start programs themselves, to move into tools/. Empty since the
#: writer wing moved its calls into tools/ (issue 12); keep it empty.
NOT_YET: set[str] = set()
PROGRAM = re.compile(r"^[a-z0-9][a-z0-9._+-]*$")


def sources() -> Iterator[Path]:
    for folder in ("liveos_tools", "tui"):
        yield from sorted((REPO / folder).rglob("*.py"))


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def starts_programs(tree: ast.AST) -> list[str]:
    """How a module could start a program: importing run() or subprocess (or os.exec*)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "liveos_tools.run":
            found += [f"imports run.{a.name}" for a in node.names if a.name == "run"]
        elif isinstance(node, ast.Import):
            found += [f"imports {a.name}" for a in node.names if a.name == "subprocess"]
        elif isinstance(node, ast.ImportFrom) and node.module == "subprocess":
            found.append("imports from subprocess")
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
            and re.match(r"(exec|spawn|system|popen)", node.attr)
        ):
            found.append(f"os.{node.attr}")
    return found


def named_programs(tree: ast.AST) -> set[str]:
    """Programs named as the first word of an argv list, or asked for with require()."""
    names = set()
    for node in ast.walk(tree):
        first: ast.expr | None = None
        if isinstance(node, ast.List) and node.elts:
            first = node.elts[0]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "require"
            and node.args
        ):
            first = node.args[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            if PROGRAM.match(first.value):
                names.add(first.value)
        elif isinstance(first, ast.JoinedStr) and first.values:
            head = first.values[0]
            if isinstance(head, ast.Constant) and isinstance(head.value, str):
                names.add(head.value + "*")  # f"mkfs.{fstype}"
    return names


def test_only_the_wrappers_start_programs() -> None:
    offenders = {}
    for path in sources():
        if path == RUN or path.parent == TOOLS or rel(path) in NOT_YET:
            continue
        how = starts_programs(ast.parse(path.read_text(), str(path)))
        if how:
            offenders[rel(path)] = how
    assert offenders == {}


def test_the_allow_list_only_shrinks() -> None:
    still = (
        {rel(p) for p in sources() if starts_programs(ast.parse(p.read_text(), str(p)))}
        - {rel(RUN)}
        - {rel(p) for p in TOOLS.glob("*.py")}
    )
    assert still <= NOT_YET, "a new module starts programs: use a wrapper in tools/"
    assert still >= NOT_YET, f"moved into tools/: drop {sorted(NOT_YET - still)} from NOT_YET"


def test_every_program_a_wrapper_names_has_its_debian_package() -> None:
    missing = {}
    for path in sorted(TOOLS.glob("*.py")):
        for name in named_programs(ast.parse(path.read_text(), str(path))):
            known = (
                any(k.startswith(name[:-1]) for k in TOOL_PACKAGES)
                if name.endswith("*")
                else name in TOOL_PACKAGES
            )
            if not known:
                missing.setdefault(path.name, []).append(name)
    assert missing == {}


def test_the_walker_sees_what_it_must() -> None:
    code = (
        "from liveos_tools.run import run\n"
        "import subprocess\n"
        "def f(t):\n"
        "    run(['blkid', '-p'])\n"
        "    run([f'mkfs.{t}', '-q'])\n"
        "    require('parted')\n"
        "    os.execvp('x', ['x'])\n"
    )
    tree = ast.parse(code)
    assert starts_programs(tree) == ["imports run.run", "imports subprocess", "os.execvp"]
    assert named_programs(tree) == {"blkid", "mkfs.*", "parted", "x"}
