"""The remix proof, on real dracut under qemu:

1. a stick written by liveos-iso-to-disk boots; in boot 1 its root writes a marker and
   plants secrets (a NetworkManager connection with a PSK, SSH host keys, shell histories);
2. `liveos-overlay remix` makes an ISO of it (the stick image's hash is unchanged) and
   checkisomd5 passes; the PSK's bytes are nowhere in the ISO's root image, not even in
   free blocks;
3. the ISO itself boots as a CD (`-cdrom`: SeaBIOS, El Torito, isolinux, dracut finding
   root=live:CDLABEL=...): the marker is there, every secret is gone;
4. the ISO written to a fresh stick by liveos-iso-to-disk boots the same way, on a fresh
   overlay.

The root's /sbin/init reports on the serial console and powers off; a boot is judged by
those lines under a timeout (a hang ends at the timeout).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from liveos_tools.remix import iso
from liveos_tools.run import run
from liveos_tools.writer.source import read_iso
from tests.boot.test_iso_boot import run_qemu
from tests.fixtures import isobuild

BOOT_TIMEOUT = 400
LABEL = "CLASS REMIX"
PSK = "TeacherWifiPass-7d1e"
HOST_KEY = "SECRET-HOST-KEY-5b2c"
#: INIT spells the secrets in two pieces, so their bytes are only in the files it writes.
_PSK_SH = f'"{PSK[:7]}""{PSK[7:]}"'
_KEY_SH = f'"{HOST_KEY[:7]}""{HOST_KEY[7:]}"'
SECRETS = (
    "/etc/NetworkManager/system-connections/School.nmconnection",
    "/etc/ssh/ssh_host_ed25519_key",
    "/etc/ssh/ssh_host_rsa_key",
    "/root/.bash_history",
    "/home/liveuser/.bash_history",
)
KERNEL_ARGS = "console=ttyS0 rd.emergency=poweroff rd.shell=0"

pytestmark = pytest.mark.skipif(
    not (isobuild.GUEST_CACHE / "kver").is_file()
    or shutil.which("dracut") is None
    or shutil.which("qemu-system-x86_64") is None
    or shutil.which("implantisomd5") is None,
    reason="needs the guest kernel, dracut-core/dracut-live, qemu and isomd5sum (scripts/setup)",
)

#: What booting from a CD needs on top of the fixture's drivers: the ATAPI CD-ROM
#: (ata_piix + libata + sr_mod + cdrom) and the ISO 9660 filesystem (isofs).
CD_DRIVERS = isobuild.DRACUT_DRIVERS + " libata sr_mod cdrom isofs"

INIT = f"""#!/bin/busybox sh
bb=/bin/busybox
psk={_PSK_SH}
key={_KEY_SH}
$bb mount -t proc proc /proc
# home.img on the medium (the stick, or the CD with --clone): write ($1) or read a file in it
home() {{
    img=/run/initramfs/live/LiveOS/home.img
    [ -f $img ] || {{ echo REMIX-HOME-NONE; return; }}
    $bb mkdir -p /mnt/home
    if [ -n "$1" ]; then opts=loop; else opts=loop,ro; fi
    $bb mount -t ext4 -o $opts $img /mnt/home || {{ echo REMIX-HOME-UNMOUNTABLE; return; }}
    if [ -n "$1" ]; then echo "$1" > /mnt/home/plan.txt; fi
    echo "REMIX-HOME $($bb cat /mnt/home/plan.txt)"
    $bb umount /mnt/home
}}
$bb mount -t sysfs sysfs /sys
echo "REMIX-ROOT-UP $($bb cat /proc/cmdline)"
if [ -f /var/remix-marker ]; then
    echo "REMIX-MARKER $($bb cat /var/remix-marker)"
    for f in {" ".join(SECRETS)}; do
        if [ -e "$f" ]; then echo "REMIX-SECRET-PRESENT $f"; else echo "REMIX-SECRET-ABSENT $f"; fi
    done
    if $bb grep -rqs "$psk" /etc /root /home /var; then echo REMIX-PSK-FOUND; fi
    echo "REMIX-LESSON $($bb cat /usr/share/class/lesson.txt)"
    home
    echo REMIX-REPORT-DONE
else
    echo "customised on boot 1" > /var/remix-marker
    $bb mkdir -p /usr/share/class /etc/NetworkManager/system-connections /etc/ssh /root \\
        /home/liveuser
    echo "lesson one" > /usr/share/class/lesson.txt
    printf '[wifi]\\nssid=School\\n[wifi-security]\\nkey-mgmt=wpa-psk\\npsk=%s\\n' "$psk" \\
        > /etc/NetworkManager/system-connections/School.nmconnection
    echo "$key" > /etc/ssh/ssh_host_ed25519_key
    echo "$key-rsa" > /etc/ssh/ssh_host_rsa_key
    echo "mysql -p $psk" > /root/.bash_history
    echo "nmcli dev wifi connect School password $psk" > /home/liveuser/.bash_history
    home "teacher's lesson plan"
    $bb sync
    echo REMIX-PLANTED
fi
$bb sync
$bb poweroff -f
"""


def cd_initramfs(monkeypatch: pytest.MonkeyPatch) -> Path:
    """isobuild's dracut dmsquash-live initramfs with CD support added (cached by its
    inputs, the drivers among them). dracut also takes in checkisomd5 (rd.live.check)
    when isomd5sum is installed."""
    monkeypatch.setattr(isobuild, "DRACUT_DRIVERS", CD_DRIVERS)
    return isobuild.dracut_initramfs()


def source_iso(work: Path, initrd: Path) -> Path:
    """A classic LiveOS ISO whose root runs INIT: the fixture's boot files around our own
    squashfs (assembled by the remix's own ISO code, as a distribution's ISO would be)."""
    fixture = isobuild.build_iso(work / "fixture.iso", "classic", initramfs=initrd)
    tree = work / "rootfs-tree"
    isobuild._rootfs_tree(tree)
    (tree / "sbin" / "init").write_text(INIT)
    (tree / "var" / "lib").mkdir(parents=True, exist_ok=True)
    sq = work / "squash-tree"
    (sq / "LiveOS").mkdir(parents=True)
    run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            "Anaconda",
            "-d",
            str(tree),
            str(sq / "LiveOS" / "rootfs.img"),
            "64M",
        ]
    )
    squash = work / "squashfs.img"
    run(
        ["mksquashfs", str(sq), str(squash), "-comp", "gzip", "-noappend", "-no-progress", "-quiet"]
    )
    (work / "stage-src").mkdir()
    layout = iso.stage(
        work / "stage-src",
        label="LIVE_TEST",
        squashfs=squash,
        boot=iso.boot_set(read_iso(fixture.path)),
    )
    out = work / "live.iso"
    iso.write_iso(layout, out)
    return out


def boot(console: Path, *drive: str) -> str:
    return run_qemu(console, *drive, timeout=BOOT_TIMEOUT)


def iso_to_disk(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "liveos_tools.cli.iso_to_disk",
            "--reset-mbr",
            "--overlay-size-mb",
            "64",
            "--timeout",
            "0",
            "--nomenu",
            "--yes",
            "--extra-kernel-args",
            KERNEL_ARGS,
            *map(str, args),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )


def _assert_remixed_root(console: str, where: str) -> None:
    assert "REMIX-REPORT-DONE" in console, f"{where}: " + console[-3000:]
    assert "REMIX-MARKER customised on boot 1" in console, where
    assert "REMIX-LESSON lesson one" in console, where
    assert "REMIX-HOME teacher's lesson plan" in console, where  # home.img went along
    for secret in SECRETS:
        assert f"REMIX-SECRET-ABSENT {secret}" in console, (where, secret)
    assert "REMIX-PSK-FOUND" not in console, where


def test_remix_boots_as_cd_and_from_a_stick_without_the_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if (reason := _no_root()) is not None:
        pytest.skip(reason)
    initrd = cd_initramfs(monkeypatch)
    src = source_iso(tmp_path, initrd)
    stick = tmp_path / "stick.img"
    res = iso_to_disk(
        "--format", "400M,ext4", "--home-size-mb", "16", "--unencrypted-home", src, stick
    )
    assert res.returncode == 0, res.stderr

    first = boot(tmp_path / "console1.txt", "-drive", f"file={stick},format=raw,if=virtio")
    assert "REMIX-PLANTED" in first, first[-3000:]
    assert "REMIX-HOME teacher's lesson plan" in first, first[-3000:]

    before = isobuild.sha256_file(stick)
    out = tmp_path / "remix.iso"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "liveos_tools.cli.main",
            "remix",
            str(stick),
            "-o",
            str(out),
            "--label",
            LABEL,
            "--clone",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr
    assert isobuild.sha256_file(stick) == before  # the stick was only read
    report = json.loads(res.stdout)
    left = {x["path"] for x in report["left_out"]}
    assert {
        "/etc/NetworkManager/system-connections",
        "/etc/ssh/ssh_host_ed25519_key",
        "/root",
        "/home/liveuser/.bash_history",
    } <= left, left
    assert "ETA" in res.stderr  # progress: bytes, rate, ETA
    assert run(["checkisomd5", str(out)], check=False).returncode == 0
    assert not list(tmp_path.glob(".remix.iso*"))  # no partial ISO, no work directory

    # The root image inside the ISO holds none of the secrets' bytes, not even in free blocks.
    inner = tmp_path / "inner"
    run(
        [
            "xorriso",
            "-osirrox",
            "on",
            "-indev",
            str(out),
            "-extract",
            "/LiveOS/squashfs.img",
            str(tmp_path / "new-squashfs.img"),
        ]
    )
    run(["unsquashfs", "-no-progress", "-d", str(inner), str(tmp_path / "new-squashfs.img")])
    raw = (inner / "LiveOS" / "rootfs.img").read_bytes()
    assert b"customised on boot 1" in raw
    assert PSK.encode() not in raw and HOST_KEY.encode() not in raw

    cd = boot(tmp_path / "console-cd.txt", "-cdrom", str(out))
    _assert_remixed_root(cd, "the ISO booted as a CD")
    assert "root=live:CDLABEL=CLASS_REMIX rd.live.image" in cd
    assert "rd.live.overlay" not in cd.split("REMIX-ROOT-UP", 1)[1].splitlines()[0]

    stick2 = tmp_path / "stick2.img"
    res = iso_to_disk("--format", "400M,ext4", "--copy-home", out, stick2)
    assert res.returncode == 0, res.stderr
    status = subprocess.run(
        [sys.executable, "-m", "liveos_tools.cli.main", "status", "--json", str(stick2)],
        capture_output=True,
        text=True,
    )
    assert json.loads(status.stdout)["state"] == "new", status.stdout  # a fresh overlay
    second = boot(tmp_path / "console2.txt", "-drive", f"file={stick2},format=raw,if=virtio")
    _assert_remixed_root(second, "a stick written from the ISO")


def _no_root() -> str | None:
    import os

    return None if os.geteuid() == 0 else "remix reads the stick image through loop mounts: root"
