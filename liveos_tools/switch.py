"""The atomic switch between two image+overlay pairs on a stick, with a journal.

A *pair* is a squashfs.img and the overlay written against it. Three slots hold
pairs (bootentries.Slot): CURRENT (`LiveOS/squashfs.img` + `LiveOS/overlay-L-U`,
dracut's default names), NEXT (`LiveOS/.liveos-next/`) and PREVIOUS
(`LiveOS/previous/`). A pair is never split: no boot entry ever names a base with
an overlay made for another base (dracut does not check, and such a pair silently
corrupts the root filesystem).

The switch, once the new pair is complete and fsynced in NEXT:

    step           what was done (each step ends with the journal rewritten, fsynced)
    staged         NEXT holds the new pair
    boot-next      every boot config: default entry -> NEXT, no previous entry
    moved-old      CURRENT's base, then its overlay, renamed into PREVIOUS
    boot-previous  every boot config: default entry -> PREVIOUS (the old pair), no
                   previous entry
    moved-new      NEXT's overlay, then its base, renamed to the default names
    done           every boot config: default entry -> CURRENT (the new pair),
                   previous entry -> PREVIOUS (or none, and PREVIOUS deleted)

Each boot config is replaced whole by a rename, so every entry of every config boots
either the old pair or the new pair at every moment; the files move only while no
entry names them. The grub.cfg on a separate EFI system partition is one of these
configs when the target is the stick's disk, a partition of it or a disk image
(espcfg.py). A boot loader config this tool does not know (an ESP it was not given
the disk to find, another loader) keeps booting the default names: there a moment
between two renames has a default name missing, which dracut answers with "no root filesystem" (no
base) or "Unable to find a persistent overlay ... Press [Enter]" (no overlay) — never
a mismatched pair: the overlay leaves first and comes back last.

Every step is idempotent, so a re-run after a power cut or SIGKILL redoes the step it
was in and goes on. On vfat a rename is not atomic (the kernel writes the new
directory entry, then removes the old one): a power cut inside a rename can leave
both names pointing at the same clusters; the re-run sees both and stops, naming
fsck.fat, rather than delete either.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from liveos_tools import bootentries as be
from liveos_tools.bootentries import Names, Slot
from liveos_tools.errors import CorruptError, LiveOSError, TargetError

JOURNAL = ".liveos-refresh.json"
STEPS = ("staging", "staged", "boot-next", "moved-old", "boot-previous", "moved-new", "done")
#: Test hook, as tasks/backup.py kill_point: SIGKILL after the named step.
Kill = Callable[[str], None]
Say = Callable[[str], None]


@dataclass(frozen=True)
class Journal:
    op: str  # refresh | rollback
    step: str
    keep_previous: bool = True
    #: the overlay's file name: while the pair is away from LiveOS/ nothing else tells it.
    overlay: str = ""
    started: str = ""
    #: the new image's size and where it came from, for status and the report.
    detail: str = ""
    #: the stick's own kernel and initrd (absolute on the stick), when an update moves
    #: kernels with the pairs: mid-switch the configs name other paths.
    kernel: str = ""
    initrd: str = ""

    def after(self, step: str) -> bool:
        return STEPS.index(self.step) >= STEPS.index(step)


@dataclass(frozen=True)
class Pair:
    base: Path
    overlay: Path
    #: an OverlayFS directory's work directory, dracut's `<overlay>/../ovlwork`: scratch
    #: of the kernel, emptied at each mount, but it must exist or dracut boots no overlay.
    work: Path | None = None

    def files(self) -> tuple[Path, Path]:
        return (self.base, self.overlay)

    def exists(self) -> bool:
        return self.base.exists() and self.overlay.exists()

    def size(self) -> int:
        return sum(tree_size(p) for p in (*self.files(), self.work) if p is not None)


def tree_size(path: Path) -> int:
    """Bytes of a file, or of every file below a directory (0 if missing)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return 0
    if not path.is_dir() or path.is_symlink():
        return st.st_size
    total = 0
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


KERNEL_NAMES = ("vmlinuz", "initrd.img")
#: dracut 059 dmsquash-live-root.sh: workdir=$pathspec/../ovlwork
OVLWORK = "ovlwork"


@dataclass(frozen=True)
class StickFiles:
    """The LiveOS directory of a stick mounted read-write, and its boot configs."""

    root: Path  # the stick's top directory
    base_names: Names
    #: the kernel and initrd the default names go with (absolute on the stick)
    kernel: tuple[str, str] | None = None
    #: boot configs elsewhere that boot this stick's pairs (its EFI system partition's:
    #: espcfg.py), switched with the others; and what the plan says about them
    esp: tuple[be.ConfigFile, ...] = ()
    esp_notes: tuple[str, ...] = ()

    @property
    def ldir(self) -> Path:
        return self.root / self.base_names.livedir

    def kernel_files(self, slot: Slot) -> tuple[Path, Path] | None:
        if slot is Slot.CURRENT:
            if self.kernel is None:
                return None
            return (self.root / self.kernel[0].lstrip("/"), self.root / self.kernel[1].lstrip("/"))
        d = self.slot_dir(slot)
        return (d / KERNEL_NAMES[0], d / KERNEL_NAMES[1])

    def has_kernel(self, slot: Slot) -> bool:
        files = self.kernel_files(slot)
        return files is not None and any(p.exists() for p in files)

    @property
    def names(self) -> Names:
        """The names with each slot's own kernel, as the files lie now."""
        kernels = []
        for slot in (Slot.NEXT, Slot.PREVIOUS):
            if self.has_kernel(slot):
                sub = f"/{self.base_names.livedir}/{slot.value}/"
                kernels.append((slot.value, sub + KERNEL_NAMES[0], sub + KERNEL_NAMES[1]))
        if kernels and self.kernel is not None:
            kernels.append((Slot.CURRENT.value, *self.kernel))
        return replace(self.base_names, kernels=tuple(kernels))

    @property
    def overlay_dir(self) -> bool:
        """The overlay is an OverlayFS directory, with an ovlwork/ sibling in its slot
        (mid-switch it may be in any slot)."""
        return any((self.slot_dir(s) / self.base_names.overlay).is_dir() for s in Slot)

    def slot_dir(self, slot: Slot) -> Path:
        return self.ldir / slot.value if slot.value else self.ldir

    def pair(self, slot: Slot) -> Pair:
        d = self.slot_dir(slot)
        work = d / OVLWORK if self.overlay_dir else None
        return Pair(d / "squashfs.img", d / self.base_names.overlay, work)

    @property
    def journal_path(self) -> Path:
        return self.ldir / JOURNAL

    def configs(self) -> list[be.Config]:
        return [*be.find_configs(self.root), *self.esp]


# --- the journal ---------------------------------------------------------------------------


def read_journal(ldir: Path) -> Journal | None:
    path = ldir / JOURNAL
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CorruptError(
            f"the refresh journal {path} cannot be read ({exc})",
            "look at the files in LiveOS/, LiveOS/previous/ and LiveOS/.liveos-next/",
        ) from None
    try:
        journal = Journal(**{k: v for k, v in data.items() if k in Journal.__dataclass_fields__})
        journal.after("staging")  # an unknown step is a damaged journal
    except (TypeError, ValueError):
        raise CorruptError(f"the refresh journal {path} is damaged: {data}") from None
    return journal


def write_journal(ldir: Path, journal: Journal) -> None:
    tmp = ldir / (JOURNAL + be.NEW_SUFFIX)
    with open(tmp, "w") as f:
        json.dump(asdict(journal), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, ldir / JOURNAL)
    be.fsync_dir(ldir)


def remove_journal(ldir: Path) -> None:
    for name in (JOURNAL, JOURNAL + be.NEW_SUFFIX):
        (ldir / name).unlink(missing_ok=True)
    be.fsync_dir(ldir)


def new_journal(op: str, overlay: str, *, keep_previous: bool, detail: str = "") -> Journal:
    stamp = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    return Journal(op, "staging", keep_previous, overlay, stamp, detail)


# --- file moves --------------------------------------------------------------------------


def move(src: Path, dst: Path) -> None:
    """Rename src to dst; done already if only dst exists (a re-run)."""
    if src.exists() and dst.exists():
        raise CorruptError(
            f"both {src} and {dst} exist: a rename was cut short, or someone copied files",
            "on vfat run fsck.fat -a on the stick's partition (both names may share clusters), "
            "then compare the two files and delete the one that is not the image's",
        )
    if dst.exists():
        return
    if not src.exists():
        raise TargetError(
            f"{src} is missing, and {dst} too: the pair being moved is incomplete",
            "the stick was changed outside liveos-overlay; restore the file from a backup",
        )
    dst.parent.mkdir(exist_ok=True)
    os.rename(src, dst)
    be.fsync_dir(dst.parent)
    if src.parent != dst.parent:
        be.fsync_dir(src.parent)


def move_work(a: Pair, b: Pair) -> None:
    """Move an OverlayFS work directory with its pair. It is the kernel's scratch
    (emptied at each mount): one missing on both sides is made anew, empty, and a
    stale one left at the source by an interrupted move is deleted."""
    if a.work is None or b.work is None:
        return
    if a.work.is_dir() and b.work.is_dir():
        shutil.rmtree(a.work)
        be.fsync_dir(a.work.parent)
    elif a.work.is_dir():
        move(a.work, b.work)
    elif not b.work.is_dir():
        b.work.parent.mkdir(exist_ok=True)
        b.work.mkdir(0o755)
        be.fsync_dir(b.work.parent)


def move_pair(a: Pair, b: Pair, kill: Kill, point: str) -> None:
    # The base first, the overlay last: a default name left alone is then an overlay
    # with no base (dracut finds no root and stops), never a base under a stranger.
    move(a.base, b.base)
    kill(point)
    move(a.overlay, b.overlay)
    move_work(a, b)


def move_pair_in(a: Pair, b: Pair, kill: Kill, point: str) -> None:
    # Into the default names the overlay goes first, the base last, for the same reason.
    # An OverlayFS work directory goes before both: dracut uses the overlay only with it.
    move_work(a, b)
    move(a.overlay, b.overlay)
    kill(point)
    move(a.base, b.base)


def move_kernel(stick: StickFiles, src: Slot, dst: Slot) -> None:
    a, b = stick.kernel_files(src), stick.kernel_files(dst)
    if a is None or b is None:
        raise TargetError(
            "the stick's kernel and initrd are not known: its boot config names none",
            "the boot config was changed by hand; put the kernel line back",
        )
    for x, y in zip(a, b, strict=True):
        move(x, y)


def drop(pair: Pair, extra: tuple[Path, ...] = ()) -> int:
    freed = 0
    for p in (*pair.files(), *extra, *((pair.work,) if pair.work else ())):
        if p.is_dir() and not p.is_symlink():
            freed += tree_size(p)
            shutil.rmtree(p)
        elif p.exists():
            freed += p.stat().st_size
            p.unlink()
    d = pair.base.parent
    be.fsync_dir(d)
    return freed


def remove_dir_if_empty(path: Path) -> None:
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()
        be.fsync_dir(path.parent)


def discard_next(stick: StickFiles) -> None:
    d = stick.slot_dir(Slot.NEXT)
    if d.is_dir():
        shutil.rmtree(d)
        be.fsync_dir(stick.ldir)


# --- the switch --------------------------------------------------------------------------


def describe_steps(keep_previous: bool) -> list[str]:
    last = (
        "point every boot entry at the new pair (default names), previous entry at LiveOS/previous/"
        if keep_previous
        else "point every boot entry at the new pair (default names), then delete LiveOS/previous/"
    )
    return [
        "point every boot entry at the new pair in LiveOS/.liveos-next/, no previous "
        "entry (one config file renamed at a time)",
        "rename the old squashfs.img, then its overlay, into LiveOS/previous/",
        "point every boot entry at the old pair in LiveOS/previous/",
        "rename the new overlay, then the new squashfs.img, to the default names",
        last,
    ]


def advance(
    stick: StickFiles, journal: Journal, kill: Kill, say: Say | None = None, until: str = ""
) -> int:
    """Run the switch from the journal's step to `until` (default: the end, clearing up);
    return the bytes freed."""
    configs = stick.configs()
    cur, nxt, prev = stick.pair(Slot.CURRENT), stick.pair(Slot.NEXT), stick.pair(Slot.PREVIOUS)

    def reach(step: str) -> None:
        nonlocal journal
        journal = replace(journal, step=step)
        write_journal(stick.ldir, journal)
        if say:
            say(f"  switch: {step}")
        kill(f"switch-{step}")
        if step == until:
            raise _Reached

    if until and journal.after(until):
        return 0
    try:
        if not journal.after("staged"):
            raise TargetError("the new image is not complete yet", "run refresh again")
        if not journal.after("boot-next"):
            be.point_configs(configs, stick.names, default=Slot.NEXT, previous=None)
            reach("boot-next")
        if not journal.after("moved-old"):
            if stick.has_kernel(Slot.NEXT):  # an update: the old kernel goes with its pair
                move_kernel(stick, Slot.CURRENT, Slot.PREVIOUS)
            move_pair(cur, prev, kill, "switch-moving-old")
            reach("moved-old")
        if not journal.after("boot-previous"):
            be.point_configs(configs, stick.names, default=Slot.PREVIOUS, previous=None)
            reach("boot-previous")
        if not journal.after("moved-new"):
            move_pair_in(nxt, cur, kill, "switch-moving-new")
            if stick.has_kernel(Slot.NEXT):
                move_kernel(stick, Slot.NEXT, Slot.CURRENT)
            reach("moved-new")
        keep = journal.keep_previous
        if not journal.after("done"):
            after = Slot.PREVIOUS if keep else None
            be.point_configs(configs, stick.names, default=Slot.CURRENT, previous=after)
            reach("done")
        freed = 0 if keep else drop(prev, stick.kernel_files(Slot.PREVIOUS) or ())
        if not keep:
            remove_dir_if_empty(stick.slot_dir(Slot.PREVIOUS))
        discard_next(stick)
        remove_journal(stick.ldir)
        return freed
    except _Reached:
        return 0
    except OSError as exc:
        raise LiveOSError(
            f"the switch stopped at step {journal.step}: {exc.strerror or exc}",
            "the stick boots the old or the new pair; run refresh again to finish, "
            "or rollback to go back",
        ) from None


class _Reached(Exception):
    pass


def begin_rollback(stick: StickFiles, kill: Kill) -> Journal:
    """Stage the kept previous pair as NEXT, so the switch makes it current again."""
    journal = read_journal(stick.ldir) or new_journal(
        "rollback", stick.base_names.overlay, keep_previous=True
    )
    if stick.kernel is not None:
        journal = replace(journal, kernel=stick.kernel[0], initrd=stick.kernel[1])
    write_journal(stick.ldir, journal)
    kill("rollback-journal")
    # No entry may name PREVIOUS while its files move.
    be.point_configs(stick.configs(), stick.names, default=Slot.CURRENT, previous=None)
    kill("rollback-entries")
    if stick.has_kernel(Slot.PREVIOUS):
        move_kernel(stick, Slot.PREVIOUS, Slot.NEXT)
    move_pair(stick.pair(Slot.PREVIOUS), stick.pair(Slot.NEXT), kill, "rollback-moving")
    journal = replace(journal, step="staged")
    write_journal(stick.ldir, journal)
    kill("rollback-staged")
    return journal


def drop_previous(stick: StickFiles) -> int:
    be.point_configs(stick.configs(), stick.names, default=Slot.CURRENT, previous=None)
    freed = drop(stick.pair(Slot.PREVIOUS), stick.kernel_files(Slot.PREVIOUS) or ())
    remove_dir_if_empty(stick.slot_dir(Slot.PREVIOUS))
    return freed


def state_problem(stick: StickFiles) -> str | None:
    """A check for tests and status: is every entry of every config booting a whole pair?"""
    for cfg in stick.configs():
        text = cfg.read_text()
        for what, slot in (
            ("default", be.default_slot(text)),
            ("previous", be.previous_slot(text)),
        ):
            if slot is not None and not stick.pair(slot).exists():
                return f"{cfg}: the {what} entry boots {slot.name.lower()}, not a whole pair"
    return None
