"""run(): errors carry argv, exit code and stderr; a missing tool names its Debian package."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from liveos_tools.errors import ExitCode, ToolError, ToolMissingError
from liveos_tools.run import TOOL_PACKAGES, run


def path_without(tmp_path: Path, *missing: str) -> str:
    """A PATH dir holding links to every program of the real PATH except `missing`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for d in [*os.environ["PATH"].split(os.pathsep), "/usr/sbin", "/sbin"]:
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            link = bin_dir / name
            if name not in missing and not link.exists():
                link.symlink_to(os.path.join(d, name))
    return str(bin_dir)


def test_tool_error_carries_argv_code_and_stderr() -> None:
    with pytest.raises(ToolError) as info:
        run(["ls", "/definitely/not/here"])
    err = info.value
    assert err.argv == ["ls", "/definitely/not/here"]
    assert err.returncode == 2
    assert "No such file" in err.stderr and "No such file" in err.message
    assert err.code == ExitCode.TOOL_FAILED
    assert run(["ls", "/definitely/not/here"], check=False).returncode == 2


def test_missing_tool_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", path_without(tmp_path, "dmsetup"))
    with pytest.raises(ToolMissingError) as info:
        run(["dmsetup", "version"])
    assert info.value.message == "dmsetup is not installed"
    assert info.value.hint == "install it: apt-get install dmsetup"
    assert info.value.code == ExitCode.TOOL_MISSING


def test_every_tool_we_run_has_a_package() -> None:
    root = Path(__file__).resolve().parent.parent.parent / "liveos_tools"
    source = "\n".join(p.read_text() for p in root.rglob("*.py"))
    assert TOOL_PACKAGES["losetup"] == "mount" and TOOL_PACKAGES["blkid"] == "util-linux"
    for tool in ("dmsetup", "losetup", "blkid", "e2fsck", "unsquashfs", "cryptsetup"):
        assert f'"{tool}"' in source and tool in TOOL_PACKAGES


@pytest.mark.skipif(os.geteuid() != 0, reason="reading a disk image needs root")
def test_cli_says_which_package_to_install(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(4 << 20)
        f.seek(510)
        f.write(b"\x55\xaa")  # an (empty) partition table: not an overlay
    env = {**os.environ, "PATH": path_without(tmp_path, "losetup")}
    r = subprocess.run(
        [sys.executable, "-m", "liveos_tools.cli.main", "status", str(image)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == ExitCode.TOOL_MISSING
    assert r.stderr.splitlines() == [
        "error: losetup is not installed",
        "hint: install it: apt-get install mount",
    ]
