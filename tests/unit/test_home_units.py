"""Pure parts of home.img handling: parsers, sizes, sparse copy and hashing, refusals."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from liveos_tools import media
from liveos_tools.cli import home as cli_home
from liveos_tools.errors import ExitCode, LiveOSError, NoSpaceError, UsageError
from liveos_tools.media import HomeKind
from liveos_tools.tasks import home
from liveos_tools.tools import cryptsetup, e2fsck, resize2fs
from tests.support.shell import MiB

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "tools"


def test_luks2_dump_parses() -> None:
    info = cryptsetup.parse_dump((FIXTURES / "cryptsetup-luksdump-luks2.txt").read_text())
    assert info.version == 2
    assert info.uuid == "52643564-1efd-4a53-b872-e3a56b978843"
    assert info.data_offset == 16 * MiB
    assert info.cipher == "aes-xts-plain64"
    assert info.sector_size == 4096
    assert info.keyslots == 1


def test_luks1_dump_parses() -> None:
    info = cryptsetup.parse_dump((FIXTURES / "cryptsetup-luksdump-luks1.txt").read_text())
    assert info.version == 1
    assert info.uuid == "485d6705-96d9-41a8-8183-2b4d984ab901"
    assert info.data_offset == 4096 * 512
    assert info.cipher == "aes-xts-plain64"
    assert info.sector_size == 512
    assert info.keyslots == 1


def test_luks_dump_garbage_is_corrupt() -> None:
    with pytest.raises(LiveOSError) as exc:
        cryptsetup.parse_dump("LUKS header information\nVersion: 2\n")
    assert exc.value.code is ExitCode.CORRUPT


def test_e2fsck_exit_bits() -> None:
    assert e2fsck.FsckResult(0, "").clean
    assert e2fsck.FsckResult(1, "").clean
    assert not e2fsck.FsckResult(4, "").clean
    assert not e2fsck.FsckResult(8, "").clean
    assert e2fsck.describe(12) == "errors were left uncorrected; operational error"
    assert e2fsck.FsckResult(1, "").describe() == "1 (errors were corrected)"
    out = "Pass 1: Checking inodes\nInode 12, i_links_count is 7, should be 1.  Fix? no\n"
    assert e2fsck.FsckResult(4, out).problems() == [
        "Inode 12, i_links_count is 7, should be 1.  Fix? no"
    ]


def test_resize2fs_min_blocks() -> None:
    text = "resize2fs 1.47.0 (5-Feb-2023)\nEstimated minimum size of the filesystem: 13694\n"
    assert resize2fs.parse_min_blocks(text) == 13694
    assert resize2fs.size_argument(96 * MiB) == "98304K"
    with pytest.raises(LiveOSError):
        resize2fs.parse_min_blocks("resize2fs: Bad magic number")


def test_sizes() -> None:
    assert home.round_size(1) == MiB
    assert home.round_size(64 * MiB) == 64 * MiB
    assert home.round_size(64 * MiB + 1) == 65 * MiB
    assert cli_home._signed_size("-32M") == -32 * MiB
    assert cli_home._signed_size("+1G") == 1024 * MiB
    assert cli_home._signed_size("16") == 16 * MiB


def test_kind_of(tmp_path: Path) -> None:
    luks = tmp_path / "a"
    luks.write_bytes(b"LUKS\xba\xbe" + bytes(2000))
    ext = tmp_path / "b"
    ext.write_bytes(bytes(1080) + b"\x53\xef" + bytes(100))
    other = tmp_path / "c"
    other.write_bytes(bytes(4096))
    assert home.kind_of(luks) is HomeKind.LUKS
    assert home.kind_of(ext) is HomeKind.PLAIN
    assert home.kind_of(other) is HomeKind.UNKNOWN
    assert home.kind_of(tmp_path / "missing") is HomeKind.ABSENT


def test_disk_image_is_told_from_home_img(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(510) + b"\x55\xaa" + bytes(512))
    plain = tmp_path / "home.img"
    plain.write_bytes(bytes(1080) + b"\x53\xef" + bytes(100))
    assert media.is_stick_image(disk, "LiveOS")
    assert not media.is_stick_image(plain, "LiveOS")


def test_passphrase_file_drops_one_newline(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_bytes(b"s3cret pass\n")
    assert cli_home._read_passphrase_file(str(f)) == b"s3cret pass"
    f.write_bytes(b"two\n\n")
    assert cli_home._read_passphrase_file(str(f)) == b"two\n"
    f.write_bytes(b"\n")
    with pytest.raises(UsageError):
        cli_home._read_passphrase_file(str(f))


def _sparse_file(path: Path) -> bytes:
    """A 20 MiB file: data at 0, a hole, data at 9 MiB, a zero-filled written block, a hole."""
    size = 20 * MiB
    with open(path, "wb") as f:
        f.truncate(size)
        f.write(os.urandom(100_000))
        f.seek(9 * MiB + 5)
        f.write(os.urandom(3 * MiB))
        f.seek(15 * MiB)
        f.write(bytes(MiB))  # written zeros: data to SEEK_DATA, skipped by the copy
    return path.read_bytes()


@pytest.mark.parametrize("sparse", [True, False])
def test_copy_file_is_exact_and_hashes_right(tmp_path: Path, sparse: bool) -> None:
    src = tmp_path / "src"
    content = _sparse_file(src)
    dst = tmp_path / "dst"
    digest = home.copy_file(src, dst, sparse=sparse)
    assert dst.read_bytes() == content
    assert digest == hashlib.sha256(content).hexdigest()
    assert home.sha256_of(dst) == digest
    assert home.sha256_of(src) == digest
    assert dst.stat().st_mode & 0o777 == 0o600
    allocated = dst.stat().st_blocks * 512
    if sparse:
        assert allocated < 5 * MiB  # only the random data
    else:
        assert allocated >= 20 * MiB  # preallocated for a stick


def test_copy_refuses_existing_dest_unchanged(tmp_path: Path) -> None:
    src = tmp_path / "src.img"
    src.write_bytes(bytes(1080) + b"\x53\xef" + bytes(MiB))
    dest = tmp_path / "home.img"
    dest.write_bytes(b"old home")
    with pytest.raises(home.ExistsError) as exc:
        home.plan_copy(src, dest)
    assert exc.value.code is ExitCode.USAGE
    assert dest.read_bytes() == b"old home"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home.img", "src.img"]


def test_copy_refuses_a_file_that_is_not_a_home_image(tmp_path: Path) -> None:
    src = tmp_path / "notes.txt"
    src.write_bytes(b"hello" * 1000)
    with pytest.raises(LiveOSError) as exc:
        home.plan_copy(src, tmp_path / "home.img")
    assert exc.value.code is ExitCode.CORRUPT
    assert not (tmp_path / "home.img").exists()


def test_fat_limit_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The real vfat case runs in the guest; here only the arithmetic.
    monkeypatch.setattr(home, "fstype_of_dir", lambda d: "vfat")
    with pytest.raises(NoSpaceError) as exc:
        home.check_fits(tmp_path, final_size=4 * 1024 * MiB, new_bytes=0, what="home.img")
    assert "4 GiB" in exc.value.message
    assert home.check_fits(tmp_path, final_size=4 * 1024 * MiB - MiB, new_bytes=0, what="x") in (
        [],
        [f"less than 100 MiB will be left free on {tmp_path}"],
    )


def test_not_enough_space_refused(tmp_path: Path) -> None:
    free = home.free_bytes(tmp_path)
    with pytest.raises(NoSpaceError):
        home.check_fits(tmp_path, final_size=MiB, new_bytes=free + 1024 * MiB, what="home.img")


def test_create_validates_before_touching_anything(tmp_path: Path) -> None:
    target = tmp_path / "home.img"
    with pytest.raises(UsageError):
        home.plan_create(target, size=64 * MiB, fstype="btrfs", encrypt=False)
    with pytest.raises(UsageError):
        home.plan_create(target, size=64 * MiB, encrypt=True, passphrase=None)
    with pytest.raises(UsageError):
        home.plan_create(target, size=MiB, encrypt=False)
    assert list(tmp_path.iterdir()) == []


def test_create_plan_lists_its_steps(tmp_path: Path) -> None:
    plan = home.plan_create(tmp_path / "home.img", size=100 * MiB + 1, encrypt=False)
    text = plan.render()
    assert "allocate 101 MiB (not sparse) at .home.img.partial" in text
    assert "mkfs.ext4 -q -F -E nodiscard -L HOME" in text
    assert not plan.destructive
    assert list(tmp_path.iterdir()) == []  # planning wrote nothing


def test_passphrase_from_stdin_with_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from liveos_tools.cli.home import _read_passphrase_file
    from liveos_tools.errors import UsageError

    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"s3cret pass\n")))
    assert _read_passphrase_file("-") == b"s3cret pass"
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"\n")))
    with pytest.raises(UsageError, match="empty"):
        _read_passphrase_file("-")
