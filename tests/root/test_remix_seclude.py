"""Seclusion on a real ext4 image mounted on the host: the planted secrets are gone, the
customisation stays, --keep and --seclude work, and links in the image never lead out."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from liveos_tools.remix import seclude
from liveos_tools.remix.seclude import Action

MiB = 1 << 20

SHADOW_BASE = "root:!locked::0:99999:7:::\nbin:*:19000:0:99999:7:::\n"
PASSWD_BASE = "root:x:0:0:root:/root:/bin/bash\nbin:x:1:1:bin:/bin:/sbin/nologin\n"

#: What a used stick's root holds: secrets (must go) and customisation (must stay).
SECRETS = {
    "etc/machine-id": "0123456789abcdef0123456789abcdef\n",
    "etc/ssh/ssh_host_ed25519_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nSECRET\n",
    "etc/ssh/ssh_host_ed25519_key.pub": "ssh-ed25519 AAAA host\n",
    "etc/NetworkManager/system-connections/School.nmconnection": (
        "[wifi-security]\nkey-mgmt=wpa-psk\npsk=TeacherWifiPass\n"
    ),
    "var/lib/NetworkManager/secret_key": "nm-secret",
    "var/lib/systemd/random-seed": "seed" * 128,
    "var/lib/bluetooth/AA:BB/info": "[LinkKey]\nKey=123\n",
    "var/log/journal/abc/system.journal": "J" * 5000,
    "var/log/messages-20240101": "old log",
    "root/.bash_history": "mysql -p hunter2\n",
    "home/liveuser/.bash_history": "ssh teacher@school\n",
    "home/liveuser/.ssh/id_ed25519": "PRIVATE",
    "home/liveuser/.cache/thumb.png": "x" * 3000,
    "home/liveuser/.mozilla/firefox/abc.default/logins.json": "{}",
    "var/cache/dnf/pkg.rpm": "rpm" * 1000,
    "tmp/scratch.txt": "tmp",
}
KEPT = {
    "etc/ssh/sshd_config": "PermitRootLogin no\n",
    "etc/NetworkManager/NetworkManager.conf": "[main]\n",
    "home/liveuser/Activities/Paint.activity/activity.info": "[Activity]\nname = Paint\n",
    "home/liveuser/.config/settings.ini": "lang=fr\n",
    "home/liveuser/.mozilla/firefox/abc.default/places.sqlite": "bookmarks",
    "usr/share/class/lesson1.txt": "lesson",
}
TRUNCATED = {"var/log/messages": "Jan 1 logged in\n", "var/log/wtmp": "w" * 384}


def _tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def _image(tmp: Path, name: str, files: dict[str, str], extra=None) -> Path:  # type: ignore[no-untyped-def]
    tree = tmp / f"{name}.tree"
    _tree(tree, files)
    if extra:
        extra(tree)
    img = tmp / f"{name}.img"
    with open(img, "wb") as f:
        f.truncate(32 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(img)], check=True)
    return img


def _read(img: Path, rel: str) -> bytes | None:
    out = subprocess.run(["debugfs", "-R", f"cat /{rel}", str(img)], capture_output=True)
    probe = subprocess.run(
        ["debugfs", "-R", f"stat /{rel}", str(img)], capture_output=True, text=True
    )
    if "File not found" in probe.stderr:
        return None
    return out.stdout


def _traps(tree: Path) -> None:
    # Links that point out of the image: following any of them would touch the host.
    host = Path(os.environ["REMIX_HOST_BAIT"])
    (tree / "home" / "evil").symlink_to(host)  # home/*/.bash_history through a link
    (tree / "var" / "lib" / "iwd").symlink_to(host)  # an EMPTY rule's directory is a link
    (tree / "etc" / "resolv.conf").symlink_to(host / ".bash_history")  # TRUNCATE a link
    (tree / "var" / "log" / "host.log").symlink_to(host / ".bash_history")


@pytest.fixture
def bait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    host = tmp_path / "host-bait"
    host.mkdir()
    (host / ".bash_history").write_text("the host's own history\n")
    (host / "keep.me").write_text("host file\n")
    monkeypatch.setenv("REMIX_HOST_BAIT", str(host))
    return host


def test_default_seclusion_on_a_mounted_image(tmp_path: Path, bait: Path) -> None:
    accounts = {
        "etc/passwd": PASSWD_BASE + "liveuser:x:1000:1000:Live:/home/liveuser:/bin/bash\n",
        "etc/shadow": SHADOW_BASE.replace("root:!locked:", "root:$6$teacherroot:")
        + "liveuser:$6$teacherpw:19000:0:99999:7:::\n",
        "etc/group": "root:x:0:\nwheel:x:10:liveuser\nliveuser:x:1000:\n",
    }
    img = _image(tmp_path, "merged", {**SECRETS, **KEPT, **TRUNCATED, **accounts}, _traps)
    base = _image(
        tmp_path,
        "base",
        {
            "etc/passwd": PASSWD_BASE,
            "etc/shadow": SHADOW_BASE,
            "etc/group": "root:x:0:\nwheel:x:10:\n",
        },
    )
    rule_list, keep = seclude.rules()
    with (
        seclude.mounted(base, writable=False) as base_root,
        seclude.mounted(img, writable=True) as root,
    ):
        assert root.parent == img.parent
        left = seclude.apply(root, rule_list, keep, base_root=base_root)
    report = {x.path: x for x in left}

    for rel in SECRETS:
        if rel in ("etc/machine-id",):
            continue
        assert _read(img, rel) is None, rel
    assert _read(img, "etc/machine-id") == b""  # kept as an empty file: systemd fills it
    for rel, text in KEPT.items():
        assert _read(img, rel) == text.encode(), rel
    for rel in TRUNCATED:
        assert _read(img, rel) == b"", rel
    # directories emptied, not removed (their owner and mode stay for the services)
    assert _read(img, "etc/NetworkManager/system-connections") is not None
    assert _read(img, "root") is not None
    # accounts: liveuser's lines go (livesys makes it again at boot), root's password is the
    # base's again; other lines (and liveuser's group memberships) are untouched
    assert _read(img, "etc/passwd") == PASSWD_BASE.encode()
    assert _read(img, "etc/shadow") == SHADOW_BASE.encode()
    assert _read(img, "etc/group") == b"root:x:0:\nwheel:x:10:liveuser\n"
    assert (
        "root (" not in report["/etc/shadow"].why
        and "liveuser (removed)" in report["/etc/shadow"].why
    )

    # the report names what went, with real sizes
    ssh = report["/etc/ssh/ssh_host_ed25519_key"]
    assert (ssh.action, ssh.files, ssh.bytes) == (Action.REMOVE, 1, 43)
    nm = report["/etc/NetworkManager/system-connections"]
    assert (nm.action, nm.files) == (Action.EMPTY, 1)
    assert report["/var/log"].action is Action.LOGS
    assert report["/var/log"].files == 3  # messages, wtmp truncated; the rotated one removed

    # the links were never followed: the host's files are as they were
    assert (bait / ".bash_history").read_text() == "the host's own history\n"
    assert (bait / "keep.me").read_text() == "host file\n"
    assert os.path.islink(tmp_path / "merged.tree" / "home" / "evil")
    assert "/home/evil/.bash_history" not in report
    assert "/var/lib/iwd" not in report and "/etc/resolv.conf" not in report

    # the filesystem is still clean after the changes
    fsck = subprocess.run(["e2fsck", "-fn", str(img)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_keep_and_seclude(tmp_path: Path) -> None:
    img = _image(tmp_path, "merged", {**SECRETS, **KEPT})
    rule_list, keep = seclude.rules(
        seclude=["/usr/share/class/lesson1.txt", "/home/*/.config"],
        keep=[
            "/etc/NetworkManager/system-connections",
            "/root/.bash_history",
            "/home/liveuser/.cache",
        ],
    )
    with seclude.mounted(img, writable=True) as root:
        left = seclude.apply(root, rule_list, keep)
    paths = {x.path for x in left}
    assert _read(img, "etc/NetworkManager/system-connections/School.nmconnection") is not None
    assert _read(img, "root/.bash_history") == b"mysql -p hunter2\n"  # kept inside an emptied dir
    assert _read(img, "home/liveuser/.cache/thumb.png") is not None
    assert _read(img, "usr/share/class/lesson1.txt") is None
    assert _read(img, "home/liveuser/.config/settings.ini") is None
    assert _read(img, "home/liveuser/.config") is not None  # a secluded directory is emptied
    assert {"/usr/share/class/lesson1.txt", "/home/liveuser/.config"} <= paths
    assert "/etc/NetworkManager/system-connections" not in paths
    assert _read(img, "etc/ssh/ssh_host_ed25519_key") is None  # the rest of the defaults ran
