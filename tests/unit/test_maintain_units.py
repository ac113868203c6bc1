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
from tests.support.shell import MiB


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


def test_parse_size_is_exact_and_refuses_absurd_sizes() -> None:
    from liveos_tools.units import MAX_SIZE, parse_size

    assert parse_size("1.5GiB") == 3 * 512 * MiB
    assert parse_size("9007199254740993b") == 9007199254740993  # 2^53 + 1: a float loses it
    assert parse_size("0.5k") == 512 and parse_size("1.1") == 1153433 and parse_size("8s") == 4096
    assert parse_size(f"{MAX_SIZE}b") == MAX_SIZE
    for text, words in (
        ("9" * 300 + ".5", "too many digits"),
        ("1." + "5" * 300, "too many digits"),
        (f"{MAX_SIZE + 1}b", "larger than any disk"),
        ("99999999999T", "larger than any disk"),
    ):
        with pytest.raises(UsageError, match=words):
            parse_size(text)


def test_write_backup_fsyncs_every_directory_it_creates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ovl = tmp_path / "overlay-L-U"
    _store(ovl, [(7, 2)])
    synced: list[Path] = []
    real = bk._fsync_dir
    monkeypatch.setattr(bk, "_fsync_dir", lambda p: (synced.append(Path(p)), real(p))[1])
    where = tmp_path / "stick" / "liveos-backups"
    bk.write_backup(ovl, "reset", [(0, 4096)], where, run_id="x4")
    # each new directory and the directory that holds it, then the backup's directory
    assert synced == [
        tmp_path / "stick",
        tmp_path,
        where,
        tmp_path / "stick",
        where,
    ]


def test_seal_and_changed_since(tmp_path: Path) -> None:
    ovl = tmp_path / "overlay-L-U"
    _store(ovl, [(7, 2)])
    made = bk.write_backup(ovl, "reset", [(0, 65536)], tmp_path / "b", run_id="x5")
    assert bk.changed_since(made, ovl) is None  # not sealed: the reset did not finish
    with open(ovl, "r+b") as f:
        f.write(bytes(65536))
    sealed = bk.seal(made, size=MiB, regions=(bk.Region(0, 65536, bk.zeros_sha256(65536)),))
    assert bk.read_backup(made.path)[0].record.after_size == MiB
    assert bk.changed_since(bk.read_backup(made.path)[0], ovl) is None
    with open(ovl, "r+b") as f:
        f.write(b"SnAp")
    assert bk.changed_since(sealed, ovl) == "bytes 0..65536 changed since the reset"
    with open(ovl, "ab") as f:
        f.write(bytes(10))
    assert bk.changed_since(sealed, ovl) == f"it is {MiB + 10} bytes, the reset left it at {MiB}"
