"""The only place that starts external programs.

argv lists only, never a shell; a clean C.UTF-8 environment so output parses the
same everywhere; `+ argv` on stderr in debug mode; one error carrying argv, exit
code and stderr when a command fails, and a distinct error naming the Debian
package when the program is not installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from liveos_tools.errors import ToolError, ToolMissingError
from liveos_tools.which import which as which

#: Which Debian package ships each program we run.
TOOL_PACKAGES: dict[str, str] = {
    "dmsetup": "dmsetup",
    "losetup": "mount",
    "blkid": "util-linux",
    "findmnt": "util-linux",
    "blockdev": "util-linux",
    "partx": "util-linux",
    "wipefs": "util-linux",
    "mount": "mount",
    "umount": "mount",
    "e2fsck": "e2fsprogs",
    "mkfs.ext4": "e2fsprogs",
    "mkfs.ext3": "e2fsprogs",
    "mkfs.ext2": "e2fsprogs",
    "resize2fs": "e2fsprogs",
    "dumpe2fs": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "tune2fs": "e2fsprogs",
    "mksquashfs": "squashfs-tools",
    "unsquashfs": "squashfs-tools",
    "cryptsetup": "cryptsetup-bin",
    "mkswap": "util-linux",
    "parted": "parted",
    "sfdisk": "fdisk",
    "mkfs.fat": "dosfstools",
    "fsck.fat": "dosfstools",
    "mtools": "mtools",
    "mcopy": "mtools",
    "mdir": "mtools",
    "mmd": "mtools",
    "mdel": "mtools",
    "mdeltree": "mtools",
    "mmove": "mtools",
    "mshowfat": "mtools",
    "mattrib": "mtools",
    "mlabel": "mtools",
    "fatlabel": "dosfstools",
    "e2label": "e2fsprogs",
    "xorriso": "xorriso",
    "implantisomd5": "isomd5sum",
    "checkisomd5": "isomd5sum",
    "syslinux": "syslinux",
    "extlinux": "extlinux",
    "systemctl": "systemd",
    "sudo": "sudo",
    "pkexec": "pkexec",
}

_debug = bool(os.environ.get("LIVEOS_DEBUG"))


def set_debug(enabled: bool) -> None:
    global _debug
    _debug = enabled


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def _clean_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
    }
    # Programs run from a rescue shell or a test still need these to find things.
    for key in ("HOME", "TMPDIR", "DM_DISABLE_UDEV"):
        if key in os.environ:
            env[key] = os.environ[key]
    if extra:
        env.update(extra)
    return env


def require(tool: str) -> str:
    found = which(tool)
    if found is None:
        raise ToolMissingError(tool, TOOL_PACKAGES.get(tool))
    return found


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    input: str | bytes | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    while_running: Callable[[int], None] | None = None,
) -> Result:
    """Run argv and return its output; raise ToolError if it fails and check is set.

    while_running, if given, is called with the child's pid about twice a second until
    it exits (progress of a long run, e.g. from /proc/PID/io).
    """
    exe = require(argv[0])
    full = (exe, *argv[1:])
    if _debug:
        print("+ " + " ".join(argv), file=sys.stderr)
    data = input.encode() if isinstance(input, str) else input
    try:
        if while_running is None:
            proc = subprocess.run(
                full,
                input=data,
                capture_output=True,
                env=_clean_env(env),
                timeout=timeout,
                check=False,
            )
            code, out, err = proc.returncode, proc.stdout, proc.stderr
        else:
            code, out, err = _run_watched(full, data, _clean_env(env), timeout, while_running)
    except subprocess.TimeoutExpired as exc:
        raise ToolError(argv, -1, "", f"{argv[0]} did not finish in {timeout} s") from exc
    result = Result(
        argv=tuple(argv),
        returncode=code,
        stdout=out.decode("utf-8", "replace"),
        stderr=err.decode("utf-8", "replace"),
    )
    if _debug and result.stderr.strip():
        print(result.stderr.rstrip(), file=sys.stderr)
    if check and result.returncode != 0:
        raise ToolError(argv, result.returncode, result.stderr)
    return result


def _run_watched(
    full: Sequence[str],
    data: bytes | None,
    env: Mapping[str, str],
    timeout: float | None,
    watch: Callable[[int], None],
) -> tuple[int, bytes, bytes]:
    deadline = None if timeout is None else time.monotonic() + timeout
    proc = subprocess.Popen(
        full,
        stdin=subprocess.PIPE if data is not None else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        feed = data
        while True:
            try:
                out, err = proc.communicate(feed, timeout=0.5)
                return proc.returncode, out, err
            except subprocess.TimeoutExpired:
                feed = None  # communicate() keeps what it has not sent yet
                if deadline is not None and time.monotonic() > deadline:
                    raise subprocess.TimeoutExpired(full, timeout or 0) from None
                watch(proc.pid)
    except BaseException:
        # Ctrl-C or a failing callback: the program must not outlive the call.
        proc.kill()
        proc.communicate()
        raise
