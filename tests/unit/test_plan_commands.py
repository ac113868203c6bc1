"""A plan shows exactly the programs it runs: one argv per `run:` line, no shell glue."""

from __future__ import annotations

import ast
from pathlib import Path

from liveos_tools.plan import Plan

REPO = Path(__file__).resolve().parents[2]


def test_each_command_is_its_own_run_line_and_json_entry() -> None:
    plan = Plan("demo", "/dev/x")
    plan.add("one program", argv=["losetup", "-r", "-f", "--show", "img"])
    plan.add("two programs", commands=[["dmsetup", "remove", "a"], ["losetup", "-d", "/dev/loop3"]])
    plan.add("no program")
    text = plan.render()
    assert "\n      run: losetup -r -f --show img\n" in text
    assert "      run: dmsetup remove a\n      run: losetup -d /dev/loop3\n" in text
    steps = plan.to_json()["steps"]
    assert [s["commands"] for s in steps] == [
        [["losetup", "-r", "-f", "--show", "img"]],
        [["dmsetup", "remove", "a"], ["losetup", "-d", "/dev/loop3"]],
        [],
    ]


def test_no_plan_in_the_library_shows_shell_glue() -> None:
    """`&&`, `;`, `|` or `...` in a shown argv would be display text, not what runs."""
    bad: list[str] = []
    for path in sorted((REPO / "liveos_tools").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            if node.func.attr != "add":
                continue
            for kw in node.keywords:
                if kw.arg not in ("argv", "commands"):
                    continue
                for const in ast.walk(kw.value):
                    if isinstance(const, ast.Constant) and const.value in ("&&", ";", "|", "..."):
                        bad.append(f"{path.relative_to(REPO)}:{const.lineno}: {const.value!r}")
    assert bad == []
