"""The offline reader against overlay files the real kernel wrote (tests/fixtures/cow).

Each NAME.cow.gz comes with NAME.json holding the kernel's own `dmsetup status`
of that store: live after the writes, and after re-activation from disk.
scripts/make-cow-fixtures regenerates them inside the guest kernel.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from liveos_tools.cow import StoreState, read_store

COW = Path(__file__).resolve().parent.parent / "fixtures" / "cow"
NAMES = sorted(p.name.removesuffix(".json") for p in COW.glob("*.json"))


def unpack(name: str, tmp_path: Path) -> Path:
    out = tmp_path / name
    with gzip.open(COW / f"{name}.cow.gz", "rb") as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return out


def test_the_fixture_set_is_complete() -> None:
    assert {
        "fresh-c8",
        "used-c8",
        "used-c16",
        "used-c32",
        "used-c64",
        "reopened-c8",
        "overflow-PO",
        "invalid-P",
        "reset-reused",
        "area-boundary-c8",
    } <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_offline_reading_equals_the_kernels(name: str, tmp_path: Path) -> None:
    record = json.loads((COW / f"{name}.json").read_text())
    path = unpack(name, tmp_path)
    assert path.stat().st_size == record["size_bytes"]
    fast, full = read_store(path), read_store(path, full=True)
    assert fast.kernel_status() == record["reactivated_status"]
    assert full.kernel_status() == record["reactivated_status"]
    live = record["live_status"].split(" ", 3)[3]
    if live not in ("Overflow", "Invalid"):
        # While live, the kernel reported the same numbers it reads back from disk.
        assert fast.kernel_status() == live


def test_states_of_the_special_fixtures(tmp_path: Path) -> None:
    over = read_store(unpack("overflow-PO", tmp_path))
    assert (over.state, over.valid, over.free_chunks) == (StoreState.FULL, True, 0)
    inval = read_store(unpack("invalid-P", tmp_path))
    assert (inval.state, inval.valid) == (StoreState.INVALID, False)
    reused = read_store(unpack("reset-reused", tmp_path))
    assert (reused.state, reused.exceptions, reused.kernel_status()) == (
        StoreState.VALID,
        100,
        "816/16384 16",
    )
    boundary = read_store(unpack("area-boundary-c8", tmp_path))
    assert (boundary.exceptions, boundary.current_area) == (256, 1)
