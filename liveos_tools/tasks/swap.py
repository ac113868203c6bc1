"""LiveOS/swap.img: create (zero-filled, 0600, mkswap) and remove.

The live system swaps on LiveOS/swap.img unless booted with `noswap`. A swap file
must have no holes and no unwritten extents, so it is written with zeros, as the
reference writer does (`dd if=/dev/zero`), not fallocated.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from liveos_tools.errors import LiveOSError, TargetError, UsageError
from liveos_tools.plan import ByteRange, Plan
from liveos_tools.tasks.home import (
    ExistsError,
    check_fits,
    ensure_not_in_use,
    fsync_dir,
    os_error,
    partial_name,
    removing_on_failure,
    round_size,
)
from liveos_tools.units import MiB, format_size

SWAP_NAME = "swap.img"
MIN_SWAP = MiB
_CHUNK = 4 * MiB


def plan_create(path: Path, size: int) -> Plan:
    """Write zeros to .swap.img.partial, mkswap it, rename it to swap.img.

    mkswap is looked for here, before anything is written; a failure at any step
    removes the partial file.
    """
    from liveos_tools.run import require
    from liveos_tools.tools import mkfs

    path = Path(path)
    if size <= 0:
        raise UsageError("the size of swap.img must be positive", "give e.g. --size 1G")
    size = max(round_size(size), MIN_SWAP)
    if path.exists() or path.is_symlink():
        raise ExistsError(f"{path} already exists", "remove it first: swap remove")
    directory = path.parent
    if not directory.is_dir():
        raise TargetError(f"{directory}: no such directory", "check the path to the stick")
    require("mkswap")
    tmp = partial_name(path)
    plan = Plan("create swap.img", str(path))
    plan.notes += check_fits(directory, final_size=size, new_bytes=size, what=str(path))

    or_remove_partial = removing_on_failure(tmp)

    plan.add(
        f"write {format_size(size)} of zeros to {tmp.name}, mode 0600",
        or_remove_partial(lambda: _write_zeros(tmp, size)),
        writes=[ByteRange(str(tmp), 0, size, "zeros")],
    )
    plan.add(
        "make it swap",
        or_remove_partial(lambda: mkfs.make_swap(tmp)),
        argv=("mkswap", str(tmp)),
    )
    plan.add(
        f"fsync it, rename {tmp.name} to {path.name}",
        or_remove_partial(lambda: _rename(tmp, path)),
    )
    return plan


def plan_remove(path: Path) -> Plan:
    path = Path(path)
    if not path.is_file():
        raise TargetError(f"{path}: no such file", "there is no swap.img to remove")
    ensure_not_in_use(path)
    plan = Plan("remove swap.img", str(path))
    plan.destroys.append(f"{path} ({format_size(path.stat().st_size)})")

    def remove() -> None:
        ensure_not_in_use(path)
        path.unlink()
        fsync_dir(path.parent)

    plan.add(f"delete {path}", remove, argv=("rm", str(path)))
    return plan


def _write_zeros(tmp: Path, size: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        ensure_not_in_use(tmp)
        tmp.unlink()
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise os_error(exc, tmp) from None
    try:
        with contextlib.suppress(OSError):
            os.fchmod(fd, 0o600)
        zeros = bytes(_CHUNK)
        done = 0
        while done < size:
            done += os.write(fd, zeros[: min(_CHUNK, size - done)])
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        tmp.unlink()
        raise os_error(exc, tmp) from None
    except BaseException:
        os.close(fd)
        tmp.unlink()
        raise
    os.close(fd)


def _rename(tmp: Path, path: Path) -> None:
    if path.exists():
        raise LiveOSError(f"{path} appeared while swap.img was being made", "nothing was replaced")
    try:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # mkswap's header
        finally:
            os.close(fd)
    except OSError as exc:
        raise os_error(exc, tmp) from None
    os.replace(tmp, path)
    fsync_dir(path.parent)
