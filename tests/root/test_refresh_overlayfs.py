"""refresh / rollback of OverlayFS-persistence sticks on the host, against the kernel.

The learner's changes are made THROUGH the host kernel's overlayfs (a real upper layer
with the kernel's whiteouts, opaque directories and copy-ups), on an ext4 stick image
holding dracut's layout (LiveOS/overlay-<LABEL>-<UUID>/ + LiveOS/ovlwork/, or an
overlay image file holding overlayfs/ + ovlwork/). The ground truth is the kernel's
merged view (`mount -t overlay -o lowerdir=UPPER:LOWER`, read-only); the new
squashfs.img must show exactly that tree.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from liveos_tools import bootentries as be
from liveos_tools import mounts, switch
from liveos_tools.errors import ExitCode
from liveos_tools.writer import bootcfg
from tests.guest.test_refresh_kill import REFRESH_POINTS, ROLLBACK_POINTS
from tests.root.test_refresh import sha, small_fs
from tests.support.shell import MiB, sh
from tests.support.shell import cli_process as cli

pytestmark = [pytest.mark.root]

LABEL = "LIVE"
UUID = "7e2f6a52-4d1e-4c3b-9a55-0123456789cd"
OVERLAY = f"overlay-{LABEL}-{UUID}"

BASE = {
    "etc/os-release": b"NAME=Base\n",
    "usr/share/base.txt": b"base data\n" * 20000,
    "usr/share/keep.txt": b"kept\n",
    "usr/share/gone.txt": b"to be deleted\n",
    "usr/lib/gone/a.so": b"a" * 5000,
    "usr/lib/gone/sub/b.so": b"b" * 7000,
    "opt/recreate/old.txt": b"old\n",
    "opt/recreate/deep/old2.txt": b"old2\n",
    "var/data/rename-me.txt": b"rename me\n",
    "bin/tool": b"#!/bin/sh\necho tool\n",
    "hard/a": b"linked\n",
}


def make_lower(tree: Path) -> None:
    for rel, data in BASE.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(data)
    os.chmod(tree / "bin/tool", 0o755)
    os.link(tree / "hard/a", tree / "hard/b")
    os.symlink("usr/share/base.txt", tree / "link")
    (tree / "dev").mkdir()
    (tree / "run").mkdir()
    (tree / "home").mkdir()
    # trusted.*: the guest builds on tmpfs, which has no user.* xattrs before Linux 6.6
    os.setxattr(tree / "usr/share/keep.txt", "trusted.base", b"yes")


def learner_changes(m: Path) -> None:
    """What a learner does in the live system: through the kernel's overlayfs."""
    (m / "home/learner").mkdir()
    (m / "home/learner/notes.txt").write_bytes(b"my notes\n" * 500)
    os.link(m / "home/learner/notes.txt", m / "home/learner/notes-link.txt")
    os.setxattr(m / "home/learner/notes.txt", "user.colour", b"blue")
    with open(m / "usr/share/base.txt", "ab") as f:
        f.write(b"learner line\n")
    os.setxattr(m / "usr/share/base.txt", "security.learner", b"label")
    os.unlink(m / "usr/share/gone.txt")  # a whiteout
    shutil.rmtree(m / "usr/lib/gone")  # a whole base directory: a whiteout
    shutil.rmtree(m / "opt/recreate")
    (m / "opt/recreate").mkdir()  # removed and made again: opaque
    (m / "opt/recreate/new.txt").write_bytes(b"new\n")
    os.chmod(m / "bin/tool", 0o700)
    os.chown(m / "bin/tool", 1000, 1000)
    os.chmod(m / "opt", 0o750)
    os.symlink("home/learner/notes.txt", m / "newlink")
    os.rename(m / "var/data/rename-me.txt", m / "var/data/renamed.txt")
    with open(m / "hard/a", "ab") as f:  # copy-up breaks the base's hard link
        f.write(b"changed\n")
    os.mknod(m / "dev/null2", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mkfifo(m / "run/fifo", 0o600)
    os.removexattr(m / "usr/share/keep.txt", "trusted.base")
    (m / "etc/learner.conf").write_bytes(b"colour=blue\n")
    os.utime(m / "etc/learner.conf", ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))


def walk(root: Path, *, overlay: bool = False) -> dict[str, tuple[object, ...]]:
    """Everything the kernel shows of a tree: type, mode, owner, size, data, target,
    device numbers, xattrs, mtimes, and which names share an inode. `overlay`: the tree
    is an overlay mount, whose own xattrs the kernel hides (it can show them escaped);
    any such xattr in a new image is a difference."""
    out: dict[str, tuple[object, ...]] = {}
    inodes: dict[int, list[str]] = {}
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for name in [".", *sorted(dirs), *sorted(files)]:
            path = Path(dirpath) / name
            if name == "." and Path(dirpath) != root:
                continue
            rel = str(path.relative_to(root)) if name != "." else "."
            st = os.lstat(path)
            kind = stat.S_IFMT(st.st_mode)
            digest = target = None
            if stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                inodes.setdefault(st.st_ino, []).append(rel)
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(path)
            xattrs = {}
            if not stat.S_ISLNK(st.st_mode):
                for x in sorted(os.listxattr(path, follow_symlinks=False)):
                    if not (overlay and x.startswith(("trusted.overlay.", "user.overlay."))):
                        xattrs[x] = os.getxattr(path, x, follow_symlinks=False)
            size = None if stat.S_ISDIR(st.st_mode) else st.st_size
            out[rel] = (
                kind,
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                size,
                digest,
                target,
                st.st_rdev if stat.S_ISCHR(kind) or stat.S_ISBLK(kind) else None,
                tuple(xattrs.items()),
                st.st_mtime_ns,
            )
    for names in inodes.values():
        for n in names:
            out[n] = (*out[n], tuple(x for x in names if x != n))
    for rel, v in out.items():
        if len(v) == 10:
            out[rel] = (*v, ())
    return out


def seconds(entry: object) -> tuple[object, ...]:
    """A walk() entry with its mtime cut to whole seconds."""
    assert isinstance(entry, tuple)
    mtime = entry[9]
    assert isinstance(mtime, int)
    return (*entry[:9], mtime // 10**9, *entry[10:])


def raw_walk(root: Path) -> dict[str, tuple[object, ...]]:
    """An upper layer byte for byte, overlay xattrs included (what rollback restores)."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(dirpath) / name
            st = os.lstat(path)
            data = path.read_bytes() if stat.S_ISREG(st.st_mode) else None
            xs = tuple(
                (x, os.getxattr(path, x, follow_symlinks=False))
                for x in sorted(os.listxattr(path, follow_symlinks=False))
            )
            out[str(path.relative_to(root))] = (
                st.st_mode,
                st.st_uid,
                st.st_rdev,
                data,
                os.readlink(path) if stat.S_ISLNK(st.st_mode) else None,
                xs,
                st.st_mtime_ns if not stat.S_ISDIR(st.st_mode) else None,
            )
    return out


@contextlib.contextmanager
def mounted(src: Path | str, where: Path, *opts: str, fstype: str | None = None) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    argv = [
        "mount",
        *(["-t", fstype] if fstype else []),
        "-o",
        ",".join(opts),
        str(src),
        str(where),
    ]
    sh(*argv)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


@contextlib.contextmanager
def lower_of(squashfs: Path, where: Path, *, flat: bool) -> Iterator[Path]:
    """The base root tree, mounted read-only, as dracut mounts it."""
    with mounted(squashfs, where / "sq", "loop", "ro", fstype="squashfs") as sq:
        if flat:
            yield sq
        else:
            with mounted(sq / "LiveOS/rootfs.img", where / "root", "loop", "ro", "noload") as r:
                yield r


def merged_view(upper: Path, lower: Path, where: Path) -> dict[str, tuple[object, ...]]:
    with mounted("overlay", where, f"lowerdir={upper}:{lower}", fstype="overlay") as view:
        return walk(view, overlay=True)


@dataclass(frozen=True)
class OStick:
    image: Path
    root: Path
    flat: bool
    image_overlay: bool

    @property
    def ldir(self) -> Path:
        return self.root / "LiveOS"

    @property
    def files(self) -> switch.StickFiles:
        return switch.StickFiles(self.root, be.Names("LiveOS", OVERLAY))


def build_base(work: Path, dest: Path, *, flat: bool) -> None:
    tree = work / "lower-tree"
    make_lower(tree)
    if flat:
        sh("mksquashfs", tree, dest, "-noappend", "-quiet", "-no-progress", "-comp", "gzip")
    else:
        sq = work / "sqtree"
        (sq / "LiveOS").mkdir(parents=True)
        rootfs = sq / "LiveOS" / "rootfs.img"
        with open(rootfs, "wb") as f:
            f.truncate(24 * MiB)
        sh("mkfs.ext4", "-q", "-F", "-b", "4096", "-L", "Anaconda", "-d", tree, rootfs)
        sh("mksquashfs", sq, dest, "-noappend", "-quiet", "-no-progress", "-comp", "gzip")
        shutil.rmtree(sq)
    shutil.rmtree(tree)


def write_configs(tree: Path) -> None:
    args = bootcfg.BootArgs(uuid=UUID, fstype="ext4", persistence=bootcfg.Persistence.OVERLAYFS)
    (tree / "syslinux").mkdir()
    (tree / "syslinux" / "vmlinuz").write_bytes(b"kernel\n")
    (tree / "syslinux" / "initrd.img").write_bytes(b"initrd\n")
    (tree / "syslinux" / "extlinux.conf").write_text(bootcfg.syslinux_cfg(args, title="Test Live"))
    (tree / "EFI" / "BOOT").mkdir(parents=True)
    (tree / "EFI" / "BOOT" / "grub.cfg").write_text(
        bootcfg.grub_cfg(
            None, args, title="Test Live", kernel="/syslinux/vmlinuz", initrd="/syslinux/initrd.img"
        )
    )


@contextlib.contextmanager
def upper_dirs(stick: OStick, work: Path, *, ro: bool = False) -> Iterator[tuple[Path, Path]]:
    """(upper, workdir) of the stick's current overlay: its directory, or the inside of
    its overlay image (mounted)."""
    if not stick.image_overlay:
        yield stick.ldir / OVERLAY, stick.ldir / "ovlwork"
        return
    opts = ("loop", "ro", "noload") if ro else ("loop",)
    with mounted(stick.ldir / OVERLAY, work, *opts) as m:
        yield m / "overlayfs", m / "ovlwork"


def make_overlay(stick: OStick, work: Path) -> None:
    """An empty overlay as liveos-iso-to-disk --overlayfs makes one: a directory with
    ovlwork/ beside it, or a 24 MiB ext4 image holding overlayfs/ and ovlwork/."""
    if not stick.image_overlay:
        (stick.ldir / OVERLAY).mkdir()
        (stick.ldir / "ovlwork").mkdir()
        return
    with open(stick.ldir / OVERLAY, "wb") as f:
        f.truncate(24 * MiB)
    empty = work / "ovl-empty"
    (empty / "overlayfs").mkdir(parents=True)
    (empty / "ovlwork").mkdir()
    sh("mkfs.ext4", "-q", "-F", "-L", "OVL", "-d", empty, stick.ldir / OVERLAY)


def learn_through_kernel(stick: OStick, work: Path) -> None:
    """learner_changes() through the kernel's overlayfs on the stick's base and overlay."""
    with (
        lower_of(stick.ldir / "squashfs.img", work / "lower", flat=stick.flat) as lower,
        upper_dirs(stick, work / "ovimg") as (upper, wdir),
        mounted(
            "overlay",
            work / "live",
            f"lowerdir={lower},upperdir={upper},workdir={wdir}",
            fstype="overlay",
        ) as live,
    ):
        learner_changes(live)
    shutil.rmtree(work / "live")


@contextlib.contextmanager
def ovl_stick(work: Path, *, flat: bool, image_overlay: bool = False) -> Iterator[OStick]:
    """A mounted ext4 stick whose overlay holds learner_changes(), made by the kernel."""
    tree = work / "stick-tree"
    (tree / "LiveOS").mkdir(parents=True)
    build_base(work, tree / "LiveOS" / "squashfs.img", flat=flat)
    write_configs(tree)
    img = work / "stick.img"
    with open(img, "wb") as f:
        f.truncate(96 * MiB)
    sh("mkfs.ext4", "-q", "-F", "-m", "0", "-L", LABEL, "-U", UUID, "-d", tree, img)
    shutil.rmtree(tree)
    with mounted(img, work / "stick", "loop", "noatime") as root:
        stick = OStick(img, root, flat, image_overlay)
        make_overlay(stick, work)
        learn_through_kernel(stick, work)
        yield stick


def kernel_view(stick: OStick, work: Path, squashfs: Path | None = None) -> dict[str, object]:
    """The kernel's merged view of a pair: its base and its upper layer."""
    with (
        lower_of(squashfs or stick.ldir / "squashfs.img", work / "l", flat=stick.flat) as lower,
        upper_dirs(stick, work / "u", ro=True) as (upper, _w),
    ):
        return dict(merged_view(upper, lower, work / "v"))


def new_image_view(stick: OStick, work: Path) -> dict[str, object]:
    with lower_of(stick.ldir / "squashfs.img", work, flat=stick.flat) as root:
        return dict(walk(root))


def stick_tree(stick: OStick) -> dict[str, tuple[object, ...]]:
    return raw_walk(stick.root)


def assert_refused(res: subprocess.CompletedProcess[str], code: int, words: str) -> None:
    assert res.returncode == code, (res.returncode, res.stderr)
    assert "error: " in res.stderr and words in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def upper_raw(stick: OStick, work: Path, slot: str = "") -> dict[str, tuple[object, ...]]:
    d = stick.ldir / slot / OVERLAY if slot else stick.ldir / OVERLAY
    if not stick.image_overlay:
        return raw_walk(d)
    with mounted(d, work, "loop", "ro", "noload") as m:
        assert {"overlayfs", "ovlwork"} <= set(os.listdir(m)), os.listdir(m)
        return raw_walk(m / "overlayfs")


@pytest.mark.parametrize(
    ("flat", "image_overlay"),
    [(False, False), (True, False), (False, True)],
    ids=["nested-dir", "flat-dir", "nested-image"],
)
def test_refresh_matches_the_kernel_then_rollback(
    tmp_path: Path, flat: bool, image_overlay: bool
) -> None:
    with ovl_stick(tmp_path, flat=flat, image_overlay=image_overlay) as stick:
        live = stick.ldir
        truth = kernel_view(stick, tmp_path / "k1")
        # the kernel really wrote whiteouts and an opaque directory
        old_upper = upper_raw(stick, tmp_path / "u0")
        modes = {rel: int(str(v[0])) for rel, v in old_upper.items()}
        assert stat.S_ISCHR(modes["usr/share/gone.txt"]), "no whiteout"
        assert stat.S_ISCHR(modes["usr/lib/gone"]), "no directory whiteout"
        opaque = dict(old_upper["opt/recreate"][5])  # type: ignore[call-overload]
        assert opaque.get("trusted.overlay.opaque") == b"y", opaque
        assert "usr/share/gone.txt" not in truth and "usr/lib/gone" not in truth
        assert "opt/recreate/old.txt" not in truth and "opt/recreate/new.txt" in truth
        old_base = sha(live / "squashfs.img")
        old_configs = {str(p): p.read_text() for p in stick.files.configs()}

        tree_before = stick_tree(stick)
        res = cli("refresh", stick.root, "--dry-run", "--workdir", tmp_path)
        assert res.returncode == 0, res.stderr
        assert "apply the overlay" in res.stderr, res.stderr
        assert stick_tree(stick) == tree_before  # --dry-run changes nothing

        res = cli("refresh", stick.root, "--yes", "--workdir", tmp_path)
        assert res.returncode == 0, res.stderr
        assert "refreshed:" in res.stderr, res.stderr
        assert sha(live / "squashfs.img") != old_base
        got = new_image_view(stick, tmp_path / "new")
        assert set(got) == set(truth), set(got) ^ set(truth)
        for rel, value in truth.items():
            if flat:  # squashfs keeps whole seconds of mtime only
                value = seconds(value)
                got[rel] = seconds(got[rel])
            assert got[rel] == value, (rel, got[rel], value)
        # the layout is kept: nested stays nested, flat stays flat
        listing = sh("unsquashfs", "-lls", "-d", "", live / "squashfs.img")
        assert ("/LiveOS/rootfs.img" in listing) is not flat
        if not flat:  # not grown: the learner's files fit its free space
            assert f" {24 * MiB} " in listing.split("/LiveOS/rootfs.img")[0].splitlines()[-1]
        # a fresh upper layer (with ovlwork) for the new base
        fresh = upper_raw(stick, tmp_path / "u1")
        assert fresh == {}
        if image_overlay:
            assert (live / OVERLAY).stat().st_size == 24 * MiB
            assert sh("blkid", "-o", "value", "-s", "LABEL", live / OVERLAY).strip() == "OVL"
        else:
            assert (live / "ovlwork").is_dir()
            assert not any((live / "ovlwork").iterdir())
        # the old pair in previous/, the upper byte for byte
        assert sha(live / "previous" / "squashfs.img") == old_base
        assert upper_raw(stick, tmp_path / "u2", "previous") == old_upper
        if not image_overlay:
            assert (live / "previous" / "ovlwork").is_dir()
        assert not (live / switch.JOURNAL).exists() and not (live / ".liveos-next").exists()
        for cfg in stick.files.configs():
            text = cfg.read_text()
            assert be.strip_previous(text) == old_configs[str(cfg)]
            assert f"rd.live.overlay=UUID={UUID}:/LiveOS/previous/{OVERLAY}" in text
            assert "rd.live.squashimg=previous/squashfs.img" in text
            prev_block = text[text.index(be.BEGIN) :]
            assert "rd.live.overlay.overlayfs" in prev_block
        assert switch.state_problem(stick.files) is None
        status = cli("status", stick.root)
        assert "Previous image kept" in status.stdout, status.stdout
        doc = json.loads(cli("status", "--json", stick.root).stdout)
        kept = stick.files.pair(be.Slot.PREVIOUS).size()
        assert (
            doc["refresh"]["previous_bytes"]
            == kept
            > (live / "previous/squashfs.img").stat().st_size
        )

        res = cli("rollback", stick.root, "--yes")
        assert res.returncode == 0, res.stderr
        assert sha(live / "squashfs.img") == old_base
        assert upper_raw(stick, tmp_path / "u3") == old_upper
        assert kernel_view(stick, tmp_path / "k2") == truth
        assert switch.state_problem(stick.files) is None

        res = cli("rollback", stick.root, "--drop-previous", "--yes")
        assert res.returncode == 0, res.stderr
        assert not (live / "previous").exists()
        assert {str(p): p.read_text() for p in stick.files.configs()} == old_configs


def test_refusals_leave_the_stick_byte_identical(tmp_path: Path) -> None:
    with ovl_stick(tmp_path, flat=False) as stick:
        upper = stick.ldir / OVERLAY
        os.setxattr(upper / "opt", "trusted.overlay.redirect", b"/elsewhere")
        before = stick_tree(stick)
        res = cli("refresh", stick.root, "--yes", "--workdir", tmp_path)
        assert_refused(res, ExitCode.BAD_TARGET, "redirect")
        assert stick_tree(stick) == before
        os.removexattr(upper / "opt", "trusted.overlay.redirect")
        os.setxattr(upper / "bin/tool", "trusted.overlay.metacopy", b"")
        res = cli("refresh", stick.root, "--yes", "--workdir", tmp_path)
        assert_refused(res, ExitCode.BAD_TARGET, "metacopy")
        os.removexattr(upper / "bin/tool", "trusted.overlay.metacopy")
        # in use: the upper layer is mounted as a live overlay's upperdir (the lower
        # here is a plain directory, so only the upper layer is in use)
        lower = tmp_path / "plain-lower"
        lower.mkdir()
        with (
            mounted(
                "overlay",
                tmp_path / "inuse",
                f"lowerdir={lower},upperdir={upper},workdir={stick.ldir / 'ovlwork'}",
                fstype="overlay",
            ),
        ):
            res = cli("refresh", stick.root, "--yes", "--workdir", tmp_path)
            assert_refused(res, ExitCode.IN_USE, "upper layer of a mounted overlay")
        before = stick_tree(stick)
        res = cli("refresh", stick.root, "--yes", "--workdir", tmp_path / "nowhere")
        assert_refused(res, ExitCode.USAGE, "workdir")
        # the workdir must hold the unpacked base grown by the upper, and the new image
        with small_fs(tmp_path / "small", 16 * MiB) as small:
            res = cli("refresh", stick.root, "--yes", "--workdir", small)
            assert_refused(res, ExitCode.NO_SPACE, "not enough room in the workdir")
            assert "the unpacked base with the upper layer applied" in res.stderr
        assert stick_tree(stick) == before
    # the stick as an image file, unmounted: the image is hashed whole
    img_sha = sha(stick.image)
    res = cli("refresh", stick.image, "--dry-run", "--workdir", tmp_path)
    assert res.returncode == 0, res.stderr
    assert sha(stick.image) == img_sha


def test_damaged_base_is_refused_with_exit_10(tmp_path: Path) -> None:
    """A base root filesystem e2fsck -p will not fix: exit 10, repair hint, no change."""
    tree = tmp_path / "stick-tree"
    (tree / "LiveOS" / OVERLAY / "home").mkdir(parents=True)
    (tree / "LiveOS" / OVERLAY / "home" / "f").write_bytes(b"x")
    (tree / "LiveOS" / "ovlwork").mkdir()
    lower = tmp_path / "lower-tree"
    make_lower(lower)
    sq = tmp_path / "sqtree"
    (sq / "LiveOS").mkdir(parents=True)
    rootfs = sq / "LiveOS" / "rootfs.img"
    with open(rootfs, "wb") as f:
        f.truncate(24 * MiB)
    sh("mkfs.ext4", "-q", "-F", "-b", "4096", "-d", lower, rootfs)
    # two files claiming one block (as tests/root/test_rebuild.py): preen stops on it
    blocks = sh("debugfs", "-R", "blocks /usr/share/base.txt", rootfs).split()
    sh("debugfs", "-w", "-R", f"set_inode_field /bin/tool block[0] {blocks[0]}", rootfs)
    sh("mksquashfs", sq, tree / "LiveOS" / "squashfs.img", "-noappend", "-quiet", "-no-progress")
    write_configs(tree)
    img = tmp_path / "stick.img"
    with open(img, "wb") as f:
        f.truncate(64 * MiB)
    sh("mkfs.ext4", "-q", "-F", "-m", "0", "-L", LABEL, "-U", UUID, "-d", tree, img)
    with mounted(img, tmp_path / "stick", "loop", "noatime") as root:
        before = raw_walk(root)
        res = cli("refresh", root, "--yes", "--workdir", tmp_path)
        assert_refused(res, ExitCode.CORRUPT, "damaged")
        assert "repair" in res.stderr
        assert raw_walk(root) == before
    assert not list(tmp_path.glob("liveos-refresh-*"))


#: the build's last point before the stick is touched, the staged pair, then every
#: step of the shared switch (its ovlwork/ moves happen inside the moving-* steps)
SWITCH_KILLS = ["refresh-merged", "refresh-staged", *REFRESH_POINTS]


def test_sigkill_then_rerun_or_rollback(tmp_path: Path) -> None:
    """After a kill the default entry boots a whole pair whose kernel view is the old or
    the new one; refresh again finishes (even points), rollback undoes (odd points)."""
    with ovl_stick(tmp_path, flat=False) as stick:
        live = stick.ldir
        truth = kernel_view(stick, tmp_path / "k0")
        old_base = sha(live / "squashfs.img")
        old_upper = upper_raw(stick, tmp_path / "u0")
        saved = tmp_path / "saved"
        sh("cp", "-a", live, saved)  # whiteouts, fifos and xattrs too
        configs = {p: p.read_text() for p in be.find_configs(stick.root)}
        for i, point in enumerate(SWITCH_KILLS):
            res = cli(
                "refresh",
                stick.root,
                "--yes",
                "--workdir",
                tmp_path,
                env={"LIVEOS_TEST_KILL_AT": point},
            )
            assert res.returncode == -9, (point, res.stderr)
            assert switch.state_problem(stick.files) is None, point
            check_default_pair(stick, tmp_path / f"a{i}", truth, old_base, old_upper)
            if i % 2:
                res = cli("rollback", stick.root, "--yes")
                if point == "refresh-merged":
                    assert res.returncode == ExitCode.BAD_TARGET, (point, res.stderr)
                else:
                    assert res.returncode == 0, (point, res.stderr)
                want_old = True
            else:
                res = cli("refresh", stick.root, "--yes", "--workdir", tmp_path)
                assert res.returncode == 0, (point, res.stderr)
                want_old = False
            assert not (live / switch.JOURNAL).exists(), point
            kind = check_default_pair(stick, tmp_path / f"b{i}", truth, old_base, old_upper)
            assert kind == ("old" if want_old else "new"), point
            # back to the first stick
            shutil.rmtree(live)
            sh("cp", "-a", saved, live)
            for p, text in configs.items():
                p.write_text(text)


def check_default_pair(
    stick: OStick,
    work: Path,
    truth: dict[str, object],
    old_base: str,
    old_upper: dict[str, tuple[object, ...]],
) -> str:
    """The pair the default entry boots: the old one (old base, old upper) or the new
    one (new base showing the kernel's view, empty upper); no other."""
    slot = be.default_slot(stick.files.configs()[0].read_text())
    assert slot is not None
    pair = stick.files.pair(slot)
    assert pair.work is not None and pair.work.is_dir(), pair
    if sha(pair.base) == old_base:
        assert raw_walk(pair.overlay) == old_upper
        return "old"
    assert raw_walk(pair.overlay) == {}
    with lower_of(pair.base, work, flat=False) as root:
        assert walk(root) == truth
    return "new"


def test_upper_bigger_than_the_root_filesystems_free_space(tmp_path: Path) -> None:
    """An OverlayFS upper layer is bounded by the stick, not by rootfs.img: the copy of
    rootfs.img grows to hold it."""
    big = os.urandom(512 * 1024) * 56  # 28 MiB, more than the 24 MiB rootfs.img holds
    with ovl_stick(tmp_path, flat=False) as stick:
        (stick.ldir / OVERLAY / "home" / "big.bin").write_bytes(big)
        res = cli("refresh", stick.root, "--yes", "--no-keep-previous", "--workdir", tmp_path)
        assert res.returncode == 0, res.stderr
        assert not (stick.ldir / "previous").exists()
        with lower_of(stick.ldir / "squashfs.img", tmp_path / "new", flat=False) as root:
            assert (root / "home" / "big.bin").read_bytes() == big
            assert (root / "opt/recreate/new.txt").exists()
            grown = (root.parent / "sq" / "LiveOS" / "rootfs.img").stat().st_size
        assert grown > 24 * MiB  # build_base() made it 24 MiB


def test_update_gives_the_new_release_an_empty_upper_then_rollback(tmp_path: Path) -> None:
    """update on an OverlayFS stick: the new base with a fresh upper; the old upper goes
    to previous/ with the old base and kernel, and rollback brings that pair back."""
    from tests.fixtures import isobuild

    kernel = tmp_path / "kernel-b"
    kernel.write_bytes(b"new kernel\n" * 1000)
    iso = isobuild.build_iso(tmp_path / "b.iso", "grub", kernel=kernel)
    with ovl_stick(tmp_path, flat=False) as stick:
        live = stick.ldir
        truth = kernel_view(stick, tmp_path / "k1")
        old_upper = upper_raw(stick, tmp_path / "u0")
        old_base = sha(live / "squashfs.img")

        res = cli("update", "--from", iso.path, stick.root, "--yes")
        assert res.returncode == 0, res.stderr
        assert sha(live / "squashfs.img") == iso.sha256["/LiveOS/squashfs.img"]
        assert sha(stick.root / "syslinux" / "vmlinuz") == sha(kernel)
        assert upper_raw(stick, tmp_path / "u1") == {} and (live / "ovlwork").is_dir()
        prev = live / "previous"
        assert sha(prev / "squashfs.img") == old_base and (prev / "ovlwork").is_dir()
        assert (prev / "vmlinuz").read_bytes() == b"kernel\n"
        assert upper_raw(stick, tmp_path / "u2", "previous") == old_upper
        assert switch.state_problem(stick.files) is None

        res = cli("rollback", stick.root, "--yes")
        assert res.returncode == 0, res.stderr
        assert sha(live / "squashfs.img") == old_base
        assert (stick.root / "syslinux" / "vmlinuz").read_bytes() == b"kernel\n"
        assert upper_raw(stick, tmp_path / "u3") == old_upper
        assert kernel_view(stick, tmp_path / "k2") == truth


def test_rollback_killed_at_each_step_then_rerun(tmp_path: Path) -> None:
    """rollback of a refreshed OverlayFS stick, SIGKILLed at each of its steps (the
    upper directories and their ovlwork/ move with their bases): every entry boots a
    whole pair, and a re-run ends on the old pair."""
    with ovl_stick(tmp_path, flat=False) as stick:
        live = stick.ldir
        truth = kernel_view(stick, tmp_path / "k0")
        old_base = sha(live / "squashfs.img")
        old_upper = upper_raw(stick, tmp_path / "u0")
        res = cli("refresh", stick.root, "--yes", "--workdir", tmp_path)
        assert res.returncode == 0, res.stderr
        done = tmp_path / "done"
        sh("cp", "-a", live, done)
        configs = {p: p.read_text() for p in be.find_configs(stick.root)}
        for i, point in enumerate(ROLLBACK_POINTS):
            res = cli("rollback", stick.root, "--yes", env={"LIVEOS_TEST_KILL_AT": point})
            assert res.returncode == -9, (point, res.stderr)
            assert switch.state_problem(stick.files) is None, point
            check_default_pair(stick, tmp_path / f"a{i}", truth, old_base, old_upper)
            res = cli("rollback", stick.root, "--yes")
            assert res.returncode == 0, (point, res.stderr)
            kind = check_default_pair(stick, tmp_path / f"b{i}", truth, old_base, old_upper)
            assert kind == "old", point
            assert (live / "previous" / "ovlwork").is_dir(), point
            shutil.rmtree(live)
            sh("cp", "-a", done, live)
            for p, text in configs.items():
                p.write_text(text)


def test_xattr_whiteouts_and_non_opaque_marks(tmp_path: Path) -> None:
    """The forms newer kernels (6.7+) write, which this host kernel does not: an empty
    file with trusted.overlay.whiteout deletes the lower entry; opaque=x marks a
    directory holding such whiteouts, not an opaque one."""
    from liveos_tools import ovlapply

    lower, upper = tmp_path / "lower", tmp_path / "upper"
    for rel in ("a", "d/keep", "d/gone"):
        (lower / rel).parent.mkdir(parents=True, exist_ok=True)
        (lower / rel).write_bytes(rel.encode())
    (upper / "d").mkdir(parents=True)
    os.setxattr(upper / "d", "trusted.overlay.opaque", b"x")
    (upper / "d" / "gone").write_bytes(b"")
    os.setxattr(upper / "d" / "gone", "trusted.overlay.whiteout", b"")
    (upper / "a").write_bytes(b"")  # an empty file that is NOT a whiteout
    counts = ovlapply.apply(upper, lower)
    assert sorted(str(p.relative_to(lower)) for p in lower.rglob("*")) == ["a", "d", "d/keep"]
    assert (lower / "a").read_bytes() == b"" and (lower / "d" / "keep").read_bytes() == b"d/keep"
    assert not [x for x in os.listxattr(lower / "d") if x.startswith("trusted.overlay.")]
    assert (counts.whiteouts, counts.opaque) == (1, 0)


def test_killed_while_the_copy_is_mounted_the_next_run_releases_it(tmp_path: Path) -> None:
    """SIGKILL while the scratch rootfs.img is loop-mounted: the stick is untouched, and
    the next refresh unmounts and detaches the leftovers before it sweeps them (the
    fixture fails the test on any leaked mount or loop device)."""
    with ovl_stick(tmp_path, flat=False) as stick:
        before = stick_tree(stick)
        env = {"LIVEOS_TEST_KILL_AT": "refresh-applied"}
        res = cli("refresh", stick.root, "--yes", "--workdir", tmp_path, env=env)
        assert res.returncode == -9, res.stderr
        scratch = str(tmp_path.resolve()) + "/liveos-refresh-"
        assert any(m.mountpoint.startswith(scratch) for m in mounts.mounts())
        assert stick_tree(stick) == before
        res = cli("refresh", stick.root, "--yes", "--workdir", tmp_path)
        assert res.returncode == 0, res.stderr
        assert not any(m.mountpoint.startswith(scratch) for m in mounts.mounts())
        assert len(list(tmp_path.glob("liveos-refresh-*"))) == 0
