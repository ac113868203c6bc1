"""Host-side tests of the guest harness's pure parts and of the inner plugin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests import guestvm

REPO = Path(__file__).resolve().parents[2]


def _opt_after(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_qemu_argv_uses_tcg_and_remaps_devices(tmp_path: Path) -> None:
    argv = guestvm.qemu_argv(
        kernel=tmp_path / "vmlinuz",
        initrd=tmp_path / "initrd.gz",
        console=tmp_path / "console",
        outdir=tmp_path / "o,ut",
        mem_mb=1024,
    )
    assert argv[0] == guestvm.QEMU
    assert "-enable-kvm" not in argv
    assert _opt_after(argv, "-accel") == ["tcg"]
    assert _opt_after(argv, "-m") == ["1024"]
    fsdevs = _opt_after(argv, "-fsdev")
    assert len(fsdevs) == 2
    assert "path=/," in fsdevs[0]
    assert "readonly=on" in fsdevs[0]
    assert "multidevs=remap" in fsdevs[0]
    assert f"path={tmp_path}/o,,ut," in fsdevs[1]
    tags = [d.rsplit("mount_tag=", 1)[1] for d in _opt_after(argv, "-device")]
    assert tags == ["hostroot", "out"]


def test_qemu_argv_share_adds_third_device(tmp_path: Path) -> None:
    argv = guestvm.qemu_argv(
        kernel=tmp_path / "k",
        initrd=tmp_path / "i",
        console=tmp_path / "c",
        outdir=tmp_path,
        mem_mb=2048,
        share=tmp_path / "share",
    )
    tags = [d.rsplit("mount_tag=", 1)[1] for d in _opt_after(argv, "-device")]
    assert tags == ["hostroot", "out", "share"]


def test_job_wrapper_exports_env_preloads_and_mounts_share(tmp_path: Path) -> None:
    share = tmp_path / "with space"
    text = guestvm.job_wrapper(
        kroot=Path("/cache/root"), env={"A": "x y", "B": "1"}, share=share, modules=("dm_mod",)
    )
    assert "export A='x y'" in text
    assert "modprobe -d /cache/root" in text
    assert "for m in dm_mod; do" in text
    assert f"share '{share}'" in text
    assert text.rstrip().endswith("exec /bin/bash /run/out/job.sh")
    subprocess.run(["sh", "-n"], input=text, text=True, check=True)


def test_guest_env_is_what_the_guest_needs() -> None:
    env = guestvm.GUEST_ENV
    assert env["LIVEOS_IN_GUEST"] == "1"
    assert env["TMPDIR"] == "/run/tmp"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    assert "/usr/sbin" in env["PATH"].split(":")


def test_unavailable_reason_names_the_setup_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIVEOS_GUEST_CACHE", str(tmp_path))
    reason = guestvm.guest_unavailable_reason()
    assert reason is not None
    assert "scripts/setup-guest-kernel" in reason
    assert "\n" not in reason


def test_unavailable_reason_none_when_cache_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kver = "6.1.0-99-amd64"
    (tmp_path / "kver").write_text(kver + "\n")
    (tmp_path / "root/boot").mkdir(parents=True)
    (tmp_path / f"root/boot/vmlinuz-{kver}").write_bytes(b"")
    (tmp_path / f"root/lib/modules/{kver}").mkdir(parents=True)
    (tmp_path / f"root/lib/modules/{kver}/modules.dep").write_text("")
    (tmp_path / "initrd.gz").write_bytes(b"")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / guestvm.QEMU).write_text("#!/bin/sh\n")
    (bindir / guestvm.QEMU).chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir))
    monkeypatch.setenv("LIVEOS_GUEST_CACHE", str(tmp_path))
    assert guestvm.guest_unavailable_reason() is None
    assert guestvm.guest_kernel_version() == kver


@pytest.mark.parametrize(
    ("output", "line"),
    [
        ("..\n1 passed in 8.24s\n", "1 passed in 8.24s"),
        ("x\n===== 1 failed, 2 passed in 3.00s =====\n\n", "1 failed, 2 passed in 3.00s"),
        ("ERROR: not found\n", ""),
        ("", ""),
    ],
)
def test_inner_summary_line(output: str, line: str) -> None:
    assert guestvm.inner_summary_line(output) == line


def test_parse_results_tolerates_garbage() -> None:
    assert guestvm.parse_results("") == {}
    assert guestvm.parse_results('{"a": ') == {}
    assert guestvm.parse_results("[1, 2]") == {}
    got = guestvm.parse_results(
        json.dumps({"t.py::a": {"outcome": "failed", "longrepr": "boom", "duration": 1}})
    )
    assert got == {"t.py::a": guestvm.InnerResult("failed", "boom", "", 1.0)}


def test_nodeid_files_dedups_in_order() -> None:
    assert guestvm.nodeid_files(["b.py::x", "a.py::C::y", "b.py::z[1-2]"]) == ["b.py", "a.py"]


def test_inner_pytest_script_runs_files_with_plugin() -> None:
    text = guestvm.inner_pytest_script(
        python="/py/bin/python3", rootdir=Path("/repo"), nodeids=["t/a.py::x[1]", "t/a.py::y"]
    )
    assert text.startswith("cd /repo ")
    assert "-p tests.guest_plugin -p no:cacheprovider" in text
    assert "--continue-on-collection-errors" in text
    assert text.rstrip().endswith("-q t/a.py")


def _run(results: dict[str, guestvm.InnerResult], nodeids: list[str]) -> guestvm.GuestPytestRun:
    return guestvm.GuestPytestRun(
        nodeids=tuple(nodeids),
        result=guestvm.GuestResult(rc=1, log="log", console="console", seconds=1.0),
        results=results,
    )


def test_lookup_falls_back_to_the_closest_collector() -> None:
    run = _run(
        {
            "t/a.py::x": guestvm.InnerResult("passed"),
            "t/b.py": guestvm.InnerResult("error", "ImportError"),
            "t/sub": guestvm.InnerResult("skipped", "no module"),
        },
        ["t/a.py::x", "t/b.py::y", "t/sub/c.py::z", "t/bb.py::w"],
    )
    assert run.lookup("t/a.py::x") == guestvm.InnerResult("passed")
    assert run.lookup("t/b.py::y") == guestvm.InnerResult("error", "ImportError")
    assert run.lookup("t/sub/c.py::z") == guestvm.InnerResult("skipped", "no module")
    assert run.lookup("t/bb.py::w") is None
    assert not run.all_passed
    assert "log" in run.failure_context()


# -------------------------------------------------------- the inner plugin


def test_plugin_records_every_outcome(tmp_path: Path) -> None:
    (tmp_path / "test_inner.py").write_text(
        textwrap.dedent(
            """
            import pytest

            def test_pass():
                pass

            def test_fail():
                assert 1 + 1 == 3, "arith"

            def test_skip():
                pytest.skip("later")

            @pytest.mark.xfail(reason="known")
            def test_xfail():
                assert False

            @pytest.fixture
            def bad():
                raise RuntimeError("fixture")

            def test_error(bad):
                pass

            def test_not_wanted():
                pass
            """
        )
    )
    (tmp_path / "test_broken.py").write_text("raise ImportError('nope')\n")
    results = tmp_path / "results.json"
    wanted = [
        f"test_inner.py::{n}" for n in ("test_pass", "test_fail", "test_skip", "test_xfail")
    ] + ["test_inner.py::test_error", "test_inner.py::test_gone", "test_broken.py::test_x"]
    nodeids = tmp_path / "nodeids.json"
    nodeids.write_text(json.dumps(wanted))
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "LIVEOS_GUEST_RESULTS": str(results),
        "LIVEOS_GUEST_NODEIDS": str(nodeids),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-p", "tests.guest_plugin"),
            *("-p", "no:cacheprovider", "--continue-on-collection-errors", "-q"),
            *("test_inner.py", "test_broken.py"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    got = guestvm.parse_results(results.read_text())
    outcomes = {k: v.outcome for k, v in got.items()}
    assert outcomes == {
        "test_inner.py::test_pass": "passed",
        "test_inner.py::test_fail": "failed",
        "test_inner.py::test_skip": "skipped",
        "test_inner.py::test_xfail": "xfailed",
        "test_inner.py::test_error": "error",
        "test_inner.py::test_gone": "error",
        "test_broken.py": "error",
    }
    assert "arith" in got["test_inner.py::test_fail"].longrepr
    assert got["test_inner.py::test_fail"].crash.startswith("AssertionError: arith")
    # The first line keeps its indentation (report.longreprtext would strip it).
    assert got["test_inner.py::test_fail"].longrepr.startswith("    def test_fail")
    assert got["test_inner.py::test_skip"].longrepr == "later"
    assert got["test_inner.py::test_xfail"].longrepr == "known"
    assert "not collected" in got["test_inner.py::test_gone"].longrepr
    assert "nope" in got["test_broken.py"].longrepr
    assert "1 deselected" in proc.stdout


@pytest.mark.parametrize(
    ("rc", "console", "expected"),
    [
        (3, "", "the job exited with status 3"),
        (None, "", "the guest did not boot (see console)"),
        (None, f"[{guestvm.TIMEOUT_NOTE} 8 s]", "the guest did not boot before the timeout"),
        (None, "LIVEOS-GUEST-UP\nLIVEOS-GUEST-FAIL: insmod 9p", "the guest booted but its setup"),
        (None, f"LIVEOS-GUEST-JOB-START\n[{guestvm.TIMEOUT_NOTE} 1 s]", "the job timed out"),
    ],
)
def test_describe_tells_boot_failure_from_timeout(
    rc: int | None, console: str, expected: str
) -> None:
    got = guestvm.describe(guestvm.GuestResult(rc=rc, log="", console=console, seconds=1.0))
    assert got.startswith(expected)
