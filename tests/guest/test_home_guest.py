"""home.img with LUKS, and on a vfat stick: needs dm-crypt and vfat, so it runs in the guest.

One cycle: create (LUKS) on an ext4 stick, write files, grow, shrink, copy to a vfat
stick, check there; after each step the files read back intact through dm-crypt.
Then the refusals that need the real kernel: a wrong passphrase, a shrink below the
data, an image in use (opened in dm-crypt), the FAT file size limit.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from liveos_tools.errors import ExitCode
from tests.support.shell import MiB, cli, sh

pytestmark = pytest.mark.guest

PASS = b"correct horse battery"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(autouse=True)
def fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.fastkdf import use_fast_kdf

    use_fast_kdf(monkeypatch)


@pytest.fixture(scope="module", autouse=True)
def crypto_modules() -> None:
    # The guest cannot autoload modules (the kernel's modprobe looks in the host's
    # /lib/modules), and the harness preloads dm_crypt but not LUKS2's default cipher,
    # aes-xts-plain64, nor the AF_ALG socket cryptsetup reads key slots through.
    from tests import guestvm

    kroot = guestvm.cache_dir() / "root"
    for module in ("xts", "aesni_intel", "algif_skcipher", "nls_ascii"):
        subprocess.run(["modprobe", "-d", str(kroot), module], capture_output=True, check=False)


@pytest.fixture
def make_stick(tmp_path: Path) -> Iterator[Callable[[str, str], Path]]:
    loops: list[str] = []
    mounted: list[Path] = []

    def make(name: str, fstype: str) -> Path:
        image = tmp_path / f"{name}.img"
        with image.open("wb") as f:
            f.truncate(160 * MiB)
        if fstype == "vfat":
            sh("mkfs.fat", "-F", "32", str(image))
        else:
            sh(f"mkfs.{fstype}", "-q", "-F", str(image))
        loop = sh("losetup", "--find", "--show", str(image)).strip()
        loops.append(loop)
        where = tmp_path / name
        where.mkdir()
        # Debian's vfat defaults to iocharset=ascii (nls_ascii), which the guest may lack.
        opts = ["-o", "iocharset=iso8859-1"] if fstype == "vfat" else []
        sh("mount", "-t", fstype, *opts, loop, str(where))
        mounted.append(where)
        (where / "LiveOS").mkdir()
        (where / "LiveOS" / "squashfs.img").write_bytes(b"")
        return where

    try:
        yield make
    finally:
        for where in reversed(mounted):
            subprocess.run(["umount", str(where)], check=False)
        for loop in loops:
            subprocess.run(["losetup", "--detach", loop], check=False)
        assert not [d for d in Path("/sys/block").glob("dm-*")], "a dm device leaked"


class Luks:
    """Open home.img with cryptsetup (not with the code under test) to write and read files."""

    def __init__(self, img: Path, name: str = "test-home") -> None:
        self.img, self.name = img, name

    def __enter__(self) -> str:
        sh("cryptsetup", "open", "--key-file", "-", str(self.img), self.name, input=PASS)
        minor = (Path("/sys/block") / self._dm() / "dev").read_text().split(":")[1].strip()
        node = f"/dev/dm-{minor}"
        assert Path(node).is_block_device()
        return node

    def _dm(self) -> str:
        for d in Path("/sys/block").glob("dm-*"):
            if (d / "dm" / "name").read_text().strip() == self.name:
                return d.name
        raise AssertionError(f"no dm device {self.name}")

    def __exit__(self, *exc: object) -> None:
        sh("cryptsetup", "close", self.name)


def put_files(img: Path, files: dict[str, bytes], scratch: Path) -> None:
    with Luks(img) as dev:
        for name, data in files.items():
            src = scratch / f"src-{name}"
            src.write_bytes(data)
            sh("debugfs", "-w", "-R", f"write {src} {name}", dev)


def assert_files(img: Path, files: dict[str, bytes]) -> tuple[int, str]:
    """The files read back intact; returns the filesystem's size and label."""
    with Luks(img) as dev:
        for name, data in files.items():
            got = subprocess.run(
                ["debugfs", "-R", f"cat /{name}", dev], check=True, capture_output=True
            ).stdout
            assert got == data, f"{name} changed"
        assert subprocess.run(["e2fsck", "-f", "-n", dev], capture_output=True).returncode == 0
        out = sh("dumpe2fs", "-h", dev)
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    size = int(fields["Block count"]) * int(fields["Block size"])
    return size, fields["Filesystem volume name"].strip()


def test_luks_cycle_ext4_to_vfat(
    make_stick: Callable[[str, str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = make_stick("a", "ext4")
    b = make_stick("b", "vfat")
    pw = tmp_path / "pw"
    pw.write_bytes(PASS + b"\n")
    wrong = tmp_path / "wrong"
    wrong.write_bytes(b"incorrect horse\n")
    img = a / "LiveOS" / "home.img"

    assert cli("home", "create", str(a), "--size", "64M", "--passphrase-file", str(pw)) == 0
    st = img.stat()
    assert (st.st_size, st.st_mode & 0o777) == (64 * MiB, 0o600)
    assert st.st_blocks * 512 >= 64 * MiB
    assert img.read_bytes()[:6] == b"LUKS\xba\xbe"
    assert assert_files(img, {}) == (48 * MiB, "HOME")  # 64 MiB less the 16 MiB LUKS2 header

    files = {"essay.txt": "Grüße\n".encode() * 500, "photo.bin": os.urandom(2 * MiB)}
    put_files(img, files, tmp_path)
    assert assert_files(img, files)[0] == 48 * MiB

    # A wrong passphrase is refused before anything changes (no header backup either).
    before = sha(img)
    capsys.readouterr()
    code = cli("home", "resize", str(a), "--by", "32M", "--passphrase-file", str(wrong), "--yes")
    assert code == ExitCode.BAD_TARGET
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "wrong passphrase" in err and err.count("\n") == 2
    assert sha(img) == before
    assert sorted(p.name for p in img.parent.iterdir()) == ["home.img", "squashfs.img"]

    grow = ("home", "resize", str(a), "--by", "32M", "--passphrase-file", str(pw), "--yes")
    assert cli(*grow) == 0
    assert img.stat().st_size == 96 * MiB
    assert assert_files(img, files)[0] == 80 * MiB
    backup = img.with_name("home.img.luks-header")
    assert backup.read_bytes()[:6] == b"LUKS\xba\xbe"

    # Below the data: refused, byte-identical.
    before = sha(img)
    small = ("home", "resize", str(a), "--to", "24M", "--passphrase-file", str(pw), "--yes")
    assert cli(*small) == ExitCode.USAGE  # below the smallest LUKS home.img
    assert sha(img) == before

    shrink = ("home", "resize", str(a), "--to", "56M", "--passphrase-file", str(pw), "--yes")
    assert cli(*shrink) == 0
    assert img.stat().st_size == 56 * MiB
    assert assert_files(img, files)[0] == 40 * MiB

    # In use (opened in dm-crypt): every command refuses.
    with Luks(img):
        capsys.readouterr()
        assert cli(*grow) == ExitCode.IN_USE
        assert cli("home", "check", str(a), "--passphrase-file", str(pw)) == ExitCode.IN_USE
        assert cli("home", "copy", str(a), str(b)) == ExitCode.IN_USE
        assert "in use" in capsys.readouterr().err
    assert img.stat().st_size == 56 * MiB

    assert cli("home", "copy", str(a), str(b)) == 0
    copied = b / "LiveOS" / "home.img"
    assert sha(copied) == sha(img)
    assert assert_files(copied, files)[0] == 40 * MiB
    capsys.readouterr()
    assert cli("home", "check", str(b), "--passphrase-file", str(pw), "--json") == 0
    out = capsys.readouterr().out
    assert '"fsck_clean": true' in out and '"luks_version": 2' in out and '"label": "HOME"' in out

    # vfat holds no file of 4 GiB: refused before anything is written.
    capsys.readouterr()
    big = ("home", "create", str(b), "--size", "4G", "--no-encrypt", "--delete-home", "--yes")
    assert cli(*big) == ExitCode.NO_SPACE
    assert "cannot hold a file of 4 GiB" in capsys.readouterr().err
    assert sha(copied) == sha(img)


def test_plain_home_on_vfat_grows_and_checks(
    make_stick: Callable[[str, str], Path], tmp_path: Path
) -> None:
    b = make_stick("b", "vfat")
    img = b / "LiveOS" / "home.img"
    assert cli("home", "create", str(b), "--size", "40M", "--no-encrypt") == 0
    data = os.urandom(MiB)
    src = tmp_path / "f"
    src.write_bytes(data)
    sh("debugfs", "-w", "-R", f"write {src} f", str(img))
    assert cli("home", "resize", str(b), "--by", "24M", "--yes") == 0
    assert img.stat().st_size == 64 * MiB
    got = subprocess.run(["debugfs", "-R", "cat /f", str(img)], capture_output=True).stdout
    assert got == data
    assert cli("home", "check", str(b)) == 0
    assert cli("swap", "create", str(b), "--size", "8M") == 0
    assert "TYPE=swap" in sh("blkid", "-p", "-o", "export", str(b / "LiveOS" / "swap.img"))
