"""The boot configs on a stick's separate EFI system partition, for refresh/update/rollback.

The writer puts an ESP beside the LiveOS partition (msdos + ext4: p2 of type 0xef;
`--efi`: GPT p1 of type C12A7328-F81F-11D2-BA4B-00A0C93EC93B) and its own grub.cfg in
EFI/BOOT/ there, which finds the LiveOS partition by UUID and boots its files. UEFI
firmware boots that grub.cfg, not the one on the LiveOS partition, so the switch
(switch.py) must point its entries at the same pair as every other config.

The ESP is found as a sibling partition of the LiveOS filesystem's partition node
(sysfs), so only when TARGET is a disk, one of its partitions, or an image file with a
partition table (open_medium attaches it with its partitions scanned). A mounted
directory or a bare filesystem image has no findable ESP; the plan says so.

Access is through mtools on the ESP's node, never a mount: the host kernel of the tests
has no vfat, and a mount would make the ESP look in use to whoever else checks. A config
is replaced by writing `<name>.new`, syncing the device, then `mmove -D o` over the old
name (mtools writes the directory's changed sector in one write, then the FAT), and
syncing again; each step is idempotent, so the switch's re-run simply does it again.
Before the first change the config's text is saved on the LiveOS partition
(LiveOS/.liveos-esp/p<N>/<path>), once: it is the config as liveos-overlay found it.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from liveos_tools import bootentries as be
from liveos_tools import mounts
from liveos_tools.errors import InUseError, LiveOSError
from liveos_tools.media import ESP_PART_TYPES, Medium, Source
from liveos_tools.tools import mtools

TMP_SUFFIX = ".new"
BACKUP_DIR = ".liveos-esp"
#: where on an ESP a GRUB config that boots the stick can be (any grub.cfg, and these)
GRUB_NAMES = ("grub.cfg",)
GRUB_PATHS = tuple(p for p in be.CONFIG_PATHS if be.kind_of(p) is be.Kind.GRUB)


def sync_device(device: str) -> None:
    """Flush what mtools wrote through the node (for a loop device: into its file)."""
    fd = os.open(device, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class EspConfig:
    """One GRUB config on the ESP (bootentries.ConfigFile)."""

    device: str  # the ESP's partition node
    rel: str  # its path on the ESP: EFI/BOOT/grub.cfg
    backup: Path  # its text before liveos-overlay first changed it

    @property
    def name(self) -> str:
        return self.rel.rpartition("/")[2]

    def __str__(self) -> str:
        return f"{self.device}:/{self.rel}"

    def read_text(self) -> str:
        return mtools.read_text(self.device, 0, self.rel)

    def replace_text(self, text: str) -> bool:
        from liveos_tools.tasks.backup import kill_point

        old = self.read_text()
        if old == text:
            return False
        try:
            if not self.backup.exists():
                self.backup.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.backup.with_name(self.backup.name + be.NEW_SUFFIX)
                with open(tmp, "w") as f:
                    f.write(old)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.backup)
                be.fsync_dir(self.backup.parent)
            with tempfile.TemporaryDirectory(prefix="liveos-esp-") as scratch:
                src = Path(scratch) / self.name
                src.write_text(text)
                mtools.copy_in(self.device, 0, src, self.rel + TMP_SUFFIX)
            sync_device(self.device)
            kill_point("esp-written")
            mtools.move_over(self.device, 0, self.rel + TMP_SUFFIX, self.rel)
            sync_device(self.device)
        except OSError as exc:
            raise LiveOSError(
                f"cannot write the boot config {self}: {exc.strerror or exc}",
                "check that the stick is still plugged in; run the command again",
            ) from None
        return True


@dataclass(frozen=True)
class EspLookup:
    configs: tuple[EspConfig, ...]
    #: what the plan says about the ESP (found and rewritten, or not looked for)
    notes: tuple[str, ...]


def _sysfs(node: str) -> Path:
    return Path("/sys/class/block") / os.path.basename(os.path.realpath(node))


def esp_nodes(partition: str) -> list[str]:
    """The partition nodes beside `partition` on its disk whose type is an ESP."""
    from liveos_tools.tools import blkid

    me = _sysfs(partition)
    if not (me / "partition").exists():
        return []
    disk = me.resolve().parent
    found = []
    for sib in sorted(disk.iterdir()):
        if sib.name == me.name or not (sib / "partition").exists():
            continue
        node = f"/dev/{sib.name}"
        if not os.path.exists(node):
            continue
        info = blkid.probe(node)
        if info.get("PART_ENTRY_TYPE", "").lower() in ESP_PART_TYPES:
            found.append(node)
    return found


def refuse_in_use(node: str) -> None:
    st = os.stat(node)
    used = mounts.mounts_of_device((os.major(st.st_rdev), os.minor(st.st_rdev)))
    if used:
        raise InUseError(
            f"the stick's EFI system partition {node} is mounted at {used[0].mountpoint}",
            f"unmount it first (umount {used[0].mountpoint}): its grub.cfg is rewritten "
            "during the switch",
        )
    holders = _sysfs(node) / "holders"
    if holders.is_dir() and any(holders.iterdir()):
        raise InUseError(
            f"the stick's EFI system partition {node} is held by "
            f"{', '.join(p.name for p in holders.iterdir())}",
            "close what uses it (dmsetup remove ...), then try again",
        )


def find(medium: Medium) -> EspLookup:
    """The GRUB configs on the stick's ESP that boot a persistent LiveOS."""
    device = medium.volume.device if medium.volume else None
    if medium.source not in (Source.DEVICE, Source.IMAGE) or device is None or medium.root is None:
        return EspLookup(
            (),
            (
                "an EFI system partition is only looked for when TARGET is the stick's "
                "device or disk image: if the stick has one, its grub.cfg is not rewritten "
                "(UEFI boots keep the default names and get no 'Previous image' entry)",
            ),
        )
    nodes = esp_nodes(device)
    if not nodes:
        return EspLookup((), (f"no EFI system partition beside {device}",))
    configs: list[EspConfig] = []
    notes: list[str] = []
    ldir = medium.root / medium.livedir
    for node in nodes:
        refuse_in_use(node)
        number = _sysfs(node).joinpath("partition").read_text().strip()
        # an image's loop device is gone after the run: name the partition by the image
        shown = node if medium.source is Source.DEVICE else f"p{number} of {medium.target}"
        try:
            paths = mtools.listing(node, 0, "")
            found = [p for p in paths if _is_grub_config(p)]
            mine = [p for p in found if "rd.live.overlay=" in mtools.read_text(node, 0, p)]
        except LiveOSError as err:
            notes.append(f"the EFI system partition {shown} cannot be read ({err.message})")
            continue
        for rel in mine:
            configs.append(EspConfig(node, rel, ldir / BACKUP_DIR / f"p{number}" / rel))
        if mine:
            notes.append(
                f"the EFI system partition {shown}: "
                + ", ".join(mine)
                + " rewritten with the other boot configs at each switch step (written as "
                f"<name>{TMP_SUFFIX}, then renamed over it); the text before the first change "
                f"is kept in {medium.livedir}/{BACKUP_DIR}/p{number}/"
            )
        else:
            notes.append(f"the EFI system partition {shown} has no grub.cfg booting the stick")
    return EspLookup(tuple(configs), tuple(notes))


def _is_grub_config(rel: str) -> bool:
    low = rel.lower()
    return low.rpartition("/")[2] in GRUB_NAMES or low in (p.lower() for p in GRUB_PATHS)
