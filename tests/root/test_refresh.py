"""refresh / rollback on the host: a real ext4 stick image, mounted, with a real base
image (mksquashfs of an ext4 rootfs.img) and an overlay holding the learner's files.

The host kernel has no device-mapper, so the overlay here is written offline, chunk
by chunk, from the difference between the base and a copy changed with debugfs (the
store format of docs/ARCHITECTURE.md F1). The guest tests (tests/guest/test_refresh_kill.py)
do the same against the kernel's own snapshot.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from liveos_tools import bootentries as be
from liveos_tools import switch
from liveos_tools.cow import MAGIC
from liveos_tools.errors import ExitCode
from liveos_tools.writer import bootcfg
from tests.root.test_maintain_refusals import cli

MiB = 1024 * 1024
LABEL = "LIVE"
UUID = "6d1f6a52-4d1e-4c3b-9a55-0123456789ab"
OVERLAY = f"overlay-{LABEL}-{UUID}"
CHUNK = 4096
#: the learner's files, written through the overlay
LEARNER = {
    "home-notes/notes.txt": b"my notes\n" * 300,
    "etc/learner.conf": b"colour=blue\n",
    "opt/app/data.bin": hashlib.sha256(b"x").digest() * 4096,
}
BASE_FILES = {"etc/os-release": b"NAME=Base\n", "usr/share/base.txt": b"base data\n" * 900}


def sh(*argv: str | Path, **kw: object) -> str:
    return subprocess.run(
        [str(a) for a in argv],
        check=True,
        capture_output=True,
        text=True,
        **kw,  # type: ignore[call-overload]
    ).stdout


def sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha(p) for p in sorted(root.rglob("*")) if p.is_file()}


def write_store(base: Path, changed: Path, dest: Path, size: int) -> int:
    """A persistent store holding every 4 KiB chunk where `changed` differs from `base`,
    laid out as the kernel lays it out (chunk size 8 sectors, areas of 256)."""
    epa = CHUNK // 16
    found: list[tuple[int, bytes]] = []
    with open(base, "rb") as a, open(changed, "rb") as b:
        index = 0
        while True:
            x, y = a.read(CHUNK), b.read(CHUNK)
            if not x:
                break
            if x != y:
                found.append((index, y))
            index += 1
    with open(dest, "wb") as f:
        f.truncate(size)
        f.write(struct.pack("<IIII", MAGIC, 1, 1, 8))
        for i, (old, data) in enumerate(found):
            area, slot = divmod(i, epa)
            area_chunk = 1 + (epa + 1) * area
            new = area_chunk + 1 + slot
            f.seek(area_chunk * CHUNK + slot * 16)
            f.write(struct.pack("<QQ", old, new))
            f.seek(new * CHUNK)
            f.write(data)
    return len(found)


def make_rootfs(path: Path, files: dict[str, bytes], size: int = 32 * MiB) -> None:
    tree = path.parent / (path.name + ".tree")
    for rel, data in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(data)
    with open(path, "wb") as f:
        f.truncate(size)
    sh("mkfs.ext4", "-q", "-F", "-b", "4096", "-L", "Anaconda", "-d", tree, path)
    shutil.rmtree(tree)


def learner_copy(base: Path, dest: Path, files: dict[str, bytes]) -> None:
    """`base` with the learner's files added, written by the ext4 code of debugfs."""
    shutil.copy(base, dest)
    src = dest.parent / "learner-src"
    cmds = []
    made: set[str] = set()
    for i, (rel, data) in enumerate(files.items()):
        (src / str(i)).parent.mkdir(parents=True, exist_ok=True)
        (src / str(i)).write_bytes(data)
        parts = Path(rel).parts[:-1]
        for n in range(1, len(parts) + 1):
            d = "/".join(parts[:n])
            if d not in made:
                made.add(d)
                cmds.append(f"mkdir /{d}")
        cmds.append(f"write {src / str(i)} /{rel}")
    (src / "cmds").write_text("\n".join(cmds) + "\n")
    sh("debugfs", "-w", "-f", src / "cmds", dest)
    shutil.rmtree(src)


def squash(rootfs: Path, dest: Path, comp: str = "gzip") -> None:
    sq = rootfs.parent / (rootfs.name + ".sq")
    (sq / "LiveOS").mkdir(parents=True)
    os.link(rootfs, sq / "LiveOS" / "rootfs.img")
    sh("mksquashfs", sq, dest, "-comp", comp, "-noappend", "-quiet", "-no-progress")
    shutil.rmtree(sq)


@dataclass(frozen=True)
class RStick:
    image: Path  # the ext4 stick image
    root: Path  # where it is mounted
    base_rootfs: Path  # the base rootfs.img (outside the stick)

    @property
    def ldir(self) -> Path:
        return self.root / "LiveOS"

    @property
    def files(self) -> switch.StickFiles:
        return switch.StickFiles(self.root, be.Names("LiveOS", OVERLAY))

    def configs(self) -> dict[str, str]:
        return {str(p.relative_to(self.root)): p.read_text() for p in self.files.configs()}


def build_stick_tree(work: Path, overlay_bytes: int = 16 * MiB) -> tuple[Path, Path]:
    """The files of a stick (LiveOS/, boot configs) in work/tree; returns (tree, base)."""
    base = work / "base-rootfs.img"
    make_rootfs(base, BASE_FILES)
    changed = work / "learner-rootfs.img"
    learner_copy(base, changed, LEARNER)
    tree = work / "tree"
    live = tree / "LiveOS"
    live.mkdir(parents=True)
    squash(base, live / "squashfs.img")
    n = write_store(base, changed, live / OVERLAY, overlay_bytes)
    assert n > 3
    changed.unlink()
    with open(live / "home.img", "wb") as f:
        f.truncate(4 * MiB)
    sh("mkfs.ext4", "-q", "-F", "-L", "HOME", live / "home.img")
    args = bootcfg.BootArgs(uuid=UUID, fstype="ext4")
    (tree / "syslinux").mkdir()
    (tree / "syslinux" / "vmlinuz").write_bytes(b"old kernel\n" * 100)
    (tree / "syslinux" / "initrd.img").write_bytes(b"old initrd\n" * 100)
    (tree / "syslinux" / "extlinux.conf").write_text(bootcfg.syslinux_cfg(args, title="Test Live"))
    (tree / "EFI" / "BOOT").mkdir(parents=True)
    (tree / "EFI" / "BOOT" / "grub.cfg").write_text(
        bootcfg.grub_cfg(
            None, args, title="Test Live", kernel="/syslinux/vmlinuz", initrd="/syslinux/initrd.img"
        )
    )
    return tree, base


@contextlib.contextmanager
def mounted_stick(work: Path, size: int = 160 * MiB) -> Iterator[RStick]:
    tree, base = build_stick_tree(work)
    img = work / "stick.img"
    with open(img, "wb") as f:
        f.truncate(size)
    sh("mkfs.ext4", "-q", "-F", "-m", "0", "-L", LABEL, "-U", UUID, "-d", tree, img)
    shutil.rmtree(tree)
    mnt = work / "mnt"
    mnt.mkdir()
    sh("mount", "-o", "loop", img, mnt)
    try:
        yield RStick(img, mnt, base)
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@contextlib.contextmanager
def read_image(squashfs: Path, where: Path) -> Iterator[Path]:
    """The root filesystem inside a nested squashfs.img, mounted read-only."""
    sq, root = where / "sq", where / "root"
    sq.mkdir(parents=True)
    root.mkdir()
    sh("mount", "-o", "loop,ro", "-t", "squashfs", squashfs, sq)
    try:
        sh("mount", "-o", "loop,ro,noload", sq / "LiveOS" / "rootfs.img", root)
        try:
            yield root
        finally:
            sh("umount", root)
    finally:
        sh("umount", sq)


def assert_allowed(stick: RStick | switch.StickFiles, old: dict[str, str]) -> str:
    """Every boot entry boots a whole pair, and each pair is the old one or a new one
    (a new image with an overlay that is empty or was made for it). Returns which."""
    files = stick.files if isinstance(stick, RStick) else stick
    assert switch.state_problem(files) is None, switch.state_problem(files)
    kinds = []
    for cfg in files.configs():
        text = cfg.read_text()
        for slot in (be.default_slot(text), be.previous_slot(text)):
            if slot is None:
                continue
            pair = files.pair(slot)
            if sha(pair.base) == old["base"]:
                assert sha(pair.overlay) == old["overlay"], f"old base, other overlay in {slot}"
                kinds.append("old")
            else:
                head = pair.overlay.read_bytes()[:CHUNK]
                assert head[:4] in (bytes(4), struct.pack("<I", MAGIC)), slot
                kinds.append("new")
    default = be.default_slot(files.configs()[0].read_text())
    return "old" if sha(files.pair(default).base) == old["base"] else "new"


pytestmark = [pytest.mark.root]


def test_refresh_then_rollback_and_drop(tmp_path: Path) -> None:
    with mounted_stick(tmp_path) as stick:
        live = stick.ldir
        old = {"base": sha(live / "squashfs.img"), "overlay": sha(live / OVERLAY)}
        home = sha(live / "home.img")
        configs = stick.configs()
        ov_size = (live / OVERLAY).stat().st_size

        res = cli("refresh", stick.root, "--yes", "--workdir", tmp_path)
        assert res.returncode == 0, res.stderr
        assert "refreshed:" in res.stderr
        # the new pair: a new image holding the learner's files, an empty overlay
        assert sha(live / "squashfs.img") != old["base"]
        ov = live / OVERLAY
        assert ov.stat().st_size == ov_size and (ov.stat().st_mode & 0o777) == 0o600
        with open(ov, "rb") as f:
            assert not any(f.read(64 * 1024))
        with read_image(live / "squashfs.img", tmp_path / "new") as root:
            for rel, data in {**LEARNER, **BASE_FILES}.items():
                assert (root / rel).read_bytes() == data, rel
        # the old pair kept, byte for byte; home.img untouched; nothing left over
        assert sha(live / "previous" / "squashfs.img") == old["base"]
        assert sha(live / "previous" / OVERLAY) == old["overlay"]
        assert sha(live / "home.img") == home
        assert not (live / switch.JOURNAL).exists() and not (live / ".liveos-next").exists()
        # boot entries: the default ones unchanged, a previous entry naming the old pair
        now = stick.configs()
        for rel, text in now.items():
            assert be.strip_previous(text) == configs[rel]
            assert "rd.live.squashimg=previous/squashfs.img" in text
            assert f"rd.live.overlay=UUID={UUID}:/LiveOS/previous/{OVERLAY}" in text
            assert "rd.live.dir=LiveOS" in text
        assert assert_allowed(stick, old) == "new"
        new_base = sha(live / "squashfs.img")
        res = cli("status", "--json", stick.root)
        data = json.loads(res.stdout)
        kept = (live / "previous" / "squashfs.img").stat().st_size + ov_size
        assert data["refresh"] == {
            "previous_bytes": kept,
            "interrupted": None,
            "interrupted_step": None,
        }
        assert (data["state"], data["used_bytes"]) == ("new", 16 * 512)
        assert "Previous image kept" in cli("status", stick.root).stdout

        res = cli("rollback", stick.root, "--yes")
        assert res.returncode == 0, res.stderr
        assert sha(live / "squashfs.img") == old["base"]
        assert sha(live / OVERLAY) == old["overlay"]
        assert sha(live / "previous" / "squashfs.img") == new_base
        assert assert_allowed(stick, old) == "old"

        res = cli("rollback", stick.root, "--drop-previous", "--yes")
        assert res.returncode == 0, res.stderr
        assert "freed" in res.stderr
        assert stick.configs() == configs  # byte for byte what the writer wrote
        assert not (live / "previous").exists()
        assert sha(live / "squashfs.img") == old["base"]
        assert sha(live / "home.img") == home


SWITCH_KILLS = [
    "refresh-merged",
    "refresh-built",
    "refresh-journal",
    "refresh-copied",
    "refresh-staged",
    "switch-boot-next",
    "switch-moving-old",
    "switch-moved-old",
    "switch-boot-previous",
    "switch-moving-new",
    "switch-moved-new",
    "switch-done",
]


def test_sigkill_at_every_step_then_rerun(tmp_path: Path) -> None:
    """After a kill at each step the stick boots a whole pair; refresh again finishes,
    or rollback undoes; the learner's files are in whichever pair boots."""
    with mounted_stick(tmp_path) as stick:
        live = stick.ldir
        old = {"base": sha(live / "squashfs.img"), "overlay": sha(live / OVERLAY)}
        pristine = tree_hashes(stick.root)
        saved = {rel: (stick.root / rel).read_bytes() for rel in pristine if "home" not in rel}
        for i, point in enumerate(SWITCH_KILLS):
            res = cli(
                "refresh",
                stick.root,
                "--yes",
                "--no-keep-previous",
                "--workdir",
                tmp_path,
                env={"LIVEOS_TEST_KILL_AT": point},
            )
            assert res.returncode == -9, (point, res.stderr)
            assert assert_allowed(stick, old) in ("old", "new"), point
            if point == "switch-moved-old":
                text = cli("status", stick.root).stdout
                assert (
                    "warning: an interrupted refresh (step moved-old): run `liveos-overlay "
                    f"refresh {stick.root}` to finish it or `liveos-overlay rollback" in text
                ), text
            if i % 2:  # undo
                res = cli("rollback", stick.root, "--yes")
                if point in ("refresh-merged", "refresh-built"):
                    # killed before the stick was touched: there is nothing to undo
                    assert res.returncode == ExitCode.BAD_TARGET, (point, res.stderr)
                    assert "no previous image" in res.stderr, res.stderr
                    assert tree_hashes(stick.root) == pristine, point
                else:
                    assert res.returncode == 0, (point, res.stderr)
            else:  # finish
                res = cli(
                    "refresh", stick.root, "--yes", "--no-keep-previous", "--workdir", tmp_path
                )
                assert res.returncode == 0, (point, res.stderr)
            assert not (live / switch.JOURNAL).exists(), point
            kind = assert_allowed(stick, old)
            if i % 2 and point.startswith("switch-"):
                assert kind == "old", point
            if not i % 2:
                assert kind == "new", point
            if kind == "new":
                with read_image(live / "squashfs.img", tmp_path / f"r{i}") as root:
                    for rel, data in LEARNER.items():
                        assert (root / rel).read_bytes() == data, (point, rel)
            # back to the very first stick for the next point
            restore(stick, saved)
            assert tree_hashes(stick.root) == pristine, point
        # scratch directories of killed runs were swept by the next run
        assert len(list(tmp_path.glob("liveos-refresh-*"))) <= 1


def restore(stick: RStick, saved: dict[str, bytes]) -> None:
    for extra in (stick.ldir / "previous", stick.ldir / ".liveos-next"):
        shutil.rmtree(extra, ignore_errors=True)
    (stick.ldir / switch.JOURNAL).unlink(missing_ok=True)
    for rel, data in saved.items():
        (stick.root / rel).write_bytes(data)


def assert_refused(res: subprocess.CompletedProcess[str], code: int, words: str) -> None:
    assert res.returncode == code, (res.returncode, res.stderr)
    assert "error: " in res.stderr and words in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def path_without(tool: str, where: Path) -> str:
    """A PATH holding every program of this PATH but `tool`."""
    where.mkdir()
    for d in os.environ["PATH"].split(":"):
        if not os.path.isdir(d):
            continue
        for entry in os.scandir(d):
            if entry.name != tool and not (where / entry.name).exists():
                (where / entry.name).symlink_to(entry.path)
    return str(where)


@contextlib.contextmanager
def small_fs(where: Path, size: int) -> Iterator[Path]:
    img = where.with_suffix(".img")
    with open(img, "wb") as f:
        f.truncate(size)
    sh("mkfs.ext4", "-q", "-F", "-m", "0", img)
    where.mkdir()
    sh("mount", "-o", "loop", img, where)
    try:
        yield where
    finally:
        sh("umount", where)


def test_dry_run_refusals_and_ctrl_c_leave_the_stick_byte_identical(tmp_path: Path) -> None:
    with mounted_stick(tmp_path) as stick:
        ov = stick.ldir / OVERLAY
        before = tree_hashes(stick.root)
        res = cli("refresh", stick.root, "--dry-run", "--workdir", tmp_path)
        assert res.returncode == 0, res.stderr
        assert "dry run: nothing was changed" in res.stderr
        assert "compressed with gzip (as the old one)" in res.stderr
        assert "rename the old squashfs.img, then its overlay, into LiveOS/previous/" in res.stderr
        # no terminal to ask on, no --yes
        assert_refused(
            cli("refresh", stick.root, "--workdir", tmp_path),
            ExitCode.ABORTED,
            "needs confirmation",
        )
        assert_refused(
            cli("rollback", stick.root, "--yes"), ExitCode.BAD_TARGET, "no previous image is kept"
        )
        with small_fs(tmp_path / "tiny", 8 * MiB) as tiny:
            assert_refused(
                cli("refresh", stick.root, "--yes", "--workdir", tiny),
                ExitCode.NO_SPACE,
                "not enough room in the workdir",
            )
        fake = path_without("mksquashfs", tmp_path / "bin")
        res = cli("refresh", stick.root, "--yes", "--workdir", tmp_path, env={"PATH": fake})
        assert_refused(res, ExitCode.TOOL_MISSING, "mksquashfs is not installed")
        assert "apt-get install squashfs-tools" in res.stderr
        loop = sh("losetup", "--find", "--show", ov).strip()
        try:
            assert_refused(
                cli("refresh", stick.root, "--yes", "--workdir", tmp_path),
                ExitCode.IN_USE,
                "is in use: attached to /dev/loop",
            )
        finally:
            sh("losetup", "-d", loop)
        sh("mount", "-o", "remount,ro", stick.root)
        try:
            assert_refused(
                cli("refresh", stick.root, "--yes", "--workdir", tmp_path),
                ExitCode.IN_USE,
                "mounted read-only",
            )
        finally:
            sh("mount", "-o", "remount,rw", stick.root)
        # Ctrl-C while building, and after the image was copied onto the stick
        for point in ("refresh-built:INT", "refresh-copied:INT"):
            res = cli(
                "refresh",
                stick.root,
                "--yes",
                "--workdir",
                tmp_path,
                env={"LIVEOS_TEST_KILL_AT": point},
            )
            assert_refused(res, ExitCode.ABORTED, "interrupted")
            assert tree_hashes(stick.root) == before, point
            assert not list(tmp_path.glob("liveos-refresh-*")), point
        assert sorted(p.name for p in stick.ldir.iterdir()) == sorted(
            ["squashfs.img", OVERLAY, "home.img"]
        )
        # a damaged overlay: repair first (exit 10)
        good = ov.read_bytes()[:16]
        for head, words in ((b"XXXX", "corrupt"), (struct.pack("<II", MAGIC, 0), "invalid")):
            with open(ov, "r+b") as f:
                f.write(head)
            damaged = tree_hashes(stick.root)
            res = cli("refresh", stick.root, "--yes", "--workdir", tmp_path)
            assert_refused(res, ExitCode.CORRUPT, words)
            assert "liveos-overlay repair" in res.stderr
            assert tree_hashes(stick.root) == damaged
        with open(ov, "r+b") as f:
            f.write(good)
        assert tree_hashes(stick.root) == before
        # a damaged squashfs.img: exit 10, told apart from an unsupported layout
        img = stick.ldir / "squashfs.img"
        whole = img.read_bytes()
        img.write_bytes(whole[:96] + b"\xff" * (len(whole) - 96))  # all but the superblock
        try:
            damaged = tree_hashes(stick.root)
            res = cli("refresh", stick.root, "--yes", "--workdir", tmp_path)
            assert_refused(res, ExitCode.CORRUPT, "cannot be read")
            assert tree_hashes(stick.root) == damaged
        finally:
            img.write_bytes(whole)
        assert tree_hashes(stick.root) == before
        # no room on the stick for the new image and a fresh overlay beside the old pair
        filler = stick.root / "filler"
        free = os.statvfs(stick.root).f_bavail * os.statvfs(stick.root).f_frsize
        with open(filler, "wb") as f:
            os.posix_fallocate(f.fileno(), 0, free - 8 * MiB)
        full = tree_hashes(stick.root)
        res = cli("refresh", stick.root, "--yes", "--workdir", tmp_path)
        assert_refused(res, ExitCode.NO_SPACE, "not enough room on the stick")
        assert "--no-keep-previous" in res.stderr
        assert tree_hashes(stick.root) == full
        # no boot config the switch could rewrite: refused
        for cfg in stick.files.configs():
            cfg.rename(cfg.with_suffix(".off"))
        full = tree_hashes(stick.root)
        res = cli("refresh", stick.root, "--yes", "--workdir", tmp_path)
        assert_refused(res, ExitCode.USAGE, "no boot config with rd.live.overlay=")
        assert tree_hashes(stick.root) == full


def test_the_running_live_system_and_fat_limit_are_refused(tmp_path: Path) -> None:
    from liveos_tools.errors import InUseError, NoSpaceError
    from liveos_tools.media import Source, inspect_root
    from liveos_tools.tasks import refresh

    tree, _ = build_stick_tree(tmp_path)
    medium = inspect_root(tree, source=Source.LIVE, target="live", livedir="LiveOS", volume=None)
    with pytest.raises(InUseError) as err:
        refresh.plan_refresh(medium)
    assert err.value.code == ExitCode.IN_USE and "running live system" in err.value.message
    assert "rescue shell" in (err.value.hint or "")
    with pytest.raises(NoSpaceError):
        refresh.check_fat_limit(4 * 1024**3, "vfat", "squashfs.img")
    refresh.check_fat_limit(4 * 1024**3 - 1, "vfat", "squashfs.img")
    refresh.check_fat_limit(5 * 1024**3, "ext4", "squashfs.img")


def test_update_from_a_grub_only_iso_then_rollback(tmp_path: Path) -> None:
    from tests.fixtures import isobuild

    kernel = tmp_path / "kernel-b"
    kernel.write_bytes(b"new kernel\n" * 1000)
    iso = isobuild.build_iso(tmp_path / "b.iso", "grub", kernel=kernel)
    with mounted_stick(tmp_path) as stick:
        live, boot = stick.ldir, stick.root / "syslinux"
        old = {
            n: sha(p)
            for n, p in (
                ("base", live / "squashfs.img"),
                ("overlay", live / OVERLAY),
                ("kernel", boot / "vmlinuz"),
                ("initrd", boot / "initrd.img"),
            )
        }
        home = sha(live / "home.img")
        before = tree_hashes(stick.root)
        # not a LiveOS, and a damaged squashfs: refused, nothing changed
        notlive = tmp_path / "notlive"
        notlive.mkdir()
        assert_refused(
            cli("update", "--from", notlive, stick.root, "--yes"),
            ExitCode.BAD_TARGET,
            "no LiveOS/squashfs.img",
        )
        bad = tmp_path / "bad"
        (bad / "LiveOS").mkdir(parents=True)
        (bad / "LiveOS" / "squashfs.img").write_bytes(b"hsqs" + bytes(4000))
        (bad / "isolinux").mkdir()
        (bad / "isolinux" / "vmlinuz").write_bytes(b"k")
        (bad / "isolinux" / "initrd.img").write_bytes(b"i")
        assert_refused(
            cli("update", "--from", bad, stick.root, "--yes"), ExitCode.CORRUPT, "cannot be read"
        )
        assert tree_hashes(stick.root) == before

        res = cli(
            "update",
            "--from",
            iso.path,
            stick.root,
            "--yes",
            env={"LIVEOS_TEST_KILL_AT": "switch-moved-old"},
        )
        assert res.returncode == -9, res.stderr
        assert switch.state_problem(stick.files) is None
        res = cli("update", "--from", iso.path, stick.root, "--yes")
        assert res.returncode == 0, res.stderr
        assert sha(live / "squashfs.img") == iso.sha256["/LiveOS/squashfs.img"]
        assert sha(boot / "vmlinuz") == iso.sha256["/images/pxeboot/vmlinuz"]
        assert sha(boot / "initrd.img") == iso.sha256["/images/pxeboot/initrd.img"]
        with open(live / OVERLAY, "rb") as f:
            assert not any(f.read(64 * 1024))
        prev = live / "previous"
        assert {
            n: sha(prev / f)
            for n, f in (
                ("base", "squashfs.img"),
                ("overlay", OVERLAY),
                ("kernel", "vmlinuz"),
                ("initrd", "initrd.img"),
            )
        } == old
        assert sha(live / "home.img") == home
        with read_image(live / "squashfs.img", tmp_path / "b") as root:
            assert (root / "etc/fixture-release").read_bytes() == b"liveos-tools fixture 1\n"
        for text in stick.configs().values():
            head, _, block = text.partition(be.BEGIN)
            assert "/LiveOS/previous/vmlinuz" in block and "/LiveOS/previous/initrd.img" in block
            assert "/syslinux/vmlinuz" in head and "/LiveOS/previous/" not in head
        assert switch.state_problem(stick.files) is None

        res = cli("rollback", stick.root, "--yes")
        assert res.returncode == 0, res.stderr
        assert sha(live / "squashfs.img") == old["base"] and sha(live / OVERLAY) == old["overlay"]
        assert sha(boot / "vmlinuz") == old["kernel"] and sha(boot / "initrd.img") == old["initrd"]
        assert sha(prev / "vmlinuz") == iso.sha256["/images/pxeboot/vmlinuz"]
