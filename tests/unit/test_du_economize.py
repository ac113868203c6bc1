"""economize: costs per consumer, and --apply/--undo on a tree standing in for /."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from liveos_tools.ext4map import Meta
from liveos_tools.tasks import economize
from liveos_tools.tasks.du import DuReport, cached_summary, summary_doc


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "liveos_tools.cli.main", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): (
            "->" + str(p.readlink())
            if p.is_symlink()
            else hashlib.sha256(p.read_bytes()).hexdigest()
        )
        for p in sorted(root.rglob("*"))
        if p.is_file() or p.is_symlink()
    }


def test_costs_go_to_the_most_specific_consumer() -> None:
    files = {
        "/var/log/journal/abc/system.journal": 10,
        "/var/log/messages": 3,
        "/var/log/audit/audit.log": 2,
        "/var/cache/dnf/x.rpm": 7,
        "/usr/bin/ls": 100,
    }
    got = {c["path"]: c["bytes"] for c in economize.costs(files, 4096)}
    assert got["/var/log/journal"] == 10 * 4096
    assert got["/var/log"] == 3 * 4096
    assert got["/var/log/audit"] == 2 * 4096
    assert got["/var/cache/dnf"] == 7 * 4096
    assert got["/root"] == 0
    assert sum(got.values()) == 22 * 4096  # /usr/bin/ls is nobody's business here


def test_unit_names_are_systemd_escaped() -> None:
    assert economize.unit_name("/var/lib/NetworkManager") == "var-lib-NetworkManager.mount"
    assert economize.unit_name("/var/a-b") == "var-a\\x2db.mount"


def test_apply_then_undo_leaves_the_tree_as_it_was(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/other.service").write_text("[Unit]\n")
    before = _tree(root)
    res = _cli("economize", "--apply", "--root", str(root), "--dry-run")
    assert res.returncode == 0 and _tree(root) == before, res.stderr
    res = _cli("economize", "--apply", "--root", str(root), "--yes")
    assert res.returncode == 0, res.stderr
    conf = root / "etc/systemd/journald.conf.d/90-liveos-economize.conf"
    assert "Storage=volatile" in conf.read_text()
    unit = root / "etc/systemd/system/var-log-audit.mount"
    assert "Where=/var/log/audit" in unit.read_text() and "Type=tmpfs" in unit.read_text()
    wants = root / "etc/systemd/system/local-fs.target.wants/var-log-audit.mount"
    assert wants.is_symlink() and wants.resolve() == unit.resolve()
    assert f"wrote {conf}" in res.stderr  # it says what it wrote
    manifest = json.loads((root / economize.MANIFEST).read_text())
    assert str(conf.relative_to(root)) in manifest["files"]
    # applying twice is fine (its own files), then undo removes exactly them
    assert _cli("economize", "--apply", "--root", str(root), "--yes").returncode == 0
    res = _cli("economize", "--undo", "--root", str(root), "--yes")
    assert res.returncode == 0, res.stderr
    left = {k: v for k, v in _tree(root).items()}
    assert left == before


def test_apply_refuses_to_overwrite_a_foreign_file(tmp_path: Path) -> None:
    root = tmp_path / "root"
    conf = root / "etc/systemd/journald.conf.d/90-liveos-economize.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("[Journal]\nStorage=persistent\n")
    res = _cli("economize", "--apply", "--root", str(root), "--yes")
    assert res.returncode == 2 and "not written by economize" in res.stderr
    assert conf.read_text() == "[Journal]\nStorage=persistent\n"


def test_apply_without_root_is_for_the_live_system_only() -> None:
    res = _cli("economize", "/nonexistent-stick", "--apply", "--yes")
    assert res.returncode == 2 and "running live system only" in res.stderr


def test_undo_without_apply(tmp_path: Path) -> None:
    res = _cli("economize", "--undo", "--root", str(tmp_path), "--yes")
    assert res.returncode == 4 and "nothing to undo" in res.stderr


def _report() -> DuReport:
    return DuReport(
        chunk_bytes=4096,
        block_bytes=4096,
        data_chunks=10,
        deleted_chunks=2,
        unchanged_chunks=1,
        metadata={Meta.INODE_TABLES: 2},
        files={"/home/a/x": 3, "/home/b/y": 1, "/etc/z": 1},
        fs_clean=True,
    )


def test_json_shape_and_directories() -> None:
    doc = _report().to_json(depth=1, top=2)
    assert doc["schema"] == "liveos-tools/du/1"
    assert doc["files_bytes"] + doc["metadata_bytes"] + doc["reclaimable_bytes"] == 40960
    assert doc["directories"] == [
        {"path": "/", "bytes": 5 * 4096},
        {"path": "/home", "bytes": 4 * 4096},
        {"path": "/etc", "bytes": 4096},
    ]
    assert doc["top_files"] == [
        {"path": "/home/a/x", "bytes": 3 * 4096},
        {"path": "/etc/z", "bytes": 4096},
    ]
    assert doc["metadata"] == {"inode tables": 2 * 4096}


def test_cached_summary_refreshes_in_the_background() -> None:
    import time

    calls = []

    def job() -> DuReport:
        calls.append(1)
        return _report()

    assert cached_summary(compute=job, now=0.0) is None or calls  # first call starts it
    for _ in range(100):
        doc = cached_summary(compute=job)
        if doc is not None and "taken_at" in doc and calls:
            break
        time.sleep(0.05)
    assert doc is not None and doc["data_bytes"] == 40960
    assert summary_doc(_report(), taken_at=5.0)["taken_at"] == 5.0
    n = len(calls)
    assert cached_summary(compute=job) == doc and len(calls) == n  # fresh: not recomputed
