"""The plan for one target: partition, filesystem, copy, boot loader, persistence.

Three steps, each in its own module: `spec.decide()` decides everything (a frozen
StickSpec, or a refusal), `space.check()` refuses what would not fit, and
`steps.build()` turns the spec into the Plan that --dry-run shows and that runs (its
state in one StickRun). A refusal never changes the target; `execute()` runs the plan
and names the failing step.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from liveos_tools.errors import LiveOSError, TargetError
from liveos_tools.plan import Plan
from liveos_tools.writer import space, spec, steps
from liveos_tools.writer.existing import ext_pieces, fs_has
from liveos_tools.writer.layout import Layout
from liveos_tools.writer.options import (
    FSTYPES,
    BootDisk,
    StickFs,
    StickResult,
    WriteOptions,
    clean_label,
)
from liveos_tools.writer.source import Source
from liveos_tools.writer.target import Target, TargetKind

__all__ = [
    "FSTYPES",
    "BootDisk",
    "StickFs",
    "StickResult",
    "WriteOptions",
    "clean_label",
    "execute",
    "ext_pieces",
    "fs_has",
    "plan_run",
    "plan_stick",
]


def plan_stick(
    src: Source,
    layout: Layout,
    target: Target,
    opts: WriteOptions,
    *,
    existing_fs: StickFs | None = None,
    boot_disk: BootDisk | None = None,
    table_desc: list[str] | None = None,
) -> tuple[Plan, StickResult]:
    """Build the whole plan for one target. Raises before anything is written."""
    plan, result, _ = plan_run(
        src,
        layout,
        target,
        opts,
        existing_fs=existing_fs,
        boot_disk=boot_disk,
        table_desc=table_desc,
    )
    return plan, result


def plan_run(
    src: Source,
    layout: Layout,
    target: Target,
    opts: WriteOptions,
    *,
    existing_fs: StickFs | None = None,
    boot_disk: BootDisk | None = None,
    table_desc: list[str] | None = None,
) -> tuple[Plan, StickResult, steps.StickRun]:
    """plan_stick(), and the StickRun its steps act on (for the run's settings)."""
    decided = spec.decide(
        src,
        layout,
        target,
        opts,
        existing_fs=existing_fs,
        boot_disk=boot_disk,
        table_desc=table_desc,
    )
    space.check(decided)
    return steps.build(decided)


def execute(plan: Plan, target: Target | None = None) -> None:
    """Run a stick's plan; a failure names its step and always releases mounts. A block
    device that is gone when a step fails (unplugged, detached) is said so, exit 4."""
    current = ["?"]

    def progress(i: int, n: int, summary: str) -> None:
        current[0] = f"step {i + 1}/{n} ({summary.split(':')[0][:70]})"

    try:
        plan.execute(progress)
    except LiveOSError as err:
        _cleanup(plan)
        _vanished(target, current[0], err.message)
        err.message = f"{current[0]} failed: {err.message}"
        raise
    except OSError as exc:
        _cleanup(plan)
        _vanished(target, current[0], str(exc))
        raise LiveOSError(f"{current[0]} failed: {exc}") from None


def _vanished(target: Target | None, step: str, why: str) -> None:
    if target is None or target.kind is TargetKind.IMAGE or target.disk is None:
        return
    try:
        size = int((Path("/sys/class/block") / target.disk / "size").read_text())
    except (OSError, ValueError):
        size = 0
    if size == 0 or not os.path.exists(target.path):
        raise TargetError(
            f"{target.spec} vanished during {step} ({why.splitlines()[0][:120]}): what is "
            "on it now is unknown and it will not boot",
            "plug it in again and write it again with --format",
        )


def _cleanup(plan: Plan) -> None:
    """The last step releases the stick (StickRun.close)."""
    last = plan.steps[-1]
    if last.action is not None:
        with contextlib.suppress(Exception):
            last.action()
