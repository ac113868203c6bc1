"""liveos-iso-to-disk: read the source once, plan every target, write them in parallel."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from liveos_tools.errors import LiveOSError, TargetError
from liveos_tools.plan import Plan
from liveos_tools.units import format_size
from liveos_tools.writer import layout as layout_mod
from liveos_tools.writer import stick
from liveos_tools.writer.source import Source, open_source
from liveos_tools.writer.steps import StickRun
from liveos_tools.writer.target import Target, TargetKind, check, resolve


@dataclass
class Job:
    target: Target
    plan: Plan
    result: stick.StickResult
    run: StickRun  # what the plan's steps act on (the run's progress board is set on it)


@dataclass
class Outcome:
    target: str
    ok: bool
    seconds: float
    message: str
    result: stick.StickResult | None = None
    #: the failure's exit code (ExitCode), 0 when it worked
    code: int = 0


@dataclass
class Prepared:
    source: Source
    layout: layout_mod.Layout
    jobs: list[Job] = field(default_factory=list)


def _probe(device: str, offset: int) -> dict[str, str]:
    """What blkid -p finds there; {} for nothing, or for what it cannot tell (ambivalent
    signatures): describing a target never stops a write."""
    from liveos_tools.tools import blkid

    try:
        return blkid.probe(device, offset=offset)
    except LiveOSError:
        return {}


def describe_table(target: Target) -> list[str]:
    """What --format destroys: the partitions, labels and sizes found on the target."""
    if not target.exists:
        return []
    from liveos_tools.tools import parted

    table = parted.read_table(target.path)
    if table.label is None or not table.partitions:
        info = _probe(target.path, 0)
        what = info.get("TYPE", "no partition table, no filesystem found")
        return [f"{target.spec} ({format_size(target.size)}): {what}"]
    out = []
    for p in table.partitions:
        info = _probe(target.path, p.start)
        label = info.get("LABEL")
        out.append(
            f"partition {p.number} of {target.spec}: {info.get('TYPE', 'unknown')}"
            f"{f' labelled {label!r}' if label else ''}, {format_size(p.length)}"
        )
    return out


def existing_fs(target: Target) -> stick.StickFs | None:
    """The filesystem to write into when not formatting."""
    found = _existing(target)
    return found[0] if found else None


def _existing(target: Target) -> tuple[stick.StickFs, stick.BootDisk] | None:
    """The filesystem to write into when not formatting, and the disk whose MBR boots it
    (the parent disk of a partition, or the image file itself)."""
    from liveos_tools.tools import parted

    ranges: list[tuple[parted.PartInfo | None, int, int]]
    if target.kind is TargetKind.IMAGE:
        table = parted.read_table(target.path)
        ranges = [(p, p.start, p.length) for p in table.partitions] or [(None, 0, target.size)]
        device, disk_path = target.path, target.path
    else:
        if target.kind is TargetKind.DISK:
            raise TargetError(
                f"{target.spec} is a whole disk",
                "give one of its partitions (/dev/sdX1), or add --format to partition it",
            )
        device = target.path
        assert target.disk is not None
        disk_path = f"/dev/{target.disk}"
        table = parted.read_table(disk_path)
        part = next((p for p in table.partitions if p.number == target.partition_number), None)
        ranges = [(part, 0, target.size)]
    for part, start, length in ranges:
        info = _probe(device, start)
        if info.get("TYPE") in stick.FSTYPES and info.get("UUID"):
            fs = stick.StickFs(
                device, start, length, info["TYPE"], info.get("LABEL", ""), info["UUID"], new=False
            )
            boot = stick.BootDisk(
                disk_path,
                table.label if part is not None else None,
                part.number if part is not None else None,
                part.flags if part is not None else (),
                _mbr_blank(disk_path),
            )
            return fs, boot
    return None


def _mbr_blank(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return not any(f.read(440))
    except OSError:
        return False


@contextlib.contextmanager
def prepare(source: str, targets: list[str], opts: stick.WriteOptions) -> Iterator[Prepared]:
    """Read the source once; resolve and check every target; plan each. No writes."""
    if len(set(targets)) != len(targets):
        raise TargetError("the same target is given twice", "give each --target once")
    with open_source(source) as src:
        lay = layout_mod.detect(src)
        prepared = Prepared(src, lay)
        for spec in targets:
            tgt = resolve(spec, format_size=opts.format_size, formatting=opts.format)
            check(tgt, force=opts.force)
            found = None if opts.format else _existing(tgt)
            desc = describe_table(tgt) if opts.format else []
            plan, result, run = stick.plan_run(
                src,
                lay,
                tgt,
                _copy_opts(opts),
                existing_fs=found[0] if found else None,
                boot_disk=found[1] if found else None,
                table_desc=desc,
            )
            prepared.jobs.append(Job(tgt, plan, result, run))
        yield prepared


def verify_source(prepared: Prepared, path: str) -> str:
    """The reference tool's source check: an ISO's implanted md5 (isomd5sum's, in the
    primary volume descriptor's application-use area, what rd.live.check reads) checked
    with checkisomd5 before anything is written. Returns a note; a mismatch raises
    CorruptError (exit 10)."""
    from liveos_tools.errors import CorruptError
    from liveos_tools.writer.source import SourceKind

    if prepared.source.kind is not SourceKind.ISO:
        return f"{path} is not an ISO file: no implanted md5 to check"
    from pathlib import Path

    from liveos_tools.tools import checkisomd5

    result = checkisomd5.check(Path(path))
    if result == "PASS":
        return f"{path}: its implanted md5 checks out"
    if result == "NA":
        return f"{path} has no implanted md5 (implantisomd5): not checked"
    raise CorruptError(
        f"{path}: its implanted md5 does not match its contents (checkisomd5 says "
        f"{result}): the ISO is damaged or incomplete",
        "download it again (or add --noverify to write it anyway)",
    )


def _copy_opts(opts: stick.WriteOptions) -> stick.WriteOptions:
    import dataclasses

    return dataclasses.replace(opts, notes=list(opts.notes))


def _run_one(job: Job) -> Outcome:
    start = time.monotonic()
    try:
        stick.execute(job.plan, job.target)
    except LiveOSError as err:
        return Outcome(
            job.target.spec, False, time.monotonic() - start, err.message, job.result, int(err.code)
        )
    return Outcome(
        job.target.spec, True, time.monotonic() - start, "written and verified", job.result
    )


def write_all(prepared: Prepared, *, parallel: bool = True) -> list[Outcome]:
    """Write every target; one overall progress line on a terminal (bytes of every
    target's live image together, rate, ETA), per-target lines otherwise."""
    from liveos_tools.writer import copy

    jobs = prepared.jobs
    board = copy.Board()
    for j in jobs:
        board.add(j.result.copy_bytes)
        j.run.board = board
    try:
        if len(jobs) == 1 or not parallel:
            return [_run_one(j) for j in jobs]
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            return list(pool.map(_run_one, jobs))
    finally:
        board.finish()


def summary_table(outcomes: list[Outcome]) -> str:
    rows = [("TARGET", "RESULT", "TIME", "UUID", "DETAIL")]
    for o in outcomes:
        rows.append(
            (
                o.target,
                "ok" if o.ok else "FAILED",
                f"{o.seconds:.1f}s",
                o.result.uuid if o.result else "-",
                o.message,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4]
        for r in rows
    )
