"""Man pages and shell completion, generated from the live parsers (scripts/gen-docs):
`man -l` renders each page without warnings, and a real bash completes
`liveos-overlay re<TAB>` with the commands the parser has."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from liveos_tools.cli.main import COMMAND_NAMES
from liveos_tools.errors import ExitCode

REPO = Path(__file__).resolve().parents[2]
PAGES = {
    "liveos-overlay": "man8/liveos-overlay.8",
    "liveos-iso-to-disk": "man8/liveos-iso-to-disk.8",
    "liveos-tui": "man1/liveos-tui.1",
}
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("docs")
    subprocess.run(
        ["bash", str(REPO / "scripts" / "gen-docs"), str(out)], check=True, capture_output=True
    )
    return out


def render(page: Path) -> tuple[str, str]:
    env = {**os.environ, "MANWIDTH": "100", "LANG": "C.UTF-8", "MAN_KEEP_FORMATTING": ""}
    res = subprocess.run(
        ["man", "--warnings", "-l", str(page)], capture_output=True, text=True, env=env
    )
    assert res.returncode == 0, res.stderr
    return res.stdout, res.stderr


@pytest.mark.parametrize("prog", sorted(PAGES))
def test_each_man_page_renders(docs: Path, prog: str) -> None:
    text, warnings = render(docs / "man" / PAGES[prog])
    assert warnings == ""
    assert text.split("\n", 1)[0].startswith(prog.upper() + "(")
    assert "NAME" in text and f"{prog} - " in " ".join(text.split())
    assert "EXIT STATUS" in text
    flat = " ".join(text.split())
    for code in ExitCode:
        assert f"{code.value} " in flat and f"({code.name})" in flat


def test_the_overlay_page_lists_every_command(docs: Path) -> None:
    text, _ = render(docs / "man" / PAGES["liveos-overlay"])
    flat = " ".join(text.split())
    missing = [c for c in COMMAND_NAMES if f"liveos-overlay {c}" not in flat]
    assert missing == []


def complete(docs: Path, prog: str, *words: str) -> list[str]:
    """What bash offers for `prog words...<TAB>`, through the generated completion."""
    script = docs / "bash-completion" / prog
    line = " ".join([prog, *words])
    func = "_shtab_" + prog.replace("-", "_")
    code = (
        f"source {script}\n"
        f"COMP_LINE={line!r}; COMP_POINT=${{#COMP_LINE}}\n"
        f"COMP_WORDS=({' '.join(repr(w) for w in [prog, *words])}); COMP_CWORD={len(words)}\n"
        f"complete -p {prog} >/dev/null || exit 3\n"
        f"{func} {prog} {words[-1]!r} {([prog, *words])[-2]!r}\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    res = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", code], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    return sorted(w for w in res.stdout.split() if w)


def test_bash_completes_commands(docs: Path) -> None:
    offered = complete(docs, "liveos-overlay", "re")
    assert offered == sorted(c for c in COMMAND_NAMES if c.startswith("re"))
    assert {"repair", "reset"} <= set(offered)


def test_bash_completes_subcommands_and_options(docs: Path) -> None:
    assert "resize" in complete(docs, "liveos-overlay", "home", "re")
    assert "--dry-run" in complete(docs, "liveos-overlay", "reset", "--dr")
    assert "--no-scan" in complete(docs, "liveos-tui", "--no")


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_completion_parses(docs: Path) -> None:
    for prog in PAGES:
        subprocess.run(["zsh", "-n", str(docs / "zsh" / f"_{prog}")], check=True)
