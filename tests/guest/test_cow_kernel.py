"""The offline reader against the real kernel: at every step, the numbers must be equal.

Runs inside the guest kernel (tests/guestvm.py). Each scenario writes through a
real dm-snapshot and compares `read_store()` on the COW file with the kernel's own
`dmsetup status`, both while the snapshot is live and after re-activating it from
disk (the kernel's reading of what lies on disk).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from liveos_tools.cow import RESET_BYTES, StoreState, read_store
from tests.support.kernel_snap import MiB, make_file, reactivated_status, snapshot

pytestmark = pytest.mark.guest


def _name() -> str:
    return f"lt-{uuid.uuid4().hex[:8]}"


def _offline(cow: Path) -> tuple[str, str]:
    fast = read_store(cow)
    full = read_store(cow, full=True)
    assert fast == full._replace(full_scan=False), "fast and full scan disagree"
    return fast.kernel_status(), fast.state.value


def test_fresh_store_reads_like_the_kernel(tmp_path: Path) -> None:
    base = make_file(tmp_path / "base", 64 * MiB)
    cow = make_file(tmp_path / "cow", 8 * MiB)
    before = read_store(cow)
    assert before.state is StoreState.NEW
    with snapshot(_name(), base, cow) as snap:
        assert snap.status_params() == "16/16384 16"
        assert before.kernel_status() == "16/16384 16"
        assert _offline(cow) == ("16/16384 16", "valid")


@pytest.mark.parametrize(("chunk", "writes"), [(8, 700), (16, 1100), (32, 1300), (64, 2100)])
def test_multi_area_stores_at_each_chunk_size(tmp_path: Path, chunk: int, writes: int) -> None:
    per_area = chunk * 512 // 16
    base = make_file(tmp_path / "base", (writes + 64) * chunk * 512)
    cow = make_file(tmp_path / "cow", (writes + writes // per_area + 40) * chunk * 512)
    with snapshot(_name(), base, cow, chunk=chunk) as snap:
        step = writes // 4
        for first in range(0, writes, step):
            snap.write_chunks(first, min(step, writes - first))
            live = snap.status_params()
            assert _offline(cow)[0] == live
        report = read_store(cow)
        assert report.exceptions == writes
        assert report.current_area == writes // per_area
        assert report.current_area >= 1, "the scenario must span several metadata areas"
    assert reactivated_status(_name(), base, cow, chunk) == read_store(cow).kernel_status()


def test_store_reopened_and_written_again(tmp_path: Path) -> None:
    base = make_file(tmp_path / "base", 64 * MiB)
    cow = make_file(tmp_path / "cow", 16 * MiB)
    with snapshot(_name(), base, cow) as snap:
        assert snap.write_chunks(0, 300) == 300
    first = read_store(cow)
    with snapshot(_name(), base, cow) as snap:
        assert snap.status_params() == first.kernel_status()
        # Rewriting chunks that already have exceptions allocates nothing new.
        snap.write_chunks(0, 100)
        assert snap.status_params() == first.kernel_status()
        snap.write_chunks(1000, 400)
        assert _offline(cow)[0] == snap.status_params()
    again = read_store(cow)
    assert again.exceptions == 700
    assert reactivated_status(_name(), base, cow) == again.kernel_status()


def test_overflow_with_PO_stays_valid_on_disk(tmp_path: Path) -> None:
    base = make_file(tmp_path / "base", 64 * MiB)
    cow = make_file(tmp_path / "cow", 2 * MiB)
    with snapshot(_name(), base, cow, overflow=True) as snap:
        written = snap.write_chunks(0, 1000)
        assert written < 1000
        assert snap.status_params() == "Overflow"
        report = read_store(cow)
        assert report.state is StoreState.FULL
        assert report.valid is True
        assert report.exceptions == written
    assert reactivated_status(_name(), base, cow) == read_store(cow).kernel_status()
    assert cow.read_bytes()[4:8] == b"\x01\x00\x00\x00"


def test_full_store_without_O_is_invalidated(tmp_path: Path) -> None:
    base = make_file(tmp_path / "base", 64 * MiB)
    cow = make_file(tmp_path / "cow", 2 * MiB)
    with snapshot(_name(), base, cow, overflow=False) as snap:
        snap.write_chunks(0, 1000)
        assert snap.status_params() == "Invalid"
    report = read_store(cow)
    assert report.state is StoreState.INVALID
    assert report.valid is False
    assert cow.read_bytes()[4:8] == b"\x00\x00\x00\x00"
    assert reactivated_status(_name(), base, cow) == "Invalid"


def test_reset_store_ignores_stale_areas(tmp_path: Path) -> None:
    base = make_file(tmp_path / "base", 64 * MiB)
    cow = make_file(tmp_path / "cow", 8 * MiB)
    with snapshot(_name(), base, cow) as snap:
        snap.write_chunks(0, 5000)
        assert snap.status_params() == "Overflow"
    with open(cow, "r+b") as f:
        f.write(bytes(RESET_BYTES))
    assert read_store(cow).state is StoreState.NEW
    with snapshot(_name(), base, cow) as snap:
        assert snap.write_chunks(0, 100) == 100
        assert snap.status_params() == "816/16384 16"
        assert _offline(cow) == ("816/16384 16", "valid")
