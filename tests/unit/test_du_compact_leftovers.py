"""compact's crash states, settled by finish_leftovers (the states a SIGKILL can leave,
including the two-rename switch of a filesystem without RENAME_EXCHANGE)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from liveos_tools.cow import Geometry
from liveos_tools.cowwrite import write_store
from liveos_tools.tasks import compact

GEO = Geometry(8, 64 * 4096)


def _stores(d: Path) -> tuple[Path, str, str]:
    overlay = d / "overlay-X-1"
    old = d / "old"
    write_store(old, GEO, [(5, b"a" * 4096), (9, b"b" * 4096), (12, b"c" * 4096)])
    new = d / "new"
    write_store(new, GEO, [(9, b"b" * 4096)])
    return overlay, _sha(old), _sha(new)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _record(overlay: Path, new: Path) -> None:
    _tmp, _bak, record = compact.names(overlay)
    record.write_text(json.dumps({"new_table": compact.table_sha256(new)}))


def test_killed_while_building(tmp_path: Path) -> None:
    overlay, old_sha, _ = _stores(tmp_path)
    tmp, bak, _ = compact.names(overlay)
    (tmp_path / "old").rename(overlay)
    (tmp_path / "new").rename(tmp)  # no record yet: an unfinished new store
    assert compact.finish_leftovers(overlay)
    assert _sha(overlay) == old_sha and not tmp.exists() and not bak.exists()


def test_killed_after_the_record_before_the_switch(tmp_path: Path) -> None:
    overlay, old_sha, _ = _stores(tmp_path)
    tmp, _bak, record = compact.names(overlay)
    _record(overlay, tmp_path / "new")
    (tmp_path / "old").rename(overlay)
    (tmp_path / "new").rename(tmp)
    compact.finish_leftovers(overlay)
    assert _sha(overlay) == old_sha and not tmp.exists() and not record.exists()


def test_killed_between_exchange_and_rename(tmp_path: Path) -> None:
    overlay, old_sha, new_sha = _stores(tmp_path)
    tmp, bak, record = compact.names(overlay)
    _record(overlay, tmp_path / "new")
    (tmp_path / "new").rename(overlay)  # exchanged: the new store in place
    (tmp_path / "old").rename(tmp)
    compact.finish_leftovers(overlay)
    assert _sha(overlay) == new_sha and _sha(bak) == old_sha and not tmp.exists()
    assert record.exists()  # --restore needs it


def test_killed_between_two_plain_renames(tmp_path: Path) -> None:
    overlay, old_sha, _ = _stores(tmp_path)
    tmp, bak, record = compact.names(overlay)
    _record(overlay, tmp_path / "new")
    (tmp_path / "old").rename(bak)  # no RENAME_EXCHANGE: the old store moved away first
    (tmp_path / "new").rename(tmp)
    compact.finish_leftovers(overlay)
    assert _sha(overlay) == old_sha  # the old store is back under its name
    assert not tmp.exists() and not bak.exists() and not record.exists()
