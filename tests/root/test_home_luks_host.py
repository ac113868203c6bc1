"""LUKS refusals that need no device-mapper, so they run on the host: a wrong passphrase,
a LUKS header that does not parse, and a kernel without dm-crypt. Nothing may change."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from liveos_tools.cli.main import main
from liveos_tools.errors import ExitCode
from liveos_tools.tasks import home
from tests.support.shell import MiB

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(shutil.which("cryptsetup") is None, reason="needs cryptsetup"),
]


def _no_dm() -> bool:
    try:
        os.close(os.open("/dev/mapper/control", os.O_RDWR))
    except OSError:
        return True
    return False


NO_DM = _no_dm()
FORMAT = ["cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--key-file", "-"]
FORMAT += ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]  # fast: tests only


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def luks(tmp_path: Path) -> Path:
    img = tmp_path / "home.img"
    with img.open("wb") as f:
        f.truncate(64 * MiB)
    subprocess.run(
        [*FORMAT, str(img)],
        input=b"right",
        check=True,
        capture_output=True,
    )
    (tmp_path / "right").write_bytes(b"right\n")
    (tmp_path / "wrong").write_bytes(b"wrong\n")
    return img


def test_wrong_passphrase_refused_nothing_changes(
    luks: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = sha(luks)
    wrong = str(tmp_path / "wrong")
    capsys.readouterr()
    assert main(
        ["home", "resize", str(luks), "--by", "8M", "--passphrase-file", wrong, "--yes"]
    ) == (ExitCode.BAD_TARGET)
    err = capsys.readouterr().err
    assert err == (
        f"error: {luks}: wrong passphrase (no key slot opens with it)\n"
        "hint: check the passphrase (keyboard layout, caps lock) and try again\n"
    )
    assert main(["home", "check", str(luks), "--passphrase-file", wrong]) == ExitCode.BAD_TARGET
    assert sha(luks) == before and luks.stat().st_size == 64 * MiB
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home.img", "right", "wrong"]


def test_check_without_passphrase_reads_the_header(
    luks: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = home.check(luks)
    assert (report.kind.value, report.encrypted, report.luks_version) == ("luks", True, 2)
    assert report.fsck_clean is None and report.note is not None
    assert main(["home", "check", str(luks)]) == 0  # no terminal: no passphrase asked
    assert "Kind      LUKS2, 64 MiB" in capsys.readouterr().out


def test_header_that_does_not_parse_is_corrupt(
    luks: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Keep the magic, so it still looks like LUKS, and wreck both header copies.
    with open(luks, "r+b") as f:
        f.seek(6)
        f.write(os.urandom(32 * 1024))
    before = sha(luks)
    right = str(tmp_path / "right")
    capsys.readouterr()
    code = main(["home", "resize", str(luks), "--by", "8M", "--passphrase-file", right, "--yes"])
    assert code == ExitCode.CORRUPT
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "the LUKS header does not parse" in err[0]
    assert err[1].startswith("hint: restore it from a header backup")
    assert main(["home", "check", str(luks), "--passphrase-file", right]) == ExitCode.CORRUPT
    assert main(["home", "copy", str(luks), str(tmp_path / "b.img")]) == 0  # bytes still copy
    assert sha(luks) == before


@pytest.mark.skipif(not NO_DM, reason="this kernel has device-mapper")
def test_no_dm_crypt_refused_before_any_change(
    luks: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = sha(luks)
    right = str(tmp_path / "right")
    capsys.readouterr()
    code = main(["home", "resize", str(luks), "--by", "8M", "--passphrase-file", right, "--yes"])
    assert code == ExitCode.TOOL_MISSING
    assert "needs device-mapper" in capsys.readouterr().err
    assert sha(luks) == before
    new = tmp_path / "new" / "home.img"
    new.parent.mkdir()
    code = main(["home", "create", str(new), "--size", "64M", "--passphrase-file", right])
    assert code == ExitCode.TOOL_MISSING
    assert list(new.parent.iterdir()) == []
