"""home/swap review findings on the host: an old home.img survives a failed replacement,
programs are looked for before any write, dry runs and refusals leave a stick image
byte-identical, wrong paths and stick filesystem images are not taken for home.img, and
an interrupted resize finishes at the size first asked for."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from liveos_tools.cli.main import main
from liveos_tools.errors import ExitCode, ToolError
from liveos_tools.tasks import home
from tests.support.shell import MiB, sh
from tests.support.sticks import disk_image, ext4_image, stick_tree

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for loop devices and mounts"),
]

UUID = "8f1b4a8e-1b9c-4c45-9d7e-3f6c2a1b0c11"


def sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fs_bytes(img: Path) -> int:
    out = sh("dumpe2fs", "-h", str(img))
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return int(fields["Block count"]) * int(fields["Block size"])


def attached(image: Path) -> bool:
    return str(image) in sh("losetup", "--list", "--noheadings", "--output", "BACK-FILE")


@pytest.fixture
def stick(tmp_path: Path) -> Path:
    """A stick as a directory: LiveOS/ with a squashfs.img."""
    root = tmp_path / "stick"
    (root / "LiveOS").mkdir(parents=True)
    (root / "LiveOS" / "squashfs.img").write_bytes(b"")
    return root


def without(monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    """Pretend the program `missing` is not installed."""
    import liveos_tools.run as run_mod

    real: Callable[[str], str | None] = run_mod.which
    monkeypatch.setattr(run_mod, "which", lambda t: None if t == missing else real(t))


# --- finding 2 and 9: the old file survives; programs are looked for before any write ------


def test_delete_home_keeps_the_old_one_until_the_new_one_is_in_place(
    stick: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ldir = stick / "LiveOS"
    img = ldir / "home.img"
    assert main(["home", "create", str(stick), "--size", "20M", "--no-encrypt"]) == 0
    sh("debugfs", "-w", "-R", "mkdir /precious", str(img))
    before = sha(img)
    args = ["home", "create", str(stick), "--size", "24M", "--no-encrypt", "--delete-home"]

    with monkeypatch.context() as m:
        without(m, "mkfs.ext4")
        capsys.readouterr()
        assert main([*args, "--yes"]) == ExitCode.TOOL_MISSING
        assert "mkfs.ext4 is not installed" in capsys.readouterr().err
    assert sha(img) == before
    assert sorted(p.name for p in ldir.iterdir()) == ["home.img", "squashfs.img"]

    def fails(*a: object, **k: object) -> None:
        raise ToolError(["mkfs.ext4"], 1, "mkfs.ext4: No space left on device")

    with monkeypatch.context() as m:
        m.setattr("liveos_tools.tools.mkfs.make_ext", fails)
        assert main([*args, "--yes"]) == ExitCode.TOOL_FAILED
    assert sha(img) == before
    assert sorted(p.name for p in ldir.iterdir()) == ["home.img", "squashfs.img"]

    def interrupted(*a: object, **k: object) -> None:
        assert (ldir / ".home.img.partial").stat().st_size == 24 * MiB
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr("liveos_tools.tools.mkfs.make_ext", interrupted)
        assert main([*args, "--yes"]) == ExitCode.ABORTED
    assert sha(img) == before
    assert sorted(p.name for p in ldir.iterdir()) == ["home.img", "squashfs.img"]

    # The plan says the old one stays until the new one replaces it; no delete step.
    capsys.readouterr()
    assert main([*args, "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "the old home.img stays until the new one is complete" in err
    assert "delete the existing" not in err and "rm " not in err

    assert main([*args, "--yes"]) == 0
    assert img.stat().st_size == 24 * MiB and fs_bytes(img) == 24 * MiB
    assert "precious" not in sh("debugfs", "-R", "ls /", str(img))
    assert sorted(p.name for p in ldir.iterdir()) == ["home.img", "squashfs.img"]


def test_swap_create_looks_for_mkswap_before_writing(
    stick: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ldir = stick / "LiveOS"
    with monkeypatch.context() as m:
        without(m, "mkswap")
        capsys.readouterr()
        assert main(["swap", "create", str(stick), "--size", "4M", "--yes"]) == 7
        assert "mkswap is not installed" in capsys.readouterr().err
    assert sorted(p.name for p in ldir.iterdir()) == ["squashfs.img"]

    def fails(*a: object, **k: object) -> None:
        raise ToolError(["mkswap"], 1, "mkswap: error")

    with monkeypatch.context() as m:
        m.setattr("liveos_tools.tools.mkfs.make_swap", fails)
        assert main(["swap", "create", str(stick), "--size", "4M", "--yes"]) == 8
    assert sorted(p.name for p in ldir.iterdir()) == ["squashfs.img"]

    assert main(["swap", "create", str(stick), "--size", "4M", "--yes"]) == 0
    assert sorted(p.name for p in ldir.iterdir()) == ["squashfs.img", "swap.img"]


# --- finding 4: dry runs and refusals leave a stick image byte-identical --------------------


def test_dry_run_and_refusals_leave_a_disk_image_identical(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = stick_tree(tmp_path, label="SOAS", uuid=UUID, home=True)  # an 8 MiB home.img
    disk = disk_image(tmp_path / "a-disk.img", tree, label="SOAS", uuid=UUID)
    d = str(disk)
    before = sha(disk)
    runs: list[tuple[list[str], int]] = [
        (["home", "create", d, "--size", "20M", "--no-encrypt", "--delete-home", "--dry-run"], 0),
        (["home", "create", d, "--size", "20M", "--no-encrypt", "--delete-home"], 9),  # no tty
        (["home", "create", d, "--size", "20M", "--no-encrypt"], 2),  # exists
        (["home", "resize", d, "--by", "16M", "--dry-run"], 0),
        (["home", "resize", d, "--by", "16M"], 9),  # no terminal to confirm on
        (["home", "resize", d, "--by", "4M", "--dry-run"], 2),  # 12 MiB is too small
        (["home", "copy", d, str(tmp_path / "backup.img"), "--dry-run"], 0),
        (["swap", "create", d, "--size", "4M", "--dry-run"], 0),
        (["swap", "create", d, "--size", "0"], 2),
    ]
    for argv, code in runs:
        capsys.readouterr()
        assert main(argv) == code, argv
        err = capsys.readouterr().err
        assert "liveos-r" not in err, err  # never the temporary mount point
        assert sha(disk) == before, argv
        assert not attached(disk)
    assert not (tmp_path / "backup.img").exists()

    capsys.readouterr()
    assert main(["home", "resize", d, "--by", "16M", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"resize home.img from 8 MiB to 24 MiB: {d}:/LiveOS/home.img\n")
    assert "dry run: nothing was changed" in err

    # Said yes: it is reopened read-write and done.
    assert main(["home", "resize", d, "--by", "16M", "--yes"]) == 0
    assert not attached(disk)
    capsys.readouterr()
    assert main(["home", "check", d, "--json"]) == 0
    out = capsys.readouterr().out
    assert f'"path": "{d}:/LiveOS/home.img"' in out and '"size_bytes": 25165824' in out


# --- finding 7: what a TARGET is ----------------------------------------------------------


def test_stick_filesystem_image_is_a_stick_not_a_home_img(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = stick_tree(tmp_path, label="SOAS", uuid=UUID, home=True)
    fs = ext4_image(tree, tmp_path / "a-fs.img", label="SOAS", uuid=UUID)
    before = sha(fs)
    capsys.readouterr()
    assert main(["home", "check", str(fs)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"home.img  {fs}:/LiveOS/home.img\nKind      plain, 8 MiB\n")
    assert "label HOME" in out and "SOAS" not in out
    assert main(["home", "resize", str(fs), "--by", "8M", "--dry-run"]) == 0
    assert "resize home.img from 8 MiB to 16 MiB" in capsys.readouterr().err
    assert sha(fs) == before and not attached(fs)

    # A plain home.img is still the file itself.
    img = tmp_path / "home.img"
    assert main(["home", "create", str(img), "--size", "16M", "--no-encrypt"]) == 0
    capsys.readouterr()
    assert main(["home", "check", str(img)]) == 0
    assert capsys.readouterr().out.startswith(f"home.img  {img}\nKind      plain, 16 MiB\n")


def test_paths_that_do_not_exist_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    media = tmp_path / "media"
    (media / "STICK" / "LiveOS").mkdir(parents=True)
    (media / "STICK" / "LiveOS" / "squashfs.img").write_bytes(b"")
    capsys.readouterr()
    code = main(["home", "create", str(media / "STIKC"), "--size", "20M", "--no-encrypt", "--yes"])
    assert code == ExitCode.BAD_TARGET
    assert capsys.readouterr().err.startswith(f"error: {media / 'STIKC'}: no such directory\n")
    assert main(["swap", "create", str(media / "TYPO"), "--size", "4M", "--yes"]) == 4
    notes = tmp_path / "notes.txt"
    notes.write_text("not a home\n")
    code = main(["home", "create", str(notes), "--size", "20M", "--no-encrypt", "--delete-home"])
    assert code == ExitCode.BAD_TARGET
    assert notes.read_text() == "not a home\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["media", "notes.txt"]
    assert sorted(p.name for p in media.iterdir()) == ["STICK"]


# --- finding 10: an interrupted resize finishes where it was first meant to ----------------


def test_rerun_after_an_interrupted_grow_finishes_at_the_first_size(stick: Path) -> None:
    img = stick / "LiveOS" / "home.img"
    assert main(["home", "create", str(stick), "--size", "16M", "--no-encrypt"]) == 0
    # Killed after the file was extended, before resize2fs (no state file: by hand).
    with open(img, "r+b") as f:
        f.truncate(24 * MiB)
    plan = home.plan_resize(img, by_bytes=8 * MiB)
    assert plan.title == (
        "resize home.img from 24 MiB to 24 MiB (its filesystem from 16 MiB to 24 MiB)"
    )
    assert main(["home", "resize", str(stick), "--by", "8M", "--yes"]) == 0
    assert (img.stat().st_size, fs_bytes(img)) == (24 * MiB, 24 * MiB)


def test_rerun_after_an_interrupted_shrink_finishes_at_the_first_size(stick: Path) -> None:
    img = stick / "LiveOS" / "home.img"
    state = stick / "LiveOS" / ".home.img.resize"
    assert main(["home", "create", str(stick), "--size", "40M", "--no-encrypt"]) == 0
    plan = home.plan_resize(img, by_bytes=-8 * MiB)
    # Run it up to the filesystem's shrink, then "kill" it.
    for step in plan.steps:
        assert step.action is not None
        step.action()
        if step.summary.startswith("shrink the filesystem"):
            break
    # resize2fs cuts a regular file itself: the file and its filesystem are at 32 MiB
    # already; without the recorded sizes, "--by=-8M" again would go on to 24 MiB.
    assert (img.stat().st_size, fs_bytes(img)) == (32 * MiB, 32 * MiB)
    assert state.read_text() == f"from={40 * MiB} to={32 * MiB}\n"
    again = home.plan_resize(img, by_bytes=-8 * MiB)
    assert "finishing the resize from 40 MiB to 32 MiB that stopped half-way" in again.notes
    assert [s.summary for s in again.steps] == ["remove .home.img.resize"]
    assert main(["home", "resize", str(stick), "--by=-8M", "--yes"]) == 0
    assert (img.stat().st_size, fs_bytes(img)) == (32 * MiB, 32 * MiB)
    assert not state.exists()
    # Done: the same command now shrinks by 8M from here, as asked.
    assert home.plan_resize(img, by_bytes=-8 * MiB).title == "resize home.img from 32 MiB to 24 MiB"


# --- finding 15: hints, a verification class, an encrypted dry run ------------------------


def test_copy_that_does_not_verify_is_corrupt_with_a_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "home.img"
    assert main(["home", "create", str(src), "--size", "16M", "--no-encrypt"]) == 0
    dest = tmp_path / "backup.img"
    dest.write_bytes(b"LUKS\xba\xbe the old backup")
    monkeypatch.setattr(home, "sha256_of", lambda p: "0" * 64)
    capsys.readouterr()
    assert main(["home", "copy", str(src), str(dest), "--delete-home", "--yes"]) == 10
    err = capsys.readouterr().err.splitlines()
    assert err[-2].startswith("error: the copy does not match the source")
    assert err[-1].startswith("hint: nothing was replaced")
    assert dest.read_bytes() == b"LUKS\xba\xbe the old backup"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup.img", "home.img"]


def test_encrypted_create_dry_run_asks_nothing_and_needs_no_dm_crypt(
    stick: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    # No terminal and no --passphrase-file: a dry run still prints the plan.
    assert main(["home", "create", str(stick), "--size", "64M", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "format it as LUKS2" in err
    assert "the passphrase is needed before anything is written (not asked in a dry run)" in err
    assert sorted(p.name for p in (stick / "LiveOS").iterdir()) == ["squashfs.img"]
    assert main(["home", "create", str(stick), "--size", "0", "--no-encrypt"]) == 2
    err = capsys.readouterr().err
    assert "error: the size of home.img must be positive\nhint: give e.g. --size 2G" in err
