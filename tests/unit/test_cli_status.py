"""`liveos-overlay status` as a user runs it: real processes, real files, exit codes."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from liveos_tools.cow import header_bytes

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "cow"
CLI = [sys.executable, "-m", "liveos_tools.cli.main"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)


def overlay(tmp_path: Path, name: str) -> Path:
    out = tmp_path / f"overlay-X-{name}"
    with gzip.open(FIXTURES / f"{name}.cow.gz") as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return out


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("fixture", "code", "state", "numbers"),
    [
        ("used-c8", 0, "valid", (4832, 8192, 32)),
        ("overflow-PO", 3, "full", (4096, 4096, 24)),
        ("invalid-P", 3, "invalid", (2576, 4096, 24)),
        ("fresh-c8", 0, "valid", (16, 8192, 16)),
    ],
)
def test_overlay_file_states(
    tmp_path: Path, fixture: str, code: int, state: str, numbers: tuple[int, int, int]
) -> None:
    path = overlay(tmp_path, fixture)
    before = sha(path)
    r = run("status", str(path), "--json")
    assert r.returncode == code, r.stderr
    doc = json.loads(r.stdout)
    assert doc["state"] == state
    if state != "invalid":
        assert (doc["sectors_allocated"], doc["total_sectors"], doc["metadata_sectors"]) == numbers
    assert sha(path) == before


def test_filling_up_warns_and_exits_1(tmp_path: Path) -> None:
    # used-c32 is 86% used (35296 of 40960 sectors), read from the kernel-written file.
    r = run("status", str(overlay(tmp_path, "used-c32")))
    assert r.returncode == 1
    assert "86.2%" in r.stdout
    assert "warning: the overlay is 86% full" in r.stdout and "liveos-overlay grow" in r.stdout


def test_94_percent_is_still_filling(tmp_path: Path) -> None:
    # used-c64: 134592 of 143360 sectors = 93.9% -> filling; full at 100%.
    r = run("status", str(overlay(tmp_path, "used-c64")), "--json")
    doc = json.loads(r.stdout)
    assert (r.returncode, doc["level"], doc["used_percent"]) == (1, "filling", 93.88)


@pytest.mark.parametrize(
    ("make", "code", "message"),
    [
        (lambda d: d / "missing", 4, "no such file or directory"),
        (lambda d: d, 4, "no LiveOS directory"),
        (lambda d: _write(d / "empty", b""), 4, "is empty (0 bytes)"),
        (lambda d: _write(d / "overlay-garbage", b"\x99" * 100000), 3, "bad magic"),
        (lambda d: _write(d / "overlay-trunc", header_bytes(True, 8) + bytes(100)), 3, "too small"),
    ],
)
def test_bad_input_one_line_no_traceback_no_change(
    tmp_path: Path, make: object, code: int, message: str
) -> None:
    target = make(tmp_path)  # type: ignore[operator]
    before = sha(target) if target.is_file() else None
    r = run("status", str(target))
    assert r.returncode == code
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0]
    if before is not None:
        assert sha(target) == before


def _write(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


def test_usage_errors_exit_2() -> None:
    assert run("status", "--watch", "soon").returncode == 2
    assert run().returncode == 2
    assert run("frobnicate").returncode == 2


def test_watch_prints_json_lines(tmp_path: Path) -> None:
    path = overlay(tmp_path, "used-c8")
    proc = subprocess.Popen(
        [*CLI, "status", str(path), "--json", "--watch", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    docs = [json.loads(line) for line in lines]
    assert [d["sectors_allocated"] for d in docs] == [4832] * 3


@pytest.mark.parametrize(
    ("used", "level"),
    [
        (0, "ok"),
        (799, "ok"),
        (800, "filling"),
        (949, "filling"),
        (950, "critical"),
        (1000, "critical"),
    ],
)
def test_thresholds(used: int, level: str) -> None:
    from liveos_tools.media import OverlayKind
    from liveos_tools.tasks.status import OverlayState, OverlayStatus, _level

    s = OverlayStatus(OverlayKind.DM, None, OverlayState.VALID, "file", used, 1000)
    assert _level(s).value == level


def test_truncated_overlay_is_corrupt_and_never_over_100_percent(tmp_path: Path) -> None:
    path = overlay(tmp_path, "used-c8")
    with open(path, "r+b") as f:
        f.truncate(100000)
    r = run("status", str(path), "--json")
    doc = json.loads(r.stdout)
    assert (r.returncode, doc["state"], doc["used_percent"]) == (3, "corrupt", 100.0)
    assert "past the end" in doc["problem"]


def test_an_exception_past_the_end_shows_no_figure_and_says_it_once(tmp_path: Path) -> None:
    path = overlay(tmp_path, "used-c8")
    data = bytearray(path.read_bytes())
    chunk = 8 * 512
    # the second exception of the first area (chunk 1) now points far past the end
    data[chunk + 16 + 8 : chunk + 32] = (10**9).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    r = run("status", "--full", str(path))
    assert r.returncode == 3
    assert "Overlay  usage unknown, 4.0 MiB  state: corrupt" in r.stdout.splitlines()
    said = (r.stdout + r.stderr).count("past the end")
    assert said == 1, r.stdout + r.stderr
    assert r.stderr.startswith("error: the overlay is damaged: an exception points at chunk")
    assert "3906250" not in r.stdout and "%" not in r.stdout.splitlines()[1]
