"""`liveos-overlay remix` on real stick images on the host: the whole pipeline (merged
root, e2fsck, seclusion, free blocks zeroed, squashfs, ISO, md5), --clone/--include, and
every refusal (one error line, its exit code, no ISO, no work files, the stick unchanged).

The stick's overlay here is a new (all-zero) store, so the merged root is the base; the
"used stick" secrets are planted in the base image itself. A real overlay written by a
real kernel is the boot proof's (tests/boot/test_remix_boot.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from liveos_tools.tools import checkisomd5, xorriso
from tests.fixtures import isobuild
from tests.support.space_images import diff_store
from tests.support.sticks import ext4_image, sparse

MiB = 1 << 20
LABEL = "SOAS_CLASS"
UUID = "3f1b2c4d-5e6f-4a1b-9c2d-0e1f2a3b4c5d"
PSK = "psk=SchoolWifi-4412"
#: The base image, as the ISO the stick was written from has it.
BASE_FILES = {
    "etc/shadow": "root:!locked::0:99999:7:::\n",
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
    "etc/ssh/sshd_config": "PermitRootLogin no\n",
    "usr/share/class/lesson.txt": "lesson one\n",
}
#: What the teacher's sessions wrote through the overlay: secrets and customisation.
USED_FILES = {
    "etc/NetworkManager/system-connections/School.nmconnection": f"[wifi-security]\n{PSK}\n",
    "etc/ssh/ssh_host_rsa_key": "-----BEGIN PRIVATE KEY----- host-key-9931\n",
    "root/.profile": "export SECRET_TOKEN=root-token-5521\n",
    "home/liveuser/.bash_history": "history-of-liveuser\n",
    "home/liveuser/Activities/Paint.activity/activity.info": "[Activity]\nname = Paint\n",
    "etc/shadow": "root:$6$rootpw::0:99999:7:::\nliveuser:$6$teacher:19000:0:99999:7:::\n",
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nliveuser:x:1000:1000::/home/liveuser:/bin/sh\n",
}
#: Written and deleted again during the sessions: only free blocks hold it.
DELETED = "history-of-root-deleted-7730"


def _used_overlay(tmp: Path, base: Path, store: Path) -> None:
    """The store a kernel would have written for the sessions: the base's chunks that a
    real ext4 mount of a copy changed, laid out as dm-snap-persistent does."""
    changed = tmp / "changed.img"
    shutil.copyfile(base, changed)
    mnt = tmp / "mnt-used"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(changed), str(mnt)], check=True)
    try:
        for rel, text in USED_FILES.items():
            (mnt / rel).parent.mkdir(parents=True, exist_ok=True)
            (mnt / rel).write_text(text)
        (mnt / "root" / ".bash_history").write_text(DELETED * 100)
        os.sync()
        (mnt / "root" / ".bash_history").unlink()
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    diff_store(base, changed, store, size_bytes=16 * MiB)
    changed.unlink()
    mnt.rmdir()


def build_stick(
    tmp: Path,
    *,
    overlay: bytes = b"",
    home: bytes | None = None,
    extra: dict[str, str] | None = None,
) -> Path:
    """An ext4 stick image as liveos-iso-to-disk writes one (syslinux/, EFI/, images/,
    LiveOS/squashfs.img nested), with a used overlay (its header replaced by `overlay`)."""
    rootfs_tree = tmp / "rootfs-tree"
    for rel, text in BASE_FILES.items():
        (rootfs_tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (rootfs_tree / rel).write_text(text)
    (rootfs_tree / "root").mkdir()
    sq = tmp / "sq-tree"
    (sq / "LiveOS").mkdir(parents=True)
    rootfs = sparse(sq / "LiveOS" / "rootfs.img", 32 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(rootfs_tree), str(rootfs)], check=True)
    stick = tmp / "stick-tree"
    live = stick / "LiveOS"
    live.mkdir(parents=True)
    _used_overlay(tmp, rootfs, live / f"overlay-{LABEL}-{UUID}")
    subprocess.run(
        [
            "mksquashfs",
            str(sq),
            str(live / "squashfs.img"),
            "-comp",
            "gzip",
            "-noappend",
            "-quiet",
            "-no-progress",
        ],
        check=True,
    )
    if overlay:
        with open(live / f"overlay-{LABEL}-{UUID}", "r+b") as f:
            f.write(overlay)
    if home is not None:
        (live / "home.img").write_bytes(home)
    (stick / "syslinux").mkdir()
    (stick / "syslinux" / "vmlinuz").write_bytes(b"kernel" * 100)
    isobuild.tiny_initramfs(stick / "syslinux" / "initrd.img")
    (stick / "syslinux" / "extlinux.conf").write_text(
        "default linux\nlabel linux\n  kernel vmlinuz\n  append initrd=initrd.img "
        f"root=live:UUID={UUID} rootfstype=ext4 rw rd.live.image rd.live.overlay=UUID={UUID} "
        "quiet\n"
    )
    (stick / "EFI" / "BOOT").mkdir(parents=True)
    (stick / "EFI" / "BOOT" / "BOOTX64.EFI").write_bytes(b"MZ loader")
    (stick / "images").mkdir()
    efi = tmp / "efi-stage" / "EFI" / "BOOT"
    efi.mkdir(parents=True)
    (efi / "grub.cfg").write_text(
        "search --no-floppy --set=root -l 'OLD'\nmenuentry 'x' {\n"
        "\tlinux /x root=live:CDLABEL=OLD\n\tinitrd /y\n}\n"
    )
    subprocess.run(
        ["mkfs.fat", "-C", "-n", "ANACONDA", str(stick / "images" / "efiboot.img"), "1024"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            "mcopy",
            "-s",
            "-i",
            str(stick / "images" / "efiboot.img"),
            str(tmp / "efi-stage" / "EFI"),
            "::",
        ],
        check=True,
    )
    for rel, text in (extra or {}).items():
        (stick / rel).write_text(text)
    img = ext4_image(stick, tmp / "stick.img", label=LABEL, uuid=UUID)
    for d in (rootfs_tree, sq, stick, tmp / "efi-stage"):
        shutil.rmtree(d)
    return img


def remix(
    *args: str | Path, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "liveos_tools.cli.main", "remix", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _iso_extract(iso: Path, path: str, dest: Path) -> Path:
    subprocess.run(
        ["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", path, str(dest)],
        check=True,
        capture_output=True,
    )
    return dest


def _debugfs_cat(img: Path, rel: str) -> str | None:
    res = subprocess.run(["debugfs", "-R", f"cat /{rel}", str(img)], capture_output=True)
    stat = subprocess.run(
        ["debugfs", "-R", f"stat /{rel}", str(img)], capture_output=True, text=True
    )
    return None if "File not found" in stat.stderr else res.stdout.decode()


def _entries(img: Path, rel: str) -> list[str]:
    """Names in a directory of the image (`debugfs ls -p`: /inode/mode/uid/gid/name/size/)."""
    out = subprocess.run(
        ["debugfs", "-R", f"ls -p /{rel}", str(img)], capture_output=True, text=True, check=True
    ).stdout
    names = [ln.split("/")[5] for ln in out.splitlines() if ln.startswith("/")]
    return [n for n in names if n not in (".", "..")]


def _assert_refused(res: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.returncode == code, res.stderr
    assert len(errors) == 1 and text in errors[0], res.stderr
    assert "Traceback" not in res.stderr


def _leftovers(where: Path) -> list[str]:
    return sorted(p.name for p in where.iterdir() if ".remix-" in p.name or p.suffix == ".partial")


def test_remix_a_stick_into_an_iso(tmp_path: Path) -> None:
    stick = build_stick(tmp_path, extra={"class-notes.txt": "notes for the class\n"})
    before = isobuild.sha256_file(stick)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "class.iso"
    # what a SIGKILLed remix of the same name leaves: the next run clears it
    (out_dir / ".class.iso.remix-dead" / "liveos-rebuild-x").mkdir(parents=True)
    (out_dir / ".class.iso.k1ll3d.partial").write_bytes(b"half an ISO")
    res = remix(
        stick,
        "-o",
        out,
        "--json",
        "--keep",
        "/home/liveuser/.bash_history",
        "--seclude",
        "/usr/share/class",
        "--include",
        "class-notes.txt",
    )
    assert res.returncode == 0, res.stderr
    assert isobuild.sha256_file(stick) == before  # the stick was only read
    assert _leftovers(out_dir) == [] and sorted(p.name for p in out_dir.iterdir()) == ["class.iso"]
    assert "remove what an interrupted remix of the same name left" in res.stderr
    report = json.loads(res.stdout)
    assert report["label"] == LABEL and report["size_bytes"] == out.stat().st_size
    left = {x["path"]: x for x in report["left_out"]}
    assert set(left) == {
        "/etc/NetworkManager/system-connections",
        "/etc/ssh/ssh_host_rsa_key",
        "/root",
        "/etc/shadow",
        "/etc/passwd",
        "/usr/share/class",
    }, left
    assert left["/etc/shadow"]["why"].endswith(": root, liveuser (removed)")
    assert "ETA" in res.stderr  # progress with bytes, rate and ETA

    assert checkisomd5.check(out) == "PASS"
    assert checkisomd5.implanted(out) == report["md5"]
    assert [e.platform for e in xorriso.el_torito(out)] == ["BIOS", "UEFI"]
    assert out.read_bytes()[510:512] == b"\x55\xaa"
    assert (
        _iso_extract(out, "/class-notes.txt", tmp_path / "notes").read_text()
        == "notes for the class\n"
    )
    cfg = _iso_extract(out, "/isolinux/isolinux.cfg", tmp_path / "isolinux.cfg").read_text()
    assert f"root=live:CDLABEL={LABEL} rd.live.image quiet" in cfg and "overlay" not in cfg

    squash = _iso_extract(out, "/LiveOS/squashfs.img", tmp_path / "squashfs.img")
    subprocess.run(
        ["unsquashfs", "-no-progress", "-d", str(tmp_path / "sq"), str(squash)],
        check=True,
        capture_output=True,
    )
    rootfs = tmp_path / "sq" / "LiveOS" / "rootfs.img"
    for rel in (
        "etc/NetworkManager/system-connections/School.nmconnection",
        "etc/ssh/ssh_host_rsa_key",
        "usr/share/class/lesson.txt",
    ):
        assert _debugfs_cat(rootfs, rel) is None, rel
    assert _entries(rootfs, "etc/NetworkManager/system-connections") == []  # kept, empty
    assert _debugfs_cat(rootfs, "home/liveuser/.bash_history") == "history-of-liveuser\n"
    assert _debugfs_cat(rootfs, "home/liveuser/Activities/Paint.activity/activity.info")
    assert _debugfs_cat(rootfs, "etc/shadow") == "root:!locked::0:99999:7:::\n"
    assert _debugfs_cat(rootfs, "etc/passwd") == "root:x:0:0:root:/root:/bin/sh\n"
    assert _entries(rootfs, "root") == []
    raw = rootfs.read_bytes()
    for secret in (PSK, "host-key-9931", "root-token-5521", DELETED, "$6$teacher", "$6$rootpw"):
        assert secret.encode() not in raw, secret  # not in a file, not in a free block
    # nor their names: not in directory blocks' slack, not in the old journal's copies
    for name in ("School.nmconnection", "ssh_host_rsa_key", ".profile"):
        assert name.encode() not in raw, name
    features = subprocess.run(
        ["dumpe2fs", "-h", str(rootfs)], capture_output=True, text=True
    ).stdout
    assert "has_journal" in features  # a new, empty one
    fsck = subprocess.run(["e2fsck", "-fn", str(rootfs)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout


def test_clone_puts_home_img_into_the_iso_and_warns_for_luks(tmp_path: Path) -> None:
    home = b"LUKS\xba\xbe\x00\x02" + os.urandom(4096)
    stick = build_stick(tmp_path, home=home)
    out = tmp_path / "clone.iso"
    res = remix(stick, "-o", out, "--clone", "--no-seclude")
    assert res.returncode == 0, res.stderr
    assert "every copy" in res.stderr and "same passphrase" in res.stderr
    assert _iso_extract(out, "/LiveOS/home.img", tmp_path / "home.img").read_bytes() == home
    assert "left out of the ISO: nothing" in res.stdout


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    stick = build_stick(tmp_path)
    before = isobuild.sha256_file(stick)
    res = remix(stick, "-o", tmp_path / "x.iso", "--dry-run", "--label", "A" * 32)
    assert res.returncode == 0, res.stderr
    assert "write the ISO" in res.stderr and "leave out private data" in res.stderr
    assert not (tmp_path / "x.iso").exists() and _leftovers(tmp_path) == []
    assert isobuild.sha256_file(stick) == before


def test_refusals(tmp_path: Path) -> None:
    stick = build_stick(tmp_path)
    before = isobuild.sha256_file(stick)
    out = tmp_path / "new.iso"

    _assert_refused(remix(stick, "-o", out, "--label", "A" * 33), 2, "at most 32")

    # output on the stick being remixed (the stick mounted by the user)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    loop = subprocess.run(
        ["losetup", "--find", "--show", "--read-only", str(stick)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        subprocess.run(["mount", "-o", "ro,noload", loop, str(mnt)], check=True)
        try:
            _assert_refused(remix(mnt, "-o", mnt / "new.iso"), 2, "is on the stick being remixed")
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)

    # not enough room for the output
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], check=True)
    try:
        res = remix(stick, "-o", small / "new.iso")
        _assert_refused(res, 6, "not enough room in")
        assert "free" in res.stderr and "MiB" in res.stderr
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)

    # a missing program names its Debian package
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in (
        "losetup",
        "mount",
        "umount",
        "blkid",
        "unsquashfs",
        "mksquashfs",
        "e2fsck",
        "implantisomd5",
        "dumpe2fs",
        "partx",
        "mcopy",
        "mdir",
    ):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    res = remix(stick, "-o", out, env={**os.environ, "PATH": str(bin_dir)})
    _assert_refused(res, 7, "xorriso is not installed")
    assert "apt-get install xorriso" in res.stderr

    # not a LiveOS
    plain = tmp_path / "plain-tree"
    (plain / "docs").mkdir(parents=True)
    _assert_refused(
        remix(ext4_image(plain, tmp_path / "plain.img", label="X", uuid=UUID), "-o", out),
        4,
        "no LiveOS",
    )

    assert not out.exists() and _leftovers(tmp_path) == []
    assert isobuild.sha256_file(stick) == before


def test_an_invalid_overlay_is_refused(tmp_path: Path) -> None:
    # the header of a store the kernel invalidated: SnAp, valid 0, version 1, chunk 8
    stick = build_stick(
        tmp_path,
        overlay=b"SnAp"
        + (0).to_bytes(4, "little")
        + (1).to_bytes(4, "little")
        + (8).to_bytes(4, "little"),
    )
    res = remix(stick, "-o", tmp_path / "new.iso")
    _assert_refused(res, 10, "invalid")
    assert "repair" in res.stderr
    assert _leftovers(tmp_path) == [] and not (tmp_path / "new.iso").exists()


SLOW_XORRISO = """#!/bin/sh
# writes the start of its -o output, then hangs: the user presses Ctrl-C meanwhile
while [ $# -gt 0 ]; do [ "$1" = "-o" ] && out=$2; shift; done
head -c 1048576 /dev/zero > "$out"
exec sleep 120
"""


def test_ctrl_c_leaves_no_partial_iso(tmp_path: Path) -> None:
    stick = build_stick(tmp_path)
    bin_dir = tmp_path / "slow-bin"
    bin_dir.mkdir()
    (bin_dir / "xorriso").write_text(SLOW_XORRISO)
    (bin_dir / "xorriso").chmod(0o755)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "liveos_tools.cli.main",
            "remix",
            str(stick),
            "-o",
            str(out_dir / "new.iso"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not any(p.suffix == ".partial" and p.stat().st_size for p in out_dir.iterdir()):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the ISO step never started"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C on the terminal does
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 9, err
    assert "interrupted" in err and "no ISO was written" in err
    assert list(out_dir.iterdir()) == []


def test_base_iso_gives_the_boot_files_and_the_label(tmp_path: Path) -> None:
    stick = build_stick(tmp_path)
    base = isobuild.build_iso(tmp_path / "original.iso", "classic")
    out = tmp_path / "based.iso"
    res = remix(stick, "-o", out, "--base-iso", base.path)
    assert res.returncode == 0, res.stderr
    assert "boot files from" in res.stderr and "original.iso" in res.stderr
    assert "label 'LIVE_TEST'" in res.stdout  # the base ISO's 'LIVE TEST', spaces made '_'
    kernel = _iso_extract(out, "/images/pxeboot/vmlinuz", tmp_path / "vmlinuz").read_bytes()
    assert isobuild.sha256_file(tmp_path / "vmlinuz") == base.sha256["/isolinux/vmlinuz"]
    assert kernel != b"kernel" * 100  # not the stick's
