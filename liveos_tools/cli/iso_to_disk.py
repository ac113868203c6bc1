"""`liveos-iso-to-disk [options] SOURCE TARGET`: livecd-iso-to-disk's command line.

Top-level imports stay light (argparse only): the work is in liveos_tools.tasks.write.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

#: Options of livecd-iso-to-disk that no longer make sense, and what happens instead.
OBSOLETE = {
    "nomac": "no Mac (HFS+) partition is ever made: there is nothing to put in one",
    "xo": "--xo: OLPC XO boot files are not written; the stick boots on PCs",
    "xo_no_home": "--xo-no-home: OLPC XO support was dropped; ignored",
    "compress": "--compress: the live image is copied as the ISO has it (squashfs)",
    "multi": "--multi: use --livedir DIR to keep several images on one stick",
    "updates": "--updates: not copied (anaconda updates images are for installers)",
    "ks": "--ks: not copied (kickstart files are for installers)",
    "totaltimeout": "--totaltimeout: syslinux's menu timeout (--timeout) is used instead",
}


BLOCK_SIZES = (1024, 2048, 4096)
#: --format's filesystem names, as livecd-iso-to-disk takes them; msdos and fat are FAT
FORMAT_TYPES = ("vfat", "ext4", "msdos", "ext2", "ext3", "btrfs", "fat", "fat32")
FAT_NAMES = ("vfat", "msdos", "fat", "fat32")
DEFAULT_FORMAT_TYPE = "ext4"  # the reference's default


def _format_spec(text: str) -> tuple[int, str | None, int | None]:
    """--format's value: `[SIZE][,FSTYPE[,BLKSZ]]`, or a bare `FSTYPE[,BLKSZ]`."""
    from liveos_tools.errors import UsageError

    first = text.split(",", 1)[0]
    if first and not first[0].isdigit():
        text = "," + text  # a bare filesystem name: no size
    size, fstype, blksz = _size_spec(text)
    if fstype is not None and fstype.lower() not in FORMAT_TYPES:
        raise UsageError(
            f"--format {text.lstrip(',')}: {fstype!r} is not a filesystem it makes",
            "use vfat, ext4, msdos, ext2 or ext3 (btrfs: see the docs)",
        )
    if fstype is not None and fstype.lower() == "btrfs":
        raise UsageError(
            "--format btrfs: not supported (the writer mounts the stick's "
            "filesystem to fill it and this host kernel may lack btrfs; a FAT "
            "or ext4 stick boots the same LiveOS)",
            "use --format ext4 or vfat",
        )
    return size, fstype.lower() if fstype else None, blksz


def _size_spec(text: str) -> tuple[int, str | None, int | None]:
    """`N[,fstype[,blksz]]` with N in MiB (a unit may be given)."""
    from liveos_tools.errors import UsageError
    from liveos_tools.units import parse_size

    parts = text.split(",")
    if len(parts) > 3:
        raise UsageError(f"{text!r}: too many fields", "the form is N[,FSTYPE[,BLKSZ]]")
    size = parse_size(parts[0]) if parts[0] else 0
    fstype = parts[1] if len(parts) > 1 and parts[1] else None
    blksz = None
    if len(parts) > 2 and parts[2]:
        if not parts[2].isdigit() or int(parts[2]) not in BLOCK_SIZES:
            raise UsageError(
                f"{text!r}: block size {parts[2]!r} is not one of "
                f"{', '.join(map(str, BLOCK_SIZES))}",
                "ext filesystems take 1024, 2048 or 4096 bytes per block",
            )
        blksz = int(parts[2])
    return size, fstype, blksz


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="liveos-iso-to-disk",
        description="Write a LiveOS image to a USB stick (or a disk image) with persistent "
        "storage. A replacement for livecd-iso-to-disk with the same options.",
        epilog="SOURCE: an .iso file, a block device, a directory, or `live` (the running "
        "medium). TARGET: a partition (/dev/sdX1), a whole disk with --format, or a disk "
        "image file (created by --format SIZE when missing). Exit codes: 0 ok, 2 usage, "
        "4 bad source/target, 5 in use (mounted, the system disk), 6 no space / FAT limit, "
        "7 tool missing, 8 a tool failed, 9 aborted, 10 verification failed.",
    )
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("target", metavar="TARGET", nargs="?")
    p.add_argument("--debug", action="store_true", help="show commands run and tracebacks")
    g = p.add_argument_group("targets and safety")
    g.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="TARGET",
        dest="targets",
        help="another target; repeat to write many sticks in parallel",
    )
    g.add_argument("--dry-run", action="store_true", help="print the whole plan, change nothing")
    g.add_argument("-y", "--yes", action="store_true", help="do not ask before --format")
    g.add_argument(
        "--force",
        action="store_true",
        help="write a disk that is not removable (never the system disk)",
    )
    g.add_argument(
        "--noverify",
        action="store_true",
        help="skip checking the ISO's implanted md5 before writing, and the "
        "read-back verification after",
    )
    g.add_argument(
        "--verify-hash",
        choices=("xxh3", "crc32", "sha256"),
        default="xxh3",
        help="checksum of the verification, per 16 MiB segment (default xxh3: about "
        "0.15 s of CPU a GiB; crc32 about 1.5 s, sha256 about 4 s)",
    )
    g.add_argument(
        "--serial",
        action="store_true",
        help="write several targets one after another, not in parallel",
    )
    g = p.add_argument_group("partitioning and filesystems")
    g.add_argument(
        "--format",
        nargs="?",
        const="",
        default=None,
        metavar="[SIZE][,FS[,BLKSZ]]",
        help="partition and format the whole disk: FS is ext4 (the default, as "
        "livecd-iso-to-disk), vfat, msdos (FAT), ext3 or ext2; a bare FS works too "
        "(--format vfat). SIZE: the LiveOS partition's size (the rest of the disk stays "
        "free), or the size of a new disk image file",
    )
    g.add_argument(
        "--reset-mbr", "--resetmbr", action="store_true", help="write syslinux's MBR boot code"
    )
    g.add_argument(
        "--efi",
        "--mactel",
        action="store_true",
        help="GPT with an EFI system partition, plus GRUB's EFI config",
    )
    g.add_argument(
        "--msdos",
        action="store_true",
        help="a FAT (msdos) filesystem, as livecd-iso-to-disk's --msdos",
    )
    g.add_argument(
        "--msdos-table",
        action="store_true",
        help="an msdos partition table even with --efi (was --msdos in 0.1)",
    )
    g.add_argument("--noesp", action="store_true", help="no separate EFI system partition")
    g.add_argument("--nomac", action="store_true", help="(accepted; no Mac partition is made)")
    g.add_argument("--label", help="filesystem label (spaces become _)")
    g = p.add_argument_group("what is copied")
    g.add_argument(
        "--skipcopy",
        "--reconfig",
        action="store_true",
        dest="skipcopy",
        help="do not copy the live image; only rewrite boot files and persistence",
    )
    g.add_argument(
        "--livedir",
        "--multi",
        default="LiveOS",
        dest="livedir",
        metavar="DIR",
        help="directory for the live image (rd.live.dir)",
    )
    g.add_argument(
        "--skipcompress",
        action="store_true",
        help="unpack rootfs.img from the squashfs onto the stick",
    )
    g.add_argument("--compress", action="store_true", help="(accepted; the default)")
    g.add_argument("--updates", metavar="IMG", help="(accepted; not copied)")
    g.add_argument("--ks", metavar="FILE", help="(accepted; not copied)")
    g.add_argument("--xo", action="store_true", help="(accepted; ignored)")
    g.add_argument("--xo-no-home", action="store_true", help="(accepted; ignored)")
    g = p.add_argument_group("persistence")
    g.add_argument(
        "--overlay-size-mb",
        metavar="N[,FS[,BLKSZ]]",
        help="persistent overlay of N MiB (preallocated overlay-<LABEL>-<UUID>)",
    )
    g.add_argument("--no-overlay", action="store_true", help="no persistent overlay")
    g.add_argument(
        "--overlayfs",
        nargs="?",
        const="persist",
        choices=("persist", "temp"),
        help="OverlayFS persistence (a directory on ext4, an image on vfat); `temp` keeps nothing",
    )
    g.add_argument("--reset-overlay", action="store_true", help="start with an empty overlay")
    g.add_argument(
        "--copy-overlay",
        action="store_true",
        help="copy the source's overlay (SOURCE live or a stick)",
    )
    g.add_argument("--home-size-mb", metavar="N[,FS[,BLKSZ]]", help="make home.img of N MiB")
    g.add_argument(
        "--copy-home",
        action="store_true",
        help="copy the source's LiveOS/home.img as it is (verified, mode 0600): a stick's, "
        "or the one an ISO made by `liveos-overlay remix --clone` carries; a LUKS one keeps "
        "its passphrase on every stick",
    )
    g.add_argument("--delete-home", action="store_true", help="replace an existing home.img")
    g.add_argument("--crypted-home", action="store_true", help="LUKS home.img (the default)")
    g.add_argument("--unencrypted-home", action="store_true", help="plain ext4 home.img")
    g.add_argument("--passphrase-file", metavar="FILE", help="passphrase for a LUKS home.img")
    g.add_argument("--swap-size-mb", metavar="N", help="make swap.img of N MiB")
    g = p.add_argument_group("boot")
    g.add_argument("--extra-kernel-args", default="", metavar="ARGS", help="more kernel arguments")
    g.add_argument(
        "--timeout",
        type=int,
        default=None,
        metavar="SECONDS",
        help="boot menu timeout (0: boot at once, -1: wait; default: the ISO's own)",
    )
    g.add_argument("--totaltimeout", type=int, metavar="SECONDS", help="(accepted; see --timeout)")
    g.add_argument("--nobootmsg", action="store_true", help="no boot message")
    g.add_argument("--nomenu", action="store_true", help="no boot menu")
    return p


def options_from_args(args: argparse.Namespace) -> Any:
    from liveos_tools.errors import UsageError
    from liveos_tools.writer.bootcfg import Persistence
    from liveos_tools.writer.stick import WriteOptions

    o = WriteOptions(livedir=args.livedir.strip("/") or "LiveOS")
    notes = o.notes
    for key, note in OBSOLETE.items():
        if getattr(args, key, None):
            notes.append(note)
    if args.format is not None:
        o.format = True
        size, fstype, blksz = _format_spec(args.format) if args.format else (0, None, None)
        o.format_size = size or None
        if args.msdos:
            if fstype not in (None, *FAT_NAMES):
                raise UsageError(
                    f"--msdos asks for a FAT filesystem, --format for {fstype}", "drop one of them"
                )
            fstype = "msdos"
        fstype = fstype or DEFAULT_FORMAT_TYPE
        o.fstype = "vfat" if fstype in FAT_NAMES else fstype
        o.blocksize = blksz
        if blksz and o.fstype == "vfat":
            notes.append(
                "--format SIZE,vfat,BLKSZ: BLKSZ applies to ext filesystems; "
                "mkfs.fat chooses the FAT cluster size: ignored"
            )
    o.reset_mbr, o.efi, o.noesp = args.reset_mbr, args.efi, args.noesp
    o.msdos_table = args.msdos_table
    o.noverify, o.skipcopy, o.force, o.label = args.noverify, args.skipcopy, args.force, args.label
    o.verify_hash = args.verify_hash
    o.skipcompress = args.skipcompress
    if args.overlay_size_mb:
        o.overlay_size, o.overlay_fstype, o.overlay_blocksize = _size_spec(args.overlay_size_mb)
        if o.overlay_fstype not in (None, "ext4", "ext3", "ext2"):
            raise UsageError(
                f"--overlay-size-mb: an OverlayFS overlay image cannot be {o.overlay_fstype!r}",
                "use ext4, ext3 or ext2",
            )
    if args.overlayfs == "temp":
        o.overlay = Persistence.OVERLAYFS_TEMP
    elif args.overlayfs:
        o.overlay = Persistence.OVERLAYFS
    if args.no_overlay:
        o.overlay, o.overlay_size = Persistence.NONE, 0
    o.reset_overlay, o.copy_overlay = args.reset_overlay, args.copy_overlay
    o.copy_home = args.copy_home
    if args.home_size_mb:
        size, fstype, o.home_blocksize = _size_spec(args.home_size_mb)
        o.home_size, o.home_fstype = size, fstype or "ext4"
    o.delete_home = args.delete_home
    if args.crypted_home and args.unencrypted_home:
        raise UsageError(
            "--crypted-home and --unencrypted-home contradict each other", "give one of them"
        )
    o.encrypt_home = not args.unencrypted_home
    if o.home_size and o.encrypt_home and not o.copy_home:
        if args.passphrase_file:
            try:
                with open(args.passphrase_file, "rb") as f:
                    o.passphrase = f.read().rstrip(b"\n")
            except OSError as exc:
                raise UsageError(f"{args.passphrase_file}: {exc.strerror}") from None
        elif sys.stdin.isatty():
            import getpass

            o.passphrase = getpass.getpass("Passphrase for home.img: ").encode()
        else:
            raise UsageError(
                "an encrypted home.img needs a passphrase",
                "give --passphrase-file FILE, or --unencrypted-home",
            )
    if args.swap_size_mb:
        o.swap_size = _size_spec(args.swap_size_mb)[0]
    o.extra_args = tuple(args.extra_kernel_args.split())
    o.timeout, o.nomenu, o.nobootmsg = args.timeout, args.nomenu, args.nobootmsg
    return o


def run(args: argparse.Namespace) -> int:
    from liveos_tools.cli.common import confirm, show_plan
    from liveos_tools.errors import ExitCode, UsageError
    from liveos_tools.tasks import write

    targets = ([args.target] if args.target else []) + list(args.target_more)
    if not targets:
        raise UsageError("no TARGET given", "liveos-iso-to-disk [options] SOURCE TARGET")
    opts = options_from_args(args)
    for note in opts.notes:
        print(f"note: {note}", file=sys.stderr)
    with write.prepare(args.source, targets, opts) as prepared:
        print(
            f"source: {args.source} ({prepared.layout.kind.value} layout, label "
            f"{prepared.source.label!r})",
            file=sys.stderr,
        )
        for job in prepared.jobs:
            show_plan(job.plan)
        if args.dry_run:
            if not args.noverify:
                print(
                    "note: a real run first checks the source's implanted md5 "
                    "(checkisomd5; --noverify skips it)",
                    file=sys.stderr,
                )
            return int(ExitCode.OK)
        if not args.noverify:
            print(f"note: {write.verify_source(prepared, args.source)}", file=sys.stderr)
        for job in prepared.jobs:
            if job.plan.destroys:
                confirm(
                    job.plan,
                    yes=args.yes,
                    question=f"{'Format' if opts.format else 'Write'} {job.target.spec}?",
                )
        outcomes = write.write_all(prepared, parallel=not args.serial)
    if len(outcomes) > 1:
        print(write.summary_table(outcomes), file=sys.stderr)
    failed = [o for o in outcomes if not o.ok]
    for o in failed:
        print(f"error: {o.target}: {o.message}", file=sys.stderr)
    if failed:
        print("hint: run again with --debug to see the commands", file=sys.stderr)
        # one failure's own code (10: the stick did not check out, 4: it vanished...);
        # several targets failing differently: 8
        codes = {o.code for o in failed}
        return codes.pop() if len(codes) == 1 else int(ExitCode.TOOL_FAILED)
    for o in outcomes:
        if o.result:
            print(
                f"{o.target}: written, UUID={o.result.uuid} LABEL={o.result.label}"
                + (f" overlay={o.result.overlay_name}" if o.result.overlay_name else "")
            )
    return int(ExitCode.OK)


#: what --format takes as its value: a size, ",fstype", or a bare word that could be a
#: filesystem name (checked later, so `--format xfs` is one clear error, not argparse's)
_FORMAT_VALUE = r"^\d|^,|^[a-z][a-z0-9]*(,\d*)?$"


def _is_format_value(word: str) -> bool:
    import os
    import re

    if not re.match(_FORMAT_VALUE, word, re.IGNORECASE):
        return False
    return word[0] in "0123456789," or (word != "live" and not os.path.exists(word))


def _optional_values(argv: list[str]) -> list[str]:
    """`--format ISO TARGET` must not take ISO as the size (livecd-iso-to-disk's own rule:
    the value is taken only if it looks like one)."""

    out = []
    for i, word in enumerate(argv):
        nxt = argv[i + 1] if i + 1 < len(argv) else ""
        if word == "--format" and not _is_format_value(nxt):
            out.append("--format=")
        elif word == "--overlayfs" and nxt not in ("temp", "persist"):
            out.append("--overlayfs=persist")
        else:
            out.append(word)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_optional_values(list(sys.argv[1:] if argv is None else argv)))
    args.target_more = args.targets
    if args.debug:
        from liveos_tools import run as run_mod

        run_mod.set_debug(True)
    from liveos_tools.cli.main import run_reported

    return run_reported(lambda: run(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
