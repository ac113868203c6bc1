"""Grow an encrypted home.img from the app: the passphrase is asked, reaches the plan, and
is never shown, rendered, put in a repr or on a command line."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Input

from liveos_tools.plan import Plan
from liveos_tools.units import MiB
from tests.tui.conftest import fixture_sticks
from tests.tui.screen_text import screen_text
from tests.tui.test_app import make_app, select, settle

# isort: split
from liveos_tools_tui import real
from liveos_tools_tui.app import LiveOSApp
from liveos_tools_tui.backend import (
    Action,
    ActionParams,
    ActionUnavailable,
    Secret,
    Stick,
    StickOrigin,
)
from liveos_tools_tui.dialogs.confirm import ConfirmDialog
from liveos_tools_tui.dialogs.message import MessageDialog
from liveos_tools_tui.dialogs.params import ParamsDialog
from liveos_tools_tui.fake import FixtureBackend
from liveos_tools_tui.real import RealBackend

pytestmark = pytest.mark.timeout(60)
SIZE = (80, 24)
SECRET = "Corr3ct-Horse"  # typed key by key, as a user would
COW = Path(__file__).resolve().parents[1] / "fixtures" / "cow" / "demo-60pct.cow.gz"


def test_secret_never_shows_itself() -> None:
    s = Secret(b"hunter2")
    params = ActionParams(by_bytes=MiB, passphrase=s, home_encrypted=True)
    for text in (repr(s), str(s), repr(params), str(params), f"{params}"):
        assert "hunter2" not in text
    assert "***" in repr(params)
    assert s.reveal() == b"hunter2" and s == Secret(b"hunter2") and s != Secret(b"other")


async def _type_secret_and_confirm(app: LiveOSApp, pilot: Any, seen: list[str]) -> None:
    await pilot.press("h")
    await settle(app, pilot)
    assert isinstance(app.screen, ParamsDialog)
    box = app.screen.query_one("#passphrase", Input)
    assert box.password is True
    seen.append(screen_text(app))
    # Enter with no passphrase: refused in the dialog, the cursor goes to the box.
    await pilot.press("enter")
    await pilot.pause()
    assert isinstance(app.screen, ParamsDialog)
    assert "type the passphrase of home.img" in screen_text(app)
    assert app.focused is box
    await pilot.press(*SECRET)
    await pilot.pause()
    assert box.value == SECRET
    seen.append(screen_text(app))
    assert "•" * len(SECRET) in seen[-1]  # dots, one per character
    await pilot.press("enter")
    await settle(app, pilot)
    assert box.value == ""  # not kept in the widget once read
    assert isinstance(app.screen, ConfirmDialog)
    seen.append(screen_text(app))
    seen.append(app.screen.plan.render())


async def test_grow_encrypted_home_asks_the_passphrase_and_hands_it_to_the_plan(
    capsys: pytest.CaptureFixture[str],
) -> None:
    backend = FixtureBackend(fixture_sticks("01", "02"))
    app = make_app(backend)
    seen: list[str] = []
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await select(app, pilot, "live")  # fixture 01: home.img is LUKS
        await _type_secret_and_confirm(app, pilot, seen)
        assert "Grow home.img: This computer's live system" in seen[-2]
        await pilot.press("y")
        await settle(app, pilot)
        assert app.last_outcome == "done"
        seen.append(screen_text(app))
    assert backend.plan_passphrases == [SECRET.encode()]
    ((key, action, params),) = backend.executed
    assert (key, action, params.by_bytes, params.home_encrypted) == (
        "live",
        Action.GROW_HOME,
        512 * MiB,
        True,
    )
    assert params.passphrase == Secret(SECRET.encode())
    out = capsys.readouterr()
    for text in [*seen, repr(backend.prepared), repr(backend.executed), out.out, out.err]:
        assert SECRET not in text


async def test_plain_home_is_not_asked_for_a_passphrase() -> None:
    backend = FixtureBackend(fixture_sticks("02"))
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("h")
        await settle(app, pilot)
        assert isinstance(app.screen, ParamsDialog)
        assert not app.screen.query("#passphrase")
        await pilot.press("escape")
        await settle(app, pilot)
        assert app.last_outcome == "cancelled"


async def test_a_backend_that_cannot_take_it_does_not_ask() -> None:
    # Not root: the dialog asks only the size, and the backend says what to run instead.
    backend = FixtureBackend(fixture_sticks("01"), passphrase_ok=False)
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("h")
        await settle(app, pilot)
        assert isinstance(app.screen, ParamsDialog)
        assert not app.screen.query("#passphrase")
        await pilot.press("enter")
        await settle(app, pilot)
        ((_, _, params),) = backend.prepared
        assert params.home_encrypted is True and params.passphrase is None
        assert isinstance(app.screen, MessageDialog)
        assert "the passphrase is needed" in screen_text(app)
        assert backend.executed == []


def test_not_root_sends_the_passphrase_on_stdin_never_on_argv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fake sudo that records what it got: no real sudo can be driven from a test.
    record = tmp_path / "calls.json"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sudo").write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"open({str(record)!r}, 'w').write(json.dumps("
        "{'argv': sys.argv[1:], 'stdin': sys.stdin.buffer.read().decode()}))\n"
    )
    (bin_dir / "sudo").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    backend = RealBackend(scan=False, live=True, is_root=False)
    assert backend.accepts_passphrase() is True
    live = Stick("live", None, "live", StickOrigin.LIVE)
    with pytest.raises(ActionUnavailable, match="passphrase is needed"):
        backend.prepare(
            live, Action.GROW_HOME, ActionParams(by_bytes=512 * MiB, home_encrypted=True)
        )
    secret = "correct horse battery"
    prepared = backend.prepare(
        live,
        Action.GROW_HOME,
        ActionParams(by_bytes=512 * MiB, home_encrypted=True, passphrase=Secret(secret.encode())),
    )
    assert secret not in prepared.plan.render()
    backend.execute(prepared, lambda *_: None)
    call = json.loads(record.read_text())
    assert call["stdin"] == secret
    assert secret not in " ".join(call["argv"])
    assert call["argv"][-2:] == ["--passphrase-file", "-"]
    # liveos-overlay itself when on PATH, else `python -m liveos_tools.cli.main`:
    # which one depends on the caller's PATH, the command after it does not.
    prefix = real.liveos_overlay_argv()
    assert call["argv"][: len(prefix)] == prefix
    tail = call["argv"][len(prefix) :]
    assert tail[:5] == ["home", "resize", "/run/initramfs/live", "--by", "512M"]


# --- through RealBackend as root, on a stick folder with a LUKS home.img ------------------------

CALLS: list[dict[str, Any]] = []


def recording_plan_resize(path: Path, **kwargs: Any) -> Plan:
    """Stands in for home.plan_resize (the host has no dm-crypt): records its arguments."""
    CALLS.append({"path": path, **kwargs})
    plan = Plan(f"resize home.img by {kwargs['by_bytes'] // MiB} MiB", str(path))
    plan.add("open the LUKS container", argv=["cryptsetup", "open", "--key-file", "-", str(path)])
    return plan


def make_luks_stick(tmp: Path) -> Path:
    livedir = tmp / "stick" / "LiveOS"
    livedir.mkdir(parents=True)
    (livedir / "rootfs.img").write_bytes(b"\0" * 4096)
    with gzip.open(COW) as src, open(livedir / "overlay-STICK-1234", "wb") as dst:
        shutil.copyfileobj(src, dst)
    (livedir / "home.img").write_bytes(b"LUKS\xba\xbe\x00\x02" + b"\0" * (64 * 1024))
    return tmp / "stick"


async def test_real_backend_as_root_passes_the_passphrase_to_plan_resize(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stick = make_luks_stick(tmp_path)
    monkeypatch.setitem(real.TASKS, Action.GROW_HOME, (__name__, "recording_plan_resize"))
    CALLS.clear()
    backend = RealBackend([str(stick)], scan=False, live=False, is_root=True)
    app = make_app(backend)  # type: ignore[arg-type]
    seen: list[str] = []
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        (card,) = app.cards
        assert card.report is not None, card.error
        assert "home.img  luks" in screen_text(app)
        await _type_secret_and_confirm(app, pilot, seen)
        await pilot.press("y")
        await settle(app, pilot)
        assert app.last_outcome == "done", screen_text(app)
    (call,) = CALLS  # a folder is planned once, on the stick itself
    assert call == {
        "path": stick / "LiveOS" / "home.img",
        "by_bytes": 512 * MiB,
        "passphrase": SECRET.encode(),
    }
    out = capsys.readouterr()
    for text in [*seen, out.out, out.err]:
        assert SECRET not in text
