"""Seclusion: what a remixed ISO leaves out of the stick's merged root.

A stick that one person used carries their machine identity, network passwords,
logs, shell histories and account changes; an ISO made from it goes to a whole
class. The default list below is editliveos's (docs/ARCHITECTURE.md F5) plus what it
misses: saved Wi-Fi/network secrets, SSH host keys, shell histories and private
keys under /home, Bluetooth pairings, browser password stores.

Rules are applied to the scratch copy of the merged root, mounted read-write on the
host, before its free blocks are zeroed (so the deleted data's blocks are zeroed
too). Paths are walked without following symbolic links: a link in the image that
points to / would otherwise lead to the host's own files.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import shutil
import stat
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from liveos_tools.errors import UsageError


class Action(Enum):
    REMOVE = "removed"  # the file, link or directory goes
    EMPTY = "emptied"  # a directory stays (owner, mode, SELinux label), its contents go
    TRUNCATE = "truncated"  # a regular file stays, 0 bytes (wtmp, machine-id)
    LOGS = "logs truncated"  # every file under a directory: rotated ones go, others 0 bytes
    ACCOUNT = "account reset"  # passwd/shadow/group/gshadow lines put back as the base has them
    AUTO = "left out"  # --seclude: a directory is emptied, anything else removed


@dataclass(frozen=True)
class Rule:
    pattern: str  # relative to the image root, shell globs per component ('home/*/.ssh')
    action: Action
    why: str


#: The live system's account (Fedora's livesys service creates it at boot) and root.
LIVE_USER = "liveuser"
ACCOUNT_FILES = ("etc/passwd", "etc/shadow", "etc/group", "etc/gshadow")

_HOME_SECRETS = (
    ".bash_history",
    ".zsh_history",
    ".history",
    ".sh_history",
    ".ash_history",
    ".python_history",
    ".lesshst",
    ".viminfo",
    ".wget-hsts",
    ".sqlite_history",
    ".mysql_history",
    ".psql_history",
    ".node_repl_history",
    ".local/share/fish/fish_history",
    ".local/share/recently-used.xbel",
    ".local/share/keyrings",
    ".gnupg",
    ".local/share/Trash",
    ".cache",
)
_FIREFOX_SECRETS = (
    "logins.json",
    "key4.db",
    "key3.db",
    "signons.sqlite",
    "cookies.sqlite",
    "formhistory.sqlite",
)

DEFAULT_RULES: tuple[Rule, ...] = (
    # machine identity
    Rule("etc/machine-id", Action.TRUNCATE, "machine identity: systemd makes a new one at boot"),
    Rule("etc/machine-info", Action.REMOVE, "machine identity"),
    Rule("var/lib/dbus/machine-id", Action.REMOVE, "machine identity"),
    Rule("etc/ssh/ssh_host_*", Action.REMOVE, "SSH host keys: sshd-keygen makes new ones"),
    # editliveos removes all of /var/lib/systemd; only what identifies the machine or
    # records its use goes here (the rest is package state, e.g. deb-systemd-helper's)
    Rule("var/lib/systemd/random-seed", Action.REMOVE, "machine identity (random seed)"),
    Rule("var/lib/systemd/credential.secret", Action.REMOVE, "this machine's credential key"),
    *(
        Rule(f"var/lib/systemd/{d}", Action.EMPTY, "this machine's history")
        for d in ("coredump", "timers", "pstore", "backlight", "rfkill")
    ),
    Rule("var/lib/random-seed", Action.REMOVE, "machine identity (random seed)"),
    Rule("etc/blkid", Action.EMPTY, "this machine's device cache"),
    Rule("etc/blkid.tab", Action.REMOVE, "this machine's device cache"),
    Rule("etc/X11/xorg.conf.d", Action.EMPTY, "this machine's display settings (editliveos)"),
    # network and other secrets
    Rule("etc/NetworkManager/system-connections", Action.EMPTY, "saved Wi-Fi and VPN passwords"),
    Rule("var/lib/NetworkManager", Action.EMPTY, "leases, NetworkManager's secret_key"),
    Rule("var/lib/iwd", Action.EMPTY, "saved Wi-Fi passwords (iwd)"),
    Rule("var/lib/dhclient", Action.EMPTY, "DHCP leases"),
    Rule("var/lib/bluetooth", Action.EMPTY, "Bluetooth pairing keys"),
    Rule("etc/resolv.conf", Action.TRUNCATE, "the last network's DNS servers"),
    Rule("var/lib/sss/db", Action.EMPTY, "cached logins (SSSD)"),
    Rule("var/lib/sss/mc", Action.EMPTY, "cached logins (SSSD)"),
    Rule("var/lib/AccountsService/users", Action.EMPTY, "per-user login settings"),
    Rule("var/lib/gdm", Action.EMPTY, "login manager state"),
    Rule("var/lib/upower", Action.EMPTY, "battery history"),
    # accounts
    Rule("etc/passwd", Action.ACCOUNT, f"{LIVE_USER}'s account as the base image has it"),
    Rule("etc/shadow", Action.ACCOUNT, f"{LIVE_USER}'s and root's passwords as the base has them"),
    Rule("etc/group", Action.ACCOUNT, f"{LIVE_USER}'s group as the base image has it"),
    Rule("etc/gshadow", Action.ACCOUNT, f"{LIVE_USER}'s group as the base image has it"),
    Rule("root", Action.EMPTY, "root's home: histories, keys, anything root saved"),
    # logs and spools
    Rule("var/log/journal", Action.EMPTY, "the journal"),
    Rule("var/log", Action.LOGS, "logs (files kept empty, rotated ones removed)"),
    Rule("var/spool/abrt", Action.EMPTY, "crash reports"),
    Rule("var/spool/mail", Action.EMPTY, "local mail"),
    Rule("var/spool/plymouth", Action.EMPTY, "boot logs"),
    Rule("var/tmp", Action.EMPTY, "temporary files"),
    Rule("tmp", Action.EMPTY, "temporary files"),
    # caches
    Rule("var/cache/dnf", Action.EMPTY, "package downloads"),
    Rule("var/cache/libdnf5", Action.EMPTY, "package downloads"),
    Rule("var/cache/yum", Action.EMPTY, "package downloads"),
    Rule("var/cache/PackageKit", Action.EMPTY, "package downloads"),
    Rule("var/cache/cups", Action.REMOVE, "printer cache (editliveos)"),
    # the users' homes: histories, private keys, keyrings, caches (the rest stays: the
    # settings and activities set up for the class are the point of a remix)
    *(
        Rule(f"home/*/{name}", Action.REMOVE, "a user's history, keys or cache")
        for name in _HOME_SECRETS
    ),
    Rule("home/*/.ssh", Action.EMPTY, "a user's SSH keys"),
    *(
        Rule(f"home/*/.mozilla/firefox/*/{name}", Action.REMOVE, "saved browser passwords, cookies")
        for name in _FIREFOX_SECRETS
    ),
)


@dataclass(frozen=True)
class LeftOut:
    """One thing the remix left out: a path in the image and what happened to it."""

    path: str  # '/etc/ssh/ssh_host_rsa_key'
    action: Action
    files: int  # files removed or truncated
    bytes: int  # their size before
    why: str

    def line(self) -> str:
        what = f"{self.files} file{'s' if self.files != 1 else ''}, {self.bytes} bytes"
        return f"{self.path}: {self.action.value} ({what}) - {self.why}"


def _clean(path: str, option: str) -> str:
    rel = os.path.normpath("/" + path.strip()).lstrip("/")
    if not rel or rel == "." or ".." in rel.split("/"):
        raise UsageError(
            f"{option} {path!r}: give a path inside the image, like /etc/foo",
            "paths are absolute in the live system's root",
        )
    return rel


def rules(seclude: Sequence[str] = (), keep: Sequence[str] = ()) -> tuple[list[Rule], list[str]]:
    """The rules to apply (defaults plus --seclude) and the kept paths (--keep)."""
    added = [Rule(_clean(p, "--seclude"), Action.AUTO, "--seclude") for p in seclude]
    return [*DEFAULT_RULES, *added], [_clean(p, "--keep") for p in keep]


def _kept(rel: str, keep: Sequence[str]) -> bool:
    return any(rel == k or rel.startswith(k + "/") or fnmatch.fnmatchcase(rel, k) for k in keep)


def _holds_kept(rel: str, keep: Sequence[str]) -> bool:
    """A kept path lies inside `rel`: empty it around that path instead of removing it."""
    return any(k.startswith(rel + "/") for k in keep)


def _is_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def expand(root: Path, pattern: str) -> Iterator[str]:
    """Relative paths under root matching `pattern`, never through a symbolic link."""
    parts = pattern.split("/")

    def walk(rel: str, i: int) -> Iterator[str]:
        here = root / rel if rel else root
        part = parts[i]
        if any(c in part for c in "*?["):
            if not _is_dir(here):
                return
            try:
                names = sorted(os.listdir(here))
            except OSError:
                return
            names = [n for n in names if fnmatch.fnmatchcase(n, part)]
        else:
            names = [part]
        for name in names:
            sub = f"{rel}/{name}" if rel else name
            if i == len(parts) - 1:
                if os.path.lexists(root / sub):
                    yield sub
            elif _is_dir(root / sub):
                yield from walk(sub, i + 1)

    yield from walk("", 0)


def _size(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    if stat.S_ISREG(st.st_mode):
        return 1, st.st_size
    if not stat.S_ISDIR(st.st_mode):
        return 1, 0
    files = size = 0
    for dirpath, dirs, names in os.walk(path):
        for n in names + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
            files += 1
            size += os.lstat(os.path.join(dirpath, n)).st_size
    return files, size


def _remove(path: Path) -> tuple[int, int]:
    counted = _size(path)
    if _is_dir(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)
    return counted


def _empty(root: Path, rel: str, keep: Sequence[str]) -> tuple[int, int]:
    files = size = 0
    for name in sorted(os.listdir(root / rel)):
        sub = f"{rel}/{name}"
        if _kept(sub, keep):
            continue
        if _holds_kept(sub, keep) and _is_dir(root / sub):
            f, s = _empty(root, sub, keep)
        else:
            f, s = _remove(root / sub)
        files, size = files + f, size + s
    return files, size


def _truncate(path: Path) -> tuple[int, int]:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):
            return 0, 0  # a symbolic link or a socket/FIFO: nothing of it is in the image
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
            return 0, 0
        os.ftruncate(fd, 0)
        return 1, st.st_size
    finally:
        os.close(fd)


#: Rotated logs (messages.1, secure-20240101, dnf.log.gz) go; the current ones stay, empty.
ROTATED = ("*.gz", "*.xz", "*.bz2", "*.zst", "*.old", "*.[0-9]", "*-" + "[0-9]" * 8)


def _logs(root: Path, rel: str, keep: Sequence[str]) -> tuple[int, int]:
    files = size = 0
    for dirpath, dirs, names in os.walk(root / rel):
        dirs.sort()
        for name in sorted(names):
            full = Path(dirpath) / name
            sub = str(full.relative_to(root))
            if _kept(sub, keep) or not stat.S_ISREG(os.lstat(full).st_mode):
                continue
            if any(fnmatch.fnmatchcase(name, p) for p in ROTATED):
                f, s = _remove(full)
            else:
                f, s = _truncate(full)
            files, size = files + f, size + s
    return files, size


def apply(
    root: Path,
    rule_list: Iterable[Rule],
    keep: Sequence[str] = (),
    *,
    base_root: Path | None = None,
) -> list[LeftOut]:
    """Apply the rules to the tree mounted at root; say what was left out.

    `base_root` is the base image's tree (read-only): account lines are put back as it
    has them. Without it, the live user's lines are removed, as editliveos does.
    """
    out: list[LeftOut] = []
    for rule in rule_list:
        for rel in list(expand(root, rule.pattern)):
            if _kept(rel, keep):
                continue
            path = root / rel
            files = size = 0
            action = rule.action
            if action is Action.AUTO:
                action = Action.EMPTY if _is_dir(path) else Action.REMOVE
            if action is Action.ACCOUNT:
                changed = reset_accounts(path, base_root / rel if base_root else None)
                if changed:
                    out.append(
                        LeftOut("/" + rel, action, 1, 0, f"{rule.why}: " + ", ".join(changed))
                    )
                continue
            if action is Action.EMPTY and _is_dir(path):
                files, size = _empty(root, rel, keep)
            elif action is Action.EMPTY:
                continue
            elif action is Action.REMOVE and _holds_kept(rel, keep) and _is_dir(path):
                files, size = _empty(root, rel, keep)
            elif action is Action.REMOVE:
                files, size = _remove(path)
            elif action is Action.TRUNCATE:
                files, size = _truncate(path)
            elif action is Action.LOGS and _is_dir(path):
                files, size = _logs(root, rel, keep)
            if files:
                out.append(LeftOut("/" + rel, action, files, size, rule.why))
    return out


# --- accounts ------------------------------------------------------------------------------


def _lines(path: Path | None) -> list[str]:
    if path is None:
        return []
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return []
        return path.read_text(errors="surrogateescape").splitlines()
    except OSError:
        return []


def account_names(file: str) -> tuple[str, ...]:
    """Whose lines of this file go back to the base's: the live user, and root's password."""
    return (LIVE_USER, "root") if file == "shadow" else (LIVE_USER,)


def reset_lines(
    current: list[str], base: list[str], names: Sequence[str]
) -> tuple[list[str], list[str]]:
    """`current` with each name's line replaced by the base's. A live user the base does
    not have is dropped (livesys creates it at boot); root's line is only ever replaced."""
    base_by = {ln.split(":", 1)[0]: ln for ln in base if ":" in ln}
    out: list[str] = []
    changed: list[str] = []
    for line in current:
        name = line.split(":", 1)[0]
        if name in names and ":" in line and (name == LIVE_USER or name in base_by):
            old = base_by.get(name)
            if old != line:
                changed.append(name if old is not None else f"{name} (removed)")
            if old is not None:
                out.append(old)
            continue
        out.append(line)
    return out, changed


def reset_accounts(path: Path, base: Path | None) -> list[str]:
    """Put the live user's (and in shadow, root's) line back as the base image has it."""
    if not stat.S_ISREG(os.lstat(path).st_mode):
        return []
    current = _lines(path)
    new, changed = reset_lines(current, _lines(base), account_names(path.name))
    if changed:
        st = os.lstat(path)
        tmp = path.with_name(path.name + ".remix-new")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", errors="surrogateescape") as f:
            f.write("\n".join(new) + "\n")
        os.chown(tmp, st.st_uid, st.st_gid)
        os.chmod(tmp, stat.S_IMODE(st.st_mode))
        os.replace(tmp, path)
    return changed


# --- mounting the scratch image --------------------------------------------------------------


@contextmanager
def mounted(image: Path, *, writable: bool) -> Iterator[Path]:
    """An ext4 image mounted on the host (loop), detached on exit even after a failure."""
    import tempfile

    from liveos_tools.tools import losetup
    from liveos_tools.tools import mount as mount_tool

    loop = losetup.attach(image, readonly=not writable)
    try:
        # a writable image's mount point goes beside it, in the remix's work directory
        where = Path(tempfile.mkdtemp(prefix="mnt-", dir=image.parent if writable else None))
        try:
            # nosuid/nodev/noexec: nothing in the image acts on the host while it is open
            opts = "rw,nosuid,nodev,noexec" if writable else "ro,noload,nosuid,nodev,noexec"
            mount_tool.mount(loop, where, fstype="ext4", options=opts)
            try:
                yield where
            finally:
                mount_tool.umount(where)
        finally:
            os.rmdir(where)
    finally:
        losetup.detach(loop)
