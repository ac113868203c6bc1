"""`liveos-overlay remix`: a customised stick into a new bootable ISO for a whole class.

The stick is only read (it is mounted read-only, its overlay is read offline by the
merge engine). The pipeline runs in a work directory beside the output:

  merged view -> scratch rootfs.img -> e2fsck -> seclusion -> free blocks zeroed
  -> squashfs.img -> ISO (xorriso, isolinux/EFI/isohybrid) -> implanted md5 -> rename

The ISO is written under a temporary name and renamed only when it is complete;
any failure or Ctrl-C removes the partial ISO and the work directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from liveos_tools.errors import (
    AbortedError,
    CorruptError,
    InUseError,
    NoSpaceError,
    TargetError,
    UsageError,
)
from liveos_tools.media import HomeKind, ImageLayout, Medium, OverlayKind
from liveos_tools.plan import Plan
from liveos_tools.remix import iso, seclude
from liveos_tools.tools.xorriso import MAX_LABEL, Graft
from liveos_tools.units import MiB, format_size

#: progress(stage, done_bytes, total_bytes)
StageProgress = Callable[[str, int, int], None]

REQUIRED_TOOLS = ("xorriso", "implantisomd5", "mksquashfs", "e2fsck", "tune2fs", "losetup", "mount")
#: Room kept free beyond the estimates (filesystem metadata, estimates that run short).
SLACK = 64 * MiB
REPAIR_HINT = "run `liveos-overlay repair` on the stick first; nothing was written"
#: Used for an uncompressed (--skipcompress) stick, which has no squashfs to copy from.
DEFAULT_COMPRESSOR = "xz"


@dataclass(frozen=True)
class RemixOptions:
    output: Path
    label: str | None = None
    base_iso: Path | None = None
    workdir: Path | None = None
    seclude: tuple[str, ...] = ()
    keep: tuple[str, ...] = ()
    no_seclude: bool = False
    clone: bool = False
    include: tuple[str, ...] = ()


@dataclass
class RemixResult:
    output: Path
    label: str
    size_bytes: int = 0
    md5: str | None = None
    left_out: list[seclude.LeftOut] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Estimate:
    """Bytes each place needs; the sizes a refusal names."""

    scratch: int
    squashfs: int
    iso: int


def _same_fs(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


def _inside(path: Path, root: Path) -> bool:
    path, root = path.resolve(), root.resolve()
    return path == root or root in path.parents


def check_output(medium: Medium, output: Path, what: str = "the output") -> Path:
    """The output's directory; refuse an output on the stick that is being remixed."""
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"{parent}: no such directory for {what}", "create it first")
    if output.is_dir():
        raise UsageError(f"{output} is a directory", "give the path of the new .iso file")
    stick_files = [Path(medium.target)]
    if medium.root is not None:
        # A stick's filesystem is a mount (ours for an image or device, the user's for a
        # mounted stick): anything on that filesystem is on the stick.
        on_stick = os.path.ismount(medium.root) and _same_fs(parent, medium.root)
        if on_stick or _inside(parent, medium.root):
            raise UsageError(
                f"{what} {output} is on the stick being remixed",
                "write the ISO to another disk: the stick is only read",
            )
    for f in stick_files:
        with contextlib.suppress(OSError):
            if output.exists() and os.path.samefile(output, f):
                raise UsageError(
                    f"{what} {output} is the stick image itself", "give a new file name for the ISO"
                )
    return parent


def _check_not_in_use(path: Path, what: str) -> None:
    from liveos_tools.tools import losetup

    users = losetup.find_by_file(path)
    if users:
        raise InUseError(
            f"{what} {path} is in use (attached to {', '.join(d.name for d in users)}): "
            "a live system running from the stick is still writing to it",
            "shut the live system down and remix the stick from another system",
        )


def _include_files(medium: Medium, paths: Sequence[str]) -> list[Graft]:
    assert medium.root is not None
    grafts = []
    reserved = ("LiveOS", "isolinux", "EFI", "images", "boot")
    for p in paths:
        rel = os.path.normpath("/" + p).lstrip("/")
        host = medium.root / rel
        if not rel or rel.split("/")[0] in reserved:
            raise UsageError(
                f"--include {p}: the ISO's own {rel.split('/')[0] or '/'} cannot be replaced",
                "include your own files and folders",
            )
        if not os.path.lexists(host) or not _inside(host, medium.root):
            raise TargetError(
                f"--include {p}: no such file on the stick ({medium.target})",
                "paths are relative to the stick's top folder",
            )
        grafts.append(Graft("/" + rel, host))
    return grafts


def leftovers(name: str, places: set[Path]) -> tuple[list[Path], list[Path]]:
    """Work directories and partial ISOs a killed remix (SIGKILL, power loss) of the same
    output left: (removable, still holding a mount). Ctrl-C and failures leave none."""
    from liveos_tools import mounts

    points = [m.mountpoint for m in mounts.mounts()]
    free: list[Path] = []
    busy: list[Path] = []
    for place in sorted(places):
        for p in sorted(place.glob(f".{name}.*")):
            if p.is_dir() and p.name.startswith(f".{name}.remix-"):
                inside = str(p.resolve()) + "/"
                (busy if any(mp.startswith(inside) for mp in points) else free).append(p)
            elif p.is_file() and p.name.endswith(".partial"):
                free.append(p)
    return free, busy


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


class Remix:
    """The planned remix of one stick; `plan()` lists it, `execute()` runs it."""

    def __init__(
        self, medium: Medium, opts: RemixOptions, progress: StageProgress | None = None
    ) -> None:
        self.medium = medium
        self.opts = opts
        self.progress = progress
        self._check_medium()
        from liveos_tools.run import require

        for tool in REQUIRED_TOOLS:
            require(tool)
        self.out_dir = check_output(medium, opts.output)
        self.asked_label = opts.label or self._default_label()
        self.label = iso.check_label(self.asked_label)
        if opts.workdir is not None:
            check_output(medium, opts.workdir / "x", "the work directory")
        self.work_parent = opts.workdir or self.out_dir
        self.boot = self._boot_set()
        self.rules, self.keep = seclude.rules(opts.seclude, opts.keep)
        self.extra: list[Graft] = []
        self.result = RemixResult(opts.output, self.label)
        if opts.clone:
            self._plan_clone()
        self.extra += _include_files(medium, opts.include)
        self.estimate = self._estimate()
        self._check_space()
        self.work: Path | None = None
        self.partial: Path | None = None
        self.had_journal = False
        self.stale, self.stale_mounted = leftovers(
            opts.output.name, {self.out_dir, self.work_parent}
        )

    # -- checks -------------------------------------------------------------------------

    def _check_medium(self) -> None:
        m = self.medium
        if m.root is None or m.image_layout is ImageLayout.NONE:
            raise TargetError(
                f"{m.target} holds no LiveOS image to remix",
                "point at a LiveOS stick: its device, image or mount",
            )
        if m.overlay_kind in (OverlayKind.OVERLAYFS_DIR, OverlayKind.OVERLAYFS_IMAGE):
            raise UsageError(
                f"{m.overlay_path} is an OverlayFS overlay: remix merges device-mapper overlays",
                "remix works on sticks written with a persistent overlay file (the default)",
            )
        if m.overlay_path is None:
            raise TargetError(
                f"{m.target} has no overlay: its image is still the one it was written from",
                "use the ISO it was written from; remix is for a stick that was changed",
            )
        _check_not_in_use(m.overlay_path, "the overlay")
        # Opening the merged view reads the overlay's table: a corrupt or invalid store
        # is refused here (exit 10), before anything is asked or written.
        from liveos_tools import merge

        with merge.merged(m) as view:
            self.scratch_bytes = view.data_bytes()
            self.overlay_used = len(view.exceptions()) * view.chunk_bytes

    def _default_label(self) -> str:
        if self.opts.base_iso is not None:
            from liveos_tools.writer.source import read_iso

            found = read_iso(self.opts.base_iso).label
            if found:
                return found[:MAX_LABEL]
        vol = self.medium.volume
        return (vol.label if vol and vol.label else "LIVE")[:MAX_LABEL]

    def _boot_set(self) -> iso.BootSet:
        from liveos_tools.writer.source import read_directory, read_iso

        if self.opts.base_iso is not None:
            return iso.boot_set(read_iso(self.opts.base_iso))
        assert self.medium.root is not None
        found = iso.boot_set(read_directory(self.medium.root))
        return dataclasses.replace(found, origin=f"the stick {self.medium.target}")

    def _plan_clone(self) -> None:
        m = self.medium
        if m.home_path is None:
            raise TargetError(
                f"--clone: {m.target} has no {m.livedir}/home.img",
                "drop --clone; the ISO gets the root filesystem only",
            )
        _check_not_in_use(m.home_path, "home.img")
        self.extra.append(Graft("/LiveOS/home.img", m.home_path))
        if m.home_kind is HomeKind.LUKS:
            self.result.warnings.append(
                "home.img is encrypted (LUKS): every copy of this ISO and every stick made "
                "from it opens with the same passphrase (and the same master key)"
            )

    def _estimate(self) -> Estimate:
        # The scratch image as rebuild.scratch_image counts it (the base's data plus the
        # overlay's chunks); the new squashfs at most the old one plus the overlay's data.
        squash_src = self.medium.squashfs_path
        scratch = self.scratch_bytes
        squash = (squash_src.stat().st_size if squash_src else scratch) + self.overlay_used
        extra = sum(_tree_size(g.host_path) for g in self.extra)
        return Estimate(scratch, squash, squash + self.boot.size() + extra + 4 * MiB)

    def _check_space(self) -> None:
        e = self.estimate
        work, out = self.work_parent, self.out_dir
        if _same_fs(work, out):
            need = max(e.scratch + e.squashfs, e.squashfs + e.iso) + SLACK
            places = [
                (
                    out,
                    need,
                    f"work files and the ISO (merged image {format_size(e.scratch)}"
                    f", squashfs {format_size(e.squashfs)}, ISO {format_size(e.iso)})",
                )
            ]
        else:
            places = [
                (
                    work,
                    e.scratch + e.squashfs + SLACK,
                    f"work files (merged image "
                    f"{format_size(e.scratch)}, squashfs {format_size(e.squashfs)})",
                ),
                (out, e.iso + SLACK, f"the ISO ({format_size(e.iso)})"),
            ]
        from liveos_tools.rebuild import free_bytes

        for where, need, what in places:
            free = free_bytes(where)
            if need > free:
                raise NoSpaceError(
                    f"not enough room in {where}: the remix needs about {format_size(need)} "
                    f"for {what}, {format_size(free)} is free",
                    "free space there, or give -o/--workdir on a bigger disk",
                )

    # -- the plan -------------------------------------------------------------------------

    def plan(self) -> Plan:
        m, o = self.medium, self.opts
        plan = Plan("remix", m.target)
        b = self.boot
        if self.stale:
            plan.add(
                "remove what an interrupted remix of the same name left: "
                + ", ".join(map(str, self.stale)),
                self._remove_stale,
            )
        for where in self.stale_mounted:
            plan.notes.append(
                f"{where} is left from an interrupted remix and still has a "
                "mount in it: unmount it and remove it"
            )
        assert m.overlay_path is not None
        plan.add(
            f"merge the base image and the overlay {m.livedir}/{m.overlay_path.name} "
            "into a scratch "
            f"image in {self.work_parent} (about {format_size(self.estimate.scratch)})",
            self._merge,
        )
        plan.add("check the merged root with e2fsck (journal replay and preen only)", self._check)
        if o.no_seclude:
            plan.notes.append("--no-seclude: nothing is left out; private data goes into the ISO")
        else:
            plan.add(
                f"leave out private data ({len(self.rules)} rules: machine identity, "
                "network secrets, logs, histories, root's home, caches, liveuser's "
                "password)" + (f", keeping {', '.join(o.keep)}" if o.keep else ""),
                self._seclude,
            )
        plan.add(
            "rewrite the root's directories (e2fsck -D) and drop its journal: both keep "
            "names and metadata of what was deleted",
            self._scrub,
        )
        plan.add(
            "zero the free blocks of the merged root (deleted data is not shipped), "
            "then give it a new, empty journal",
            self._zero,
        )
        plan.add(
            f"make squashfs.img ({self._compressor()}) holding LiveOS/rootfs.img", self._squash
        )
        boots = [
            "BIOS (isolinux)" if b.bios else None,
            "EFI (images/efiboot.img)" if b.efi else None,
        ]
        plan.add(
            f"write the ISO {o.output} (label {self.label!r}, boot: "
            f"{', '.join(x for x in boots if x) or 'none'}, isohybrid"
            f"{', LiveOS/home.img' if o.clone else ''}) with xorriso and implant its md5; "
            f"boot files from {b.origin}",
            self._iso,
        )
        plan.add(f"rename it to {o.output} when complete", self._finish)
        plan.notes.append(
            "kernel arguments: " + " ".join(iso.kernel_args(self.label, b.source_args))
        )
        if self.label != self.asked_label:
            plan.notes.append(
                f"the label is {self.label!r}: dracut cannot find a CD by a label with spaces"
            )
        plan.notes.append(f"the stick {m.target} is only read")
        plan.notes.extend(self.result.warnings)
        if not b.bios:
            plan.notes.append(f"{b.origin} has no syslinux: the ISO boots by EFI only")
        if o.output.exists():
            plan.destroys.append(
                f"the existing file {o.output} (replaced when the new ISO is complete)"
            )
        return plan

    def _compressor(self) -> str:
        from liveos_tools import rebuild

        if self.medium.squashfs_path is not None:
            return rebuild.squashfs_compressor(self.medium.squashfs_path)
        return DEFAULT_COMPRESSOR

    def _report(self, stage: str) -> Callable[[int, int], None] | None:
        cb = self.progress
        if cb is None:
            return None
        return lambda done, total: cb(stage, done, total)

    # -- the steps --------------------------------------------------------------------------

    def _remove_stale(self) -> None:
        for p in self.stale:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()

    def _merge(self) -> None:
        from liveos_tools import merge, rebuild

        self.work = Path(
            tempfile.mkdtemp(prefix=f".{self.opts.output.name}.remix-", dir=self.work_parent)
        )
        with merge.merged(self.medium) as view:
            self.scratch = rebuild.scratch_image(view, self.work, progress=self._report("merge"))

    def _check(self) -> None:
        from liveos_tools import rebuild

        rebuild.check_clean(self.scratch)

    def _seclude(self) -> None:
        from liveos_tools import merge

        with (
            merge.open_base(self.medium) as base,
            seclude.mounted(base, writable=False) as base_root,
            seclude.mounted(self.scratch, writable=True) as root,
        ):
            self.result.left_out = seclude.apply(root, self.rules, self.keep, base_root=base_root)

    def _scrub(self) -> None:
        from liveos_tools.tools import e2fsck, tune2fs

        res = e2fsck.check(self.scratch, repair=True, optimize_dirs=True)
        if not res.clean:
            raise CorruptError(
                f"e2fsck -D on the merged root failed ({res.describe()})", REPAIR_HINT
            )
        self.had_journal = tune2fs.remove_journal(self.scratch)

    def _zero(self) -> None:
        from liveos_tools import rebuild
        from liveos_tools.tools import tune2fs

        rebuild.zero_free_blocks(self.scratch)
        if self.had_journal:  # an ext2 root stays ext2
            tune2fs.add_journal(self.scratch)

    def _squash(self) -> None:
        from liveos_tools import rebuild

        assert self.work is not None
        self.squashfs = self.work / "squashfs.img"
        rebuild.make_squashfs(
            self.scratch,
            self.squashfs,
            compressor=self._compressor(),
            progress=self._report("squashfs"),
        )
        rebuild.remove_scratch(self.scratch)  # its room is the ISO's now

    def _iso(self) -> None:
        assert self.work is not None
        layout = iso.stage(
            self.work, label=self.label, squashfs=self.squashfs, boot=self.boot, extra=self.extra
        )
        fd, name = tempfile.mkstemp(
            prefix=f".{self.opts.output.name}.", suffix=".partial", dir=self.out_dir
        )
        os.close(fd)
        self.partial = Path(name)
        iso.write_iso(layout, self.partial, progress=self._report("iso"))

    def _finish(self) -> None:
        from liveos_tools.tools import checkisomd5

        assert self.partial is not None
        self.result.md5 = checkisomd5.implanted(self.partial)
        os.chmod(self.partial, 0o644)
        os.replace(self.partial, self.opts.output)
        self.partial = None
        dfd = os.open(self.out_dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        self.result.size_bytes = self.opts.output.stat().st_size

    def cleanup(self) -> None:
        """Remove the work directory and any partial ISO (the mounts are gone already:
        each step unmounts what it mounted, also on failure)."""
        if self.partial is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.partial)
            self.partial = None
        if self.work is not None:
            shutil.rmtree(self.work, ignore_errors=True)
            self.work = None

    def execute(
        self, plan: Plan, step_progress: Callable[[int, int, str], None] | None = None
    ) -> RemixResult:
        try:
            plan.execute(step_progress)
        except KeyboardInterrupt:
            raise AbortedError(
                "interrupted: no ISO was written, the stick was not changed", None
            ) from None
        finally:
            self.cleanup()
        return self.result


@contextlib.contextmanager
def prepared(
    target: str | None,
    opts: RemixOptions,
    *,
    livedir: str | None = None,
    progress: StageProgress | None = None,
) -> Iterator[tuple[Remix, Plan]]:
    """Locate the stick (read-only) and plan its remix; the stick stays open meanwhile."""
    from liveos_tools.media import open_medium

    if opts.base_iso is not None and not opts.base_iso.is_file():
        raise TargetError(f"--base-iso {opts.base_iso}: no such file", "check the path")
    with open_medium(target, livedir=livedir) as medium:
        remix = Remix(medium, opts, progress)
        yield remix, remix.plan()
