"""cryptsetup: LUKS containers in image files (format, open, close, resize, header backup).

Passphrases go to cryptsetup on stdin (`--key-file -`), never on a command line.
Opening needs device-mapper (dm-crypt); luksFormat, luksDump, isLuks,
luksHeaderBackup and `open --test-passphrase` work on a plain file without it.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from liveos_tools.errors import CorruptError, ExitCode, LiveOSError, ToolError
from liveos_tools.run import run

#: cryptsetup(8) RETURN CODES
EXIT_WRONG_PARAMETERS = 1
EXIT_NO_PERMISSION = 2  # a wrong passphrase
EXIT_OUT_OF_MEMORY = 3
EXIT_WRONG_DEVICE = 4
EXIT_BUSY = 5


class PassphraseError(LiveOSError):
    """The passphrase does not open any key slot."""

    code = ExitCode.BAD_TARGET


@dataclass(frozen=True)
class LuksInfo:
    version: int
    uuid: str
    #: where the encrypted data starts, in bytes from the start of the container.
    data_offset: int
    cipher: str | None
    #: the encryption sector size (LUKS2 may use 4096; LUKS1 is always 512).
    sector_size: int
    keyslots: int


_SECTOR = 512


def parse_dump(text: str) -> LuksInfo:
    """Parse `cryptsetup luksDump` of a LUKS1 or LUKS2 header."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    cipher: str | None
    try:
        version = int(fields["Version"])
        uuid = fields["UUID"]
        if version == 1:
            offset = int(fields["Payload offset"]) * _SECTOR
            cipher = f"{fields['Cipher name']}-{fields['Cipher mode']}"
            sector = _SECTOR
            slots = len(re.findall(r"^Key Slot \d+: ENABLED", text, re.M))
        else:
            m = re.search(r"^\s*offset:\s*(\d+) \[bytes\]", text, re.M)
            if m is None:
                raise KeyError("offset")
            offset = int(m.group(1))
            cipher = fields.get("cipher")
            sector = int(fields.get("sector", "512 [bytes]").split()[0])
            keys = text.partition("Keyslots:")[2].partition("Tokens:")[0]
            slots = len(re.findall(r"^\s+\d+: luks2", keys, re.M))
    except (KeyError, ValueError, IndexError) as exc:
        raise CorruptError(f"unrecognised cryptsetup luksDump output (missing {exc})") from None
    return LuksInfo(version, uuid, offset, cipher, sector, slots)


def dump(path: str | Path) -> LuksInfo:
    result = run(["cryptsetup", "luksDump", str(path)], check=False)
    if result.returncode != 0:
        raise CorruptError(
            f"{path}: the LUKS header does not parse ({_last(result.stderr) or 'no detail'})",
            "restore it from a header backup (cryptsetup luksHeaderRestore) if you have one",
        )
    return parse_dump(result.stdout)


def _last(text: str) -> str:
    lines = [s.strip() for s in text.splitlines() if s.strip()]
    return lines[-1] if lines else ""


def _fail(result_argv: Sequence[str], code: int, stderr: str, path: str | Path) -> LiveOSError:
    if code == EXIT_NO_PERMISSION:
        return PassphraseError(
            f"{path}: wrong passphrase (no key slot opens with it)",
            "check the passphrase (keyboard layout, caps lock) and try again",
        )
    return ToolError(result_argv, code, stderr)


def format_luks(path: str | Path, passphrase: bytes, *, luks_type: str = "luks2") -> None:
    argv = [
        "cryptsetup",
        "luksFormat",
        "--batch-mode",
        "--type",
        luks_type,
        # cryptsetup's own key derivation (argon2id, benchmarked on this machine);
        # nothing here may weaken it (tests put tests/support/fast-kdf first on PATH).
        "--key-file",
        "-",
        str(path),
    ]
    run(argv, input=passphrase)


def test_passphrase(path: str | Path, passphrase: bytes) -> None:
    """Raise PassphraseError unless the passphrase opens a key slot (needs no dm-crypt)."""
    argv = ["cryptsetup", "open", "--test-passphrase", "--key-file", "-", str(path)]
    result = run(argv, input=passphrase, check=False)
    if result.returncode != 0:
        raise _fail(argv, result.returncode, result.stderr, path)


class NoDmCryptError(LiveOSError):
    code = ExitCode.TOOL_MISSING


def require_dm_crypt() -> None:
    """Refuse early (before any change) on a kernel without device-mapper."""
    # Opening the control node (not just finding it) makes the kernel load dm_mod
    # where it is a module; ENODEV means there is no driver behind the node.
    try:
        os.close(os.open("/dev/mapper/control", os.O_RDWR))
    except PermissionError:
        raise LiveOSError(
            "opening a LUKS container needs root", "run the command with sudo"
        ) from None
    except OSError:
        raise NoDmCryptError(
            "opening a LUKS container needs device-mapper (dm-crypt), and this kernel has none",
            "load it (modprobe dm_crypt) or run on a system that has it",
        ) from None


def dm_node(name: str) -> str:
    """The block device node of the dm device `name`.

    /dev/mapper/NAME when it exists; without udev (rescue shells, test guests) it
    may not, and the kernel's /dev/dm-N (from sysfs) is used instead.
    """
    mapper = f"/dev/mapper/{name}"
    with contextlib.suppress(OSError):
        if stat.S_ISBLK(os.stat(mapper).st_mode):
            return mapper
    for entry in sorted(Path("/sys/block").glob("dm-*")):
        with contextlib.suppress(OSError):
            if (entry / "dm" / "name").read_text().strip() == name:
                node = f"/dev/{entry.name}"
                if stat.S_ISBLK(os.stat(node).st_mode):
                    return node
    raise LiveOSError(f"dm device {name} has no device node", "is devtmpfs mounted on /dev?")


def open_luks(path: str | Path, name: str, passphrase: bytes, *, readonly: bool = False) -> str:
    """Open the container as /dev/mapper/NAME; return its device node."""
    argv = ["cryptsetup", "open", "--type", "luks"]
    if readonly:
        argv.append("--readonly")
    argv += ["--key-file", "-", str(path), name]
    result = run(argv, input=passphrase, check=False)
    if result.returncode != 0:
        raise _fail(argv, result.returncode, result.stderr, path)
    return dm_node(name)


def close(name: str) -> None:
    run(["cryptsetup", "close", name])


def resize(name: str, passphrase: bytes, size_bytes: int | None = None) -> None:
    """Resize the open mapping NAME to `size_bytes` of data, or to fill its device."""
    argv = ["cryptsetup", "resize", "--key-file", "-"]
    if size_bytes is not None:
        argv += ["--size", str(size_bytes // _SECTOR)]
    run([*argv, name], input=passphrase)


def header_backup(path: str | Path, backup: str | Path) -> None:
    """Write the LUKS header (and key slots) to `backup`, which must not exist yet."""
    run(["cryptsetup", "luksHeaderBackup", str(path), "--header-backup-file", str(backup)])


def new_name(prefix: str = "liveos-home") -> str:
    return f"{prefix}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class Mapping:
    name: str
    node: str


@contextlib.contextmanager
def opened(path: str | Path, passphrase: bytes, *, readonly: bool = False) -> Iterator[Mapping]:
    """Open the container for the length of the block; close it even on failure."""
    name = new_name()
    node = open_luks(path, name, passphrase, readonly=readonly)
    try:
        yield Mapping(name, node)
    finally:
        close(name)
