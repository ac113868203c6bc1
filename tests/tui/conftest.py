"""Fixtures of the TUI tests: fixture sticks and a FixtureBackend built from them."""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path

import pytest

from tests.tui.bootstrap import ensure_importable

ensure_importable()

# isort: split
from liveos_tools_tui.fake import FixtureBackend, FixtureStick, load_fixture  # noqa: E402

STICKS_DIR = Path(__file__).parent / "fixtures" / "sticks"


def fixture_sticks(*names: str) -> list[FixtureStick]:
    """Fixture sticks by file-name prefix ("02-filling" or "02"); all when none given."""
    files = sorted(STICKS_DIR.glob("*.json"))
    if not names:
        return [load_fixture(f) for f in files]
    out = []
    for name in names:
        match = [f for f in files if f.stem == name or f.stem.startswith(f"{name}-")]
        assert len(match) == 1, f"no single fixture named {name}: {match}"
        out.append(load_fixture(match[0]))
    return out


@pytest.fixture
def all_sticks() -> list[FixtureStick]:
    return fixture_sticks()


@pytest.fixture
def backend(all_sticks: list[FixtureStick]) -> FixtureBackend:
    return FixtureBackend(all_sticks)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run `async def` tests in a fresh event loop (no asyncio plugin needed)."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    asyncio.run(pyfuncitem.obj(**{n: pyfuncitem.funcargs[n] for n in names}))
    return True
