"""Not root: actions run `pkexec|sudo liveos-overlay ... --yes`. Tested with a fake pkexec
and a fake sudo on PATH that record their argv and stdin and exit as told (no real pkexec
can be driven in a test)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from liveos_tools.units import MiB
from tests.tui.screen_text import screen_text
from tests.tui.test_app import make_app, settle
from tests.tui.test_passphrase import make_luks_stick

# isort: split
from liveos_tools_tui.app import LiveOSApp
from liveos_tools_tui.dialogs.confirm import ConfirmDialog
from liveos_tools_tui.dialogs.message import MessageDialog
from liveos_tools_tui.dialogs.params import ParamsDialog
from liveos_tools_tui.real import RealBackend

pytestmark = pytest.mark.timeout(60)
SIZE = (100, 30)

FAKE_TOOL = """\
#!{python}
# A stand-in for {name}: records argv and stdin, prints what it is told, exits as told.
import json, pathlib, sys
here = pathlib.Path(__file__).resolve().parent
with open(here / "calls.jsonl", "a") as f:
    f.write(json.dumps({{"argv": sys.argv, "stdin": sys.stdin.read()}}) + "\\n")
behaviour = here / "behaviour.json"
b = json.loads(behaviour.read_text()) if behaviour.exists() else {{}}
sys.stderr.write(b.get("stderr", ""))
sys.exit(b.get("code", 0))
"""


class FakeTools:
    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.overlay = bin_dir / "liveos-overlay"

    def behave(self, code: int, stderr: str = "") -> None:
        (self.bin / "behaviour.json").write_text(json.dumps({"code": code, "stderr": stderr}))

    def calls(self) -> list[dict[str, Any]]:
        log = self.bin / "calls.jsonl"
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.fixture
def fake_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeTools:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("pkexec", "sudo", "liveos-overlay"):
        tool = bin_dir / name
        tool.write_text(FAKE_TOOL.format(python=sys.executable, name=name))
        tool.chmod(0o755)
    # PATH alone decides which pkexec, sudo and liveos-overlay are found.
    monkeypatch.setenv("PATH", str(bin_dir))
    return FakeTools(bin_dir)


@pytest.fixture
def stdin_with_keys() -> Iterator[None]:
    """fd 0 holds text, as a terminal would hold the user's keys: a child must not get it."""
    saved = os.dup(0)
    r, w = os.pipe()
    os.write(w, b"keys meant for the app\n")
    os.close(w)
    os.dup2(r, 0)
    os.close(r)
    try:
        yield
    finally:
        os.dup2(saved, 0)
        os.close(saved)


@contextlib.contextmanager
def recorded_suspend(log: list[str]) -> Iterator[None]:
    log.append("suspended")
    yield
    log.append("resumed")


async def grow_and_confirm(app: LiveOSApp, pilot: Any) -> str:
    """Press g, accept 512M, check the confirm dialog; returns its text, then says yes."""
    await settle(app, pilot)
    (card,) = app.cards
    assert card.report is not None, card.error
    await pilot.press("g")
    await settle(app, pilot)
    assert isinstance(app.screen, ParamsDialog)
    await pilot.press("enter")
    await settle(app, pilot)
    assert isinstance(app.screen, ConfirmDialog), screen_text(app)
    # The plan as the dialog shows it (the screen wraps long paths).
    text = screen_text(app) + "\n" + app.screen.plan.render()
    await pilot.press("y")
    await settle(app, pilot)
    return text


def backend_for(stick: Path) -> RealBackend:
    return RealBackend([str(stick)], scan=False, live=False, is_root=False)


@pytest.mark.parametrize("display", ["DISPLAY", "WAYLAND_DISPLAY"])
async def test_pkexec_runs_the_exact_command_and_reports_done(
    tmp_path: Path,
    fake_tools: FakeTools,
    monkeypatch: pytest.MonkeyPatch,
    display: str,
    stdin_with_keys: None,
) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setenv(display, ":0")
    stick = make_luks_stick(tmp_path)
    fake_tools.behave(0)
    app = make_app(backend_for(stick))  # type: ignore[arg-type]
    async with app.run_test(size=SIZE) as pilot:
        confirm = await grow_and_confirm(app, pilot)
        assert "This runs as root through pkexec." in confirm
        assert f"run: pkexec {fake_tools.overlay} grow {stick} --by 512M --yes" in confirm
        assert f"run as root: liveos-overlay grow {stick} --by 512M --dry-run" in confirm
        assert app.last_outcome == "done"
        assert isinstance(app.screen, MessageDialog) and not app.screen.has_class("error")
        assert "Done:" in screen_text(app)
    (call,) = fake_tools.calls()
    assert call["argv"] == [
        str(fake_tools.bin / "pkexec"),
        str(fake_tools.overlay),
        "grow",
        str(stick),
        "--by",
        "512M",
        "--yes",
    ]
    assert call["stdin"] == ""  # not the terminal: nothing for it to read


@pytest.mark.parametrize(
    ("code", "stderr", "message", "hint"),
    [
        (
            1,
            "error: only 80 MiB free on the stick\nhint: free some space, or grow by less\n",
            "error: only 80 MiB free on the stick",
            "hint: free some space, or grow by less",
        ),
        (126, "", "error: the password dialog was dismissed", "hint: nothing was changed"),
        (
            127,
            "Error executing command as another user: Not authorized\n",
            "error: pkexec did not authorize it (Error executing command as another user: "
            "Not authorized)",
            "hint: nothing was changed; ask an administrator, or run liveos-tui as root",
        ),
        (
            3,
            "Traceback (most recent call last):\nSomethingOdd\n",
            "error: pkexec failed with exit code 3: SomethingOdd",
            "hint: run it in a terminal to see all it says: pkexec ",
        ),
    ],
)
async def test_pkexec_failure_shows_the_error_and_hint(
    tmp_path: Path,
    fake_tools: FakeTools,
    monkeypatch: pytest.MonkeyPatch,
    code: int,
    stderr: str,
    message: str,
    hint: str,
) -> None:
    monkeypatch.setenv("DISPLAY", ":0")
    stick = make_luks_stick(tmp_path)
    fake_tools.behave(code, stderr)
    app = make_app(backend_for(stick))  # type: ignore[arg-type]
    async with app.run_test(size=SIZE) as pilot:
        await grow_and_confirm(app, pilot)
        assert app.last_outcome == "failed"
        assert isinstance(app.screen, MessageDialog) and app.screen.has_class("error")
        dialog = app.screen
        assert "Grow overlay failed" in screen_text(app)
        assert message[:40] in screen_text(app)  # the rest may wrap
        assert dialog.message == message
        assert dialog.hint is not None and dialog.hint.startswith(hint)
    assert len(fake_tools.calls()) == 1


@pytest.mark.parametrize(("code", "outcome"), [(0, "done"), (1, "failed")])
async def test_sudo_in_a_terminal_hands_it_over_and_runs_the_exact_command(
    tmp_path: Path,
    fake_tools: FakeTools,
    monkeypatch: pytest.MonkeyPatch,
    code: int,
    outcome: str,
) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    stick = make_luks_stick(tmp_path)
    fake_tools.behave(code, "sudo: 3 incorrect password attempts\n" if code else "")
    app = make_app(backend_for(stick))  # type: ignore[arg-type]
    handed_over: list[str] = []
    monkeypatch.setattr(app, "suspend", lambda: recorded_suspend(handed_over))
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        assert len(app.cards) == 1
        await pilot.press("x")  # reset: destroys, so the confirm dialog says so
        await settle(app, pilot)
        assert isinstance(app.screen, ConfirmDialog)
        confirm = screen_text(app)
        plan_text = app.screen.plan.render()
        assert f"run: sudo {fake_tools.overlay} reset {stick} --yes" in plan_text
        assert "This runs as root through sudo." in confirm
        assert "This destroys: every change saved in the overlay" in confirm
        await pilot.press("y")
        await settle(app, pilot)
        assert app.last_outcome == outcome
        assert isinstance(app.screen, MessageDialog)
        text = screen_text(app)
        if code:
            assert app.screen.has_class("error")
            assert "Reset overlay failed" in text
            assert app.screen.message == (
                "error: sudo failed with exit code 1: sudo: 3 incorrect password attempts"
            )
        else:
            assert "Done:" in text
    assert handed_over == ["suspended", "resumed"]
    (call,) = fake_tools.calls()
    assert call["argv"] == [
        str(fake_tools.bin / "sudo"),
        str(fake_tools.overlay),
        "reset",
        str(stick),
        "--yes",
    ]
    assert call["stdin"] == ""


async def test_a_terminal_that_cannot_be_handed_over_is_an_error_not_a_crash(
    tmp_path: Path, fake_tools: FakeTools, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    stick = make_luks_stick(tmp_path)
    app = make_app(backend_for(stick))  # type: ignore[arg-type]
    async with app.run_test(size=SIZE) as pilot:  # headless: no suspend
        await grow_and_confirm(app, pilot)
        assert app.last_outcome == "failed"
        assert "cannot be handed over" in screen_text(app)
    assert fake_tools.calls() == []


async def test_neither_pkexec_nor_sudo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv("DISPLAY", ":0")
    stick = make_luks_stick(tmp_path)
    app = make_app(backend_for(stick))  # type: ignore[arg-type]
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("r")
        await settle(app, pilot)
        assert isinstance(app.screen, MessageDialog)
        assert isinstance(app.screen, MessageDialog)
        assert app.screen.message == (
            "error: Repair overlay needs root, and neither pkexec nor sudo is installed"
        )
        assert app.last_outcome == "unavailable"


def test_grow_by_is_rendered_in_mib() -> None:
    # The argv above says --by 512M: the dialog's default, as the CLI spells it.
    from liveos_tools_tui.real import size_arg

    assert size_arg(512 * MiB) == "512M"
