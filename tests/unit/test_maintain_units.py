"""Pure parts of repair/grow/reset: e2fsck's exit table, sizes, backups, table damage."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from liveos_tools.cow import MAGIC
from liveos_tools.errors import CorruptError, UsageError
from liveos_tools.tasks import backup as bk
from liveos_tools.tasks.grow import target_size
from liveos_tools.tasks.repair import find_damage

MiB = 1024 * 1024


def test_target_size() -> None:
    assert target_size(8 * MiB, 4096, to_bytes=None, by_bytes=MiB + 5) == 9 * MiB
    assert target_size(8 * MiB, 4096, to_bytes=16 * MiB, by_bytes=None) == 16 * MiB
    with pytest.raises(UsageError, match="shrink"):
        target_size(8 * MiB, 4096, to_bytes=4 * MiB, by_bytes=None)
    with pytest.raises(UsageError, match="less than one chunk"):
        target_size(8 * MiB, 4096, to_bytes=None, by_bytes=100)
    with pytest.raises(UsageError, match="exactly one"):
        target_size(8 * MiB, 4096, to_bytes=None, by_bytes=None)


def _store(path: Path, entries: list[tuple[int, int]], size: int = MiB) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        f.write(struct.pack("<IIII", MAGIC, 1, 1, 8))
        f.seek(4096)
        f.write(b"".join(struct.pack("<QQ", o, n) for o, n in entries))


def test_backup_roundtrip_is_byte_exact(tmp_path: Path) -> None:
    ovl = tmp_path / "overlay-L-U"
    _store(ovl, [(7, 2), (9, 3)])
    original = ovl.read_bytes()
    made = bk.write_backup(ovl, "reset", [(0, 65536)], tmp_path / "b", run_id="x1")
    assert made.path.name.endswith(".reset.x1.lobak") and not list((tmp_path / "b").glob("*.part"))
    with open(ovl, "r+b") as f:
        f.write(bytes(65536))
        f.seek(0, 2)
        f.write(bytes(8192))  # grown too
    backup, payload = bk.read_backup(made.path)
    assert backup.record.size_bytes == MiB and backup.record.label == "overlay-L-U"
    bk.check_belongs(backup, ovl)
    assert bk.restore(backup, payload, ovl) is True
    assert ovl.read_bytes() == original


def test_backup_refuses_damage_and_strangers(tmp_path: Path) -> None:
    ovl = tmp_path / "overlay-L-U"
    _store(ovl, [(7, 2)])
    made = bk.write_backup(ovl, "repair", [(0, 4096)], tmp_path, run_id="x2")
    data = bytearray(made.path.read_bytes())
    data[-10] ^= 1
    made.path.write_bytes(bytes(data))
    with pytest.raises(CorruptError, match="checksum"):
        bk.read_backup(made.path)
    made = bk.write_backup(ovl, "repair", [(0, 4096)], tmp_path, run_id="x3")
    backup, _ = bk.read_backup(made.path)
    other = tmp_path / "overlay-X-Y"
    _store(other, [])
    with pytest.raises(UsageError, match="belongs to overlay-L-U"):
        bk.check_belongs(backup, other)
    with open(ovl, "r+b") as f:
        f.write(b"JUNK")
    with pytest.raises(UsageError, match="does not look like"):
        bk.check_belongs(backup, ovl)


def test_find_damage_names_the_first_bad_entry(tmp_path: Path) -> None:
    ovl = tmp_path / "ovl"
    _store(ovl, [(1, 2), (2, 3), (3, 3), (4, 4)])
    damage = find_damage(ovl)
    assert damage is not None
    assert (damage.area, damage.index, damage.dropped) == (0, 2, 2)
    assert "reuses data chunk 3" in damage.problem
    _store(ovl, [(1, 2), (2, 1)])
    damage = find_damage(ovl)
    assert damage is not None and "metadata chunk 1" in damage.problem
    _store(ovl, [(1, 2), (2, 3)])
    assert find_damage(ovl) is None


def test_backup_dir_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ovl = tmp_path / "LiveOS" / "overlay-A-B"
    monkeypatch.setenv(bk.ENV_DIR, str(tmp_path / "env"))
    assert bk.choose_dir(ovl)[0] == tmp_path / "env"
    assert bk.choose_dir(ovl, tmp_path / "mine")[0] == tmp_path / "mine"
