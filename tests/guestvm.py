"""Run shell jobs inside a throw-away Linux guest under qemu (software emulation).

The host kernel of the CI machine has no device-mapper or vfat, so tests that
need a real kernel boot a stock Debian kernel prepared by
``scripts/setup-guest-kernel``.  The guest's root is the host's root shared
read-only over 9p, so the repository and the host's Python are visible at the
same absolute paths; only ``/run`` (tmpfs), ``/run/out`` (read-write share with
the harness) and an optional ``share`` directory are writable.

Public API (import it as ``from tests import guestvm``):

* ``IN_GUEST`` - true inside the guest.
* ``guest_unavailable_reason()`` - why the guest cannot be booted, or None.
* ``run_in_guest(script, *, timeout, mem_mb, share)`` -> ``GuestResult``.
* ``guest_job(...)`` - the same as a context manager that also yields the
  host side of /run/out, for jobs that leave files behind.
* ``GUEST_ENV`` - the environment jobs run with.
* ``run_guest_pytest(nodeids, rootdir, ...)`` -> ``GuestPytestRun``, used by
  tests/conftest.py to run all ``@pytest.mark.guest`` tests in one boot.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IN_GUEST: bool = os.environ.get("LIVEOS_IN_GUEST") == "1"

SETUP_SCRIPT = "scripts/setup-guest-kernel"
QEMU = "qemu-system-x86_64"
DEFAULT_CACHE = "/var/cache/liveos-tools/guest"

# Loaded in the guest before every job; each one is optional because a future
# kernel may build some of them in or drop them.
PRELOAD_MODULES: tuple[str, ...] = (
    "loop",
    "dm_mod",
    "dm_snapshot",
    "dm_crypt",
    "dm_flakey",
    "squashfs",
    "ext4",
    "vfat",
    "nls_cp437",
    "nls_iso8859_1",
    "nls_utf8",
    "nls_ascii",
    # dm-crypt's default LUKS2 cipher (aes-xts-plain64); the guest cannot autoload.
    "xts",
    "aesni_intel",
    "algif_skcipher",
    "iso9660",
    "overlay",
)

TIMEOUT_NOTE = "guestvm: killed qemu after the timeout of"

GUEST_OUT = "/run/out"
GUEST_TMP = "/run/tmp"
GUEST_RESULTS = f"{GUEST_OUT}/results.json"
GUEST_NODEIDS = f"{GUEST_OUT}/nodeids.json"
# msize well above the 8 KiB default makes 9p reads of Python's stdlib bearable.
NINEP_OPTS = "trans=virtio,version=9p2000.L,msize=262144"


def _guest_env() -> dict[str, str]:
    # The host interpreter's directory goes first so that `python3` in a job
    # is the interpreter (and site-packages) running the tests.
    pydir = str(Path(sys.executable).parent)
    return {
        "PATH": f"{pydir}:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "HOME": GUEST_TMP,
        "TMPDIR": GUEST_TMP,
        # The root is read-only: no .pyc files, and Hypothesis must keep its
        # example database somewhere writable.
        "PYTHONDONTWRITEBYTECODE": "1",
        "HYPOTHESIS_STORAGE_DIRECTORY": f"{GUEST_TMP}/.hypothesis",
        "LIVEOS_IN_GUEST": "1",
    }


GUEST_ENV: Mapping[str, str] = _guest_env()


@dataclass(frozen=True)
class GuestResult:
    """Outcome of one guest boot.

    ``rc`` is the job's exit status, or None when the guest never ran the job
    to completion (boot failure, timeout).  ``log`` is the job's stdout+stderr,
    ``console`` the serial console (init markers, module preload failures,
    kernel panics).
    """

    rc: int | None
    log: str
    console: str
    seconds: float


@dataclass(frozen=True)
class GuestPaths:
    cache: Path
    kver: str
    kroot: Path
    kernel: Path
    initrd: Path


def cache_dir() -> Path:
    return Path(os.environ.get("LIVEOS_GUEST_CACHE") or DEFAULT_CACHE)


def _guest_paths() -> GuestPaths | str:
    """The prepared kernel files, or a reason why they are not usable."""
    cache = cache_dir()
    kver_file = cache / "kver"
    try:
        kver = kver_file.read_text().strip()
    except OSError:
        return f"no guest kernel in {cache} (run {SETUP_SCRIPT})"
    kroot = cache / "root"
    paths = GuestPaths(
        cache=cache,
        kver=kver,
        kroot=kroot,
        kernel=kroot / "boot" / f"vmlinuz-{kver}",
        initrd=cache / "initrd.gz",
    )
    for f in (paths.kernel, paths.initrd, kroot / "lib" / "modules" / kver / "modules.dep"):
        if not f.is_file():
            return f"{f} missing (run {SETUP_SCRIPT})"
    return paths


def guest_unavailable_reason() -> str | None:
    """None when a guest can be booted, else a one-line reason."""
    if shutil.which(QEMU) is None:
        return f"{QEMU} not found (run {SETUP_SCRIPT})"
    paths = _guest_paths()
    return paths if isinstance(paths, str) else None


def guest_kernel_version() -> str | None:
    paths = _guest_paths()
    return None if isinstance(paths, str) else paths.kver


def _qemu_opt(path: Path) -> str:
    # qemu option values escape a literal comma by doubling it.
    return str(path).replace(",", ",,")


def qemu_argv(
    *,
    kernel: Path,
    initrd: Path,
    console: Path,
    outdir: Path,
    mem_mb: int,
    share: Path | None = None,
    smp: int = 2,
) -> list[str]:
    argv = [
        QEMU,
        # KVM hangs on this CI host; TCG is slow but dependable.
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-m",
        str(mem_mb),
        "-smp",
        str(smp),
        "-nodefaults",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        f"file:{console}",
        "-no-reboot",
        "-kernel",
        str(kernel),
        "-initrd",
        str(initrd),
        # panic=-1 + -no-reboot: a panic ends qemu instead of hanging until the timeout.
        "-append",
        "console=ttyS0 quiet panic=-1",
        # multidevs=remap: the host root spans several filesystems (proc, sys, ...);
        # without it inode numbers collide and the guest sees garbage.
        "-fsdev",
        "local,id=r,path=/,readonly=on,security_model=none,multidevs=remap",
        "-device",
        "virtio-9p-pci,fsdev=r,mount_tag=hostroot",
        "-fsdev",
        f"local,id=o,path={_qemu_opt(outdir)},security_model=none",
        "-device",
        "virtio-9p-pci,fsdev=o,mount_tag=out",
    ]
    if share is not None:
        argv += [
            "-fsdev",
            f"local,id=s,path={_qemu_opt(share)},security_model=none,multidevs=remap",
            "-device",
            "virtio-9p-pci,fsdev=s,mount_tag=share",
        ]
    return argv


def job_wrapper(
    *,
    kroot: Path,
    env: Mapping[str, str],
    share: Path | None = None,
    modules: Sequence[str] = PRELOAD_MODULES,
) -> str:
    """The /run/out/cmd.sh that init runs in the chroot (POSIX sh)."""
    q = shlex.quote
    lines = ["set -u"]
    lines += [f"export {k}={q(v)}" for k, v in env.items()]
    # Failures go to the console rather than the job log so `log` stays
    # exactly what the job printed.
    lines.append(
        f"for m in {' '.join(q(m) for m in modules)}; do\n"
        f'    modprobe -d {q(str(kroot))} "$m" 2>/dev/console'
        ' || echo "LIVEOS-GUEST-PRELOAD-FAILED $m" >/dev/console\n'
        "done"
    )
    if share is not None:
        # mkdir only succeeds where the read-only root does not reach (/run).
        lines.append(
            f"mkdir -p {q(str(share))} 2>/dev/null\n"
            f"mount -t 9p -o {NINEP_OPTS} share {q(str(share))} || {{\n"
            f'    echo "guestvm: cannot mount the share at "{q(str(share))} >&2\n'
            "    exit 125\n"
            "}"
        )
    lines.append("echo LIVEOS-GUEST-PRELOAD-DONE >/dev/console")
    lines.append("cd /")
    lines.append(f"exec /bin/bash {GUEST_OUT}/job.sh")
    return "\n".join(lines) + "\n"


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


@contextlib.contextmanager
def guest_job(
    script: str,
    *,
    timeout: float = 600,
    mem_mb: int = 2048,
    share: Path | None = None,
    files: Mapping[str, str] | None = None,
) -> Iterator[tuple[GuestResult, Path]]:
    """Like run_in_guest, but also yields the host side of /run/out.

    ``files`` ({name: text}) are placed in /run/out before the boot.  The
    directory (and anything the job wrote under /run/out) is removed when the
    context exits.
    """
    paths = _guest_paths()
    if isinstance(paths, str):
        raise RuntimeError(paths)
    if share is not None:
        share = share.resolve()
        if not share.is_dir():
            raise ValueError(f"share {share} is not a directory")
    with tempfile.TemporaryDirectory(prefix="liveos-guest-") as tmp:
        outdir = Path(tmp) / "out"
        outdir.mkdir()
        console = Path(tmp) / "console"
        for name, text in (files or {}).items():
            (outdir / name).write_text(text)
        (outdir / "job.sh").write_text(script)
        (outdir / "cmd.sh").write_text(job_wrapper(kroot=paths.kroot, env=GUEST_ENV, share=share))
        argv = qemu_argv(
            kernel=paths.kernel,
            initrd=paths.initrd,
            console=console,
            outdir=outdir,
            mem_mb=mem_mb,
            share=share,
            smp=min(2, os.cpu_count() or 1),
        )
        start = time.monotonic()
        note = ""
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            qemu_out, _ = proc.communicate(timeout=timeout)
            if proc.returncode != 0:
                note = f"\n[guestvm: qemu exited with status {proc.returncode}]\n"
            if qemu_out:
                note += "[guestvm: qemu said]\n" + qemu_out.decode(errors="replace")
        except subprocess.TimeoutExpired:
            note = f"\n[{TIMEOUT_NOTE} {timeout:g} s]\n"
        finally:
            # Also covers KeyboardInterrupt: never leave an emulator spinning.
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        seconds = time.monotonic() - start
        rc_text = _read_text(outdir / "rc").strip()
        result = GuestResult(
            rc=int(rc_text) if rc_text.lstrip("-").isdigit() else None,
            log=_read_text(outdir / "log"),
            console=_read_text(console) + note,
            seconds=seconds,
        )
        yield result, outdir


def run_in_guest(
    script: str,
    *,
    timeout: float = 600,
    mem_mb: int = 2048,
    share: Path | None = None,
) -> GuestResult:
    """Boot the guest, run ``script`` with /bin/bash as root, power off.

    The job runs in the chroot of the host root after the module preload, with
    ``GUEST_ENV`` as its environment and ``/`` as its working directory.
    ``share``, if given, is a host directory mounted read-write at the same
    path in the guest.
    """
    with guest_job(script, timeout=timeout, mem_mb=mem_mb, share=share) as (result, _):
        return result


# ------------------------------------------------------------ inner pytest


OK_OUTCOMES = frozenset({"passed", "skipped", "xfailed", "xpassed"})


@dataclass(frozen=True)
class InnerResult:
    outcome: str  # passed, failed, error, skipped, xfailed, xpassed
    longrepr: str = ""  # the failure report, or the skip/xfail reason
    crash: str = ""  # one-line failure message, for pytest's short summary
    duration: float = 0.0


@dataclass(frozen=True)
class GuestPytestRun:
    nodeids: tuple[str, ...]
    result: GuestResult
    results: Mapping[str, InnerResult] = field(default_factory=dict)
    kver: str = ""

    @property
    def summary(self) -> str:
        return inner_summary_line(self.result.log)

    @property
    def all_passed(self) -> bool:
        return self.result.rc == 0 and all(
            (res := self.lookup(n)) is not None and res.outcome in OK_OUTCOMES for n in self.nodeids
        )

    def lookup(self, nodeid: str) -> InnerResult | None:
        """The inner result for nodeid, or that of the collector that hid it
        (a module that failed to import or skipped itself)."""
        if nodeid in self.results:
            return self.results[nodeid]
        # The longest matching collector nodeid is the closest one.
        for key in sorted(self.results, key=len, reverse=True):
            if key == "" or nodeid.startswith((key + "::", key + "/")):
                return self.results[key]
        return None

    def failure_context(self, lines: int = 20) -> str:
        """Tail of whatever the guest left behind, for a test with no result."""
        return "\n".join(
            [
                describe(self.result),
                "--- guest log (tail) ---",
                tail(self.result.log, lines),
                "--- guest console (tail) ---",
                tail(self.result.console, lines),
            ]
        )


def describe(result: GuestResult) -> str:
    """One line on how far the guest got, from the init markers."""
    if result.rc is not None:
        return f"the job exited with status {result.rc}"
    timed_out = TIMEOUT_NOTE in result.console
    if "LIVEOS-GUEST-JOB-START" in result.console:
        return "the job " + ("timed out" if timed_out else "was cut short (guest crashed?)")
    if "LIVEOS-GUEST-UP" in result.console:
        how = "timed out" if timed_out else "failed"
        return f"the guest booted but its setup {how} (see console)"
    return "the guest did not boot" + (" before the timeout" if timed_out else " (see console)")


def tail(text: str, lines: int) -> str:
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


_SUMMARY_RE = re.compile(
    r"\b(passed|failed|errors?|skipped|deselected|xfailed|xpassed|warnings?|no tests ran)\b"
    r".* in [\d.]+s"
)


def inner_summary_line(output: str) -> str:
    """pytest's final "N passed in X s" line, without the '=' padding."""
    for line in reversed(output.splitlines()):
        stripped = line.strip().strip("=").strip()
        if _SUMMARY_RE.search(stripped):
            return stripped
    return ""


def parse_results(text: str) -> dict[str, InnerResult]:
    """Parse the JSON written by tests/guest_plugin.py; tolerate a torn file."""
    try:
        raw: Any = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(raw, dict):
        return {}
    out: dict[str, InnerResult] = {}
    for nodeid, rec in raw.items():
        if not isinstance(rec, dict):
            continue
        out[str(nodeid)] = InnerResult(
            outcome=str(rec.get("outcome", "error")),
            longrepr=str(rec.get("longrepr", "")),
            crash=str(rec.get("crash", "")),
            duration=float(rec.get("duration", 0.0)),
        )
    return out


def nodeid_files(nodeids: Sequence[str]) -> list[str]:
    """The distinct test files of nodeids, in first-seen order."""
    return list(dict.fromkeys(n.split("::", 1)[0] for n in nodeids))


def inner_pytest_script(
    *, python: str, rootdir: Path, nodeids: Sequence[str], plugin: str = "tests.guest_plugin"
) -> str:
    # Files, not nodeids, go on the command line: pytest aborts the whole run
    # when one command-line nodeid cannot be collected (an import error in the
    # guest, environment-dependent parametrization).  The plugin deselects
    # everything not in GUEST_NODEIDS and reports what it could not find.
    args = [
        "-m",
        "pytest",
        "-p",
        plugin,
        "-p",
        "no:cacheprovider",
        "--continue-on-collection-errors",
        # All guest tests share one boot and its /run tmpfs (half the guest's memory):
        # a passing test's tmp_path goes as soon as it ends, or the tier runs out of room.
        "-o",
        "tmp_path_retention_policy=failed",
        "-q",
        *nodeid_files(nodeids),
    ]
    q = shlex.quote
    return (
        f"cd {q(str(rootdir))} || exit 126\n"
        f"export LIVEOS_GUEST_RESULTS={q(GUEST_RESULTS)}\n"
        f"export LIVEOS_GUEST_NODEIDS={q(GUEST_NODEIDS)}\n"
        f"exec {q(python)} {' '.join(q(a) for a in args)}\n"
    )


def run_guest_pytest(
    nodeids: Sequence[str],
    rootdir: Path,
    *,
    timeout: float = 1200,
    mem_mb: int = 4096,
) -> GuestPytestRun:
    """Run the given tests with pytest inside one guest boot."""
    script = inner_pytest_script(python=sys.executable, rootdir=rootdir, nodeids=nodeids)
    files = {Path(GUEST_NODEIDS).name: json.dumps(list(nodeids))}
    with guest_job(script, timeout=timeout, mem_mb=mem_mb, files=files) as (result, outdir):
        results = parse_results(_read_text(outdir / "results.json"))
    return GuestPytestRun(
        nodeids=tuple(nodeids),
        result=result,
        results=results,
        kver=guest_kernel_version() or "",
    )
