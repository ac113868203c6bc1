"""Pure parts of remix: labels, kernel arguments, boot configs, account lines, parsers."""

from __future__ import annotations

from pathlib import Path

import pytest

from liveos_tools.errors import ExitCode, LiveOSError
from liveos_tools.remix import iso, seclude
from liveos_tools.tools import checkisomd5, xorriso

STICK_SYSLINUX_APPEND = (
    "root=live:UUID=1234-ABCD rootfstype=vfat rw rd.live.image rd.live.overlay=UUID=1234-ABCD "
    "rd.live.overlay.overlayfs persistenthome=/LiveOS/home.img quiet console=ttyS0 rhgb"
)


def test_label_limits() -> None:
    assert iso.check_label("A" * 32) == "A" * 32
    with pytest.raises(LiveOSError) as err:
        iso.check_label("A" * 33)
    assert err.value.code == ExitCode.USAGE and "33 characters" in err.value.message
    assert iso.check_label(" Class Remix ") == "Class_Remix"  # dracut finds no CD by 'A B'
    for bad in ("", "a'b", "a\nb", "x/y", "é"):
        with pytest.raises(LiveOSError):
            iso.check_label(bad)


def test_kernel_args_are_the_cd_contract_without_persistence() -> None:
    args = iso.kernel_args("SoaS_Remix", STICK_SYSLINUX_APPEND.split())
    assert args == [
        "root=live:CDLABEL=SoaS_Remix",
        "rd.live.image",
        "quiet",
        "console=ttyS0",
        "rhgb",
    ]
    assert not any(w.startswith(("rd.live.overlay", "rootfstype", "persistenthome")) for w in args)


def test_isolinux_cfg_boots_the_kernel_with_the_args() -> None:
    text = iso.isolinux_cfg("R", ["root=live:CDLABEL=R", "rd.live.image"])
    appends = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("append")]
    assert appends == [
        "append initrd=/images/pxeboot/initrd.img root=live:CDLABEL=R rd.live.image",
        "append initrd=/images/pxeboot/initrd.img root=live:CDLABEL=R rd.live.image rd.live.check",
    ]
    assert "default linux" in text.splitlines()


def test_grub_cfg_rewrites_a_sticks_menu_for_the_cd() -> None:
    stick = (
        "set timeout=10\n"
        "search --no-floppy --fs-uuid --set=root 1234-ABCD\n"
        "menuentry 'Start' {\n"
        "\tlinuxefi /syslinux/vmlinuz root=live:UUID=1234-ABCD rw rd.live.image "
        "rd.live.overlay=UUID=1234-ABCD\n"
        "\tinitrdefi /syslinux/initrd.img\n}\n"
        "menuentry 'Check' {\n\tlinux /syslinux/vmlinuz root=live:UUID=1 rd.live.check\n"
        "\tinitrd /syslinux/initrd.img\n}\n"
    )
    out = iso.grub_cfg(stick, "MY_ISO", ["root=live:CDLABEL=MY_ISO", "rd.live.image"])
    assert out.splitlines() == [
        "set timeout=10",
        "search --no-floppy --set=root -l 'MY_ISO'",
        "menuentry 'Start' {",
        "\tlinuxefi /images/pxeboot/vmlinuz root=live:CDLABEL=MY_ISO rd.live.image",
        "\tinitrdefi /images/pxeboot/initrd.img",
        "}",
        "menuentry 'Check' {",
        "\tlinux /images/pxeboot/vmlinuz root=live:CDLABEL=MY_ISO rd.live.image rd.live.check",
        "\tinitrd /images/pxeboot/initrd.img",
        "}",
    ]
    plain = iso.grub_cfg(None, "X", ["a"])
    assert plain.count("menuentry") == 2 and "-l 'X'" in plain


def test_mkisofs_argv_hybrid_bios_and_efi() -> None:
    boot = xorriso.ElTorito(
        "isolinux/isolinux.bin",
        "isolinux/boot.cat",
        "images/efiboot.img",
        Path("/usr/lib/ISOLINUX/isohdpfx.bin"),
    )
    argv = xorriso.mkisofs_argv(Path("/o.iso"), "L", [xorriso.Graft("/a=b", Path("/h/x=y"))], boot)
    assert argv[:3] == ["xorriso", "-as", "mkisofs"]
    assert argv[argv.index("-V") + 1] == "L"
    assert argv.index("-b") < argv.index("-eltorito-alt-boot") < argv.index("-e")
    assert "-isohybrid-gpt-basdat" in argv and "-boot-info-table" in argv
    assert argv[-1] == "/a\\=b=/h/x\\=y"
    efi_only = xorriso.mkisofs_argv(Path("/o"), "L", [], xorriso.ElTorito(None, "c", "e", None))
    assert "-b" not in efi_only and "-eltorito-alt-boot" not in efi_only
    assert "-isohybrid-mbr" not in efi_only


def test_parse_el_torito_report() -> None:
    text = (
        "El Torito catalog  : 40  1\n"
        "El Torito images   :   N  Pltf  B   Emul  Ld_seg  Hdpt  Ldsiz         LBA\n"
        "El Torito boot img :   1  BIOS  y   none  0x0000  0x00      4        1065\n"
        "El Torito boot img :   2  UEFI  y   none  0x0000  0x00   4096          41\n"
        "El Torito img path :   1  /isolinux/isolinux.bin\n"
        "El Torito img opts :   1  boot-info-table isohybrid-suitable\n"
        "El Torito img path :   2  /images/efiboot.img\n"
    )
    assert xorriso.parse_el_torito(text) == [
        xorriso.BootEntry("BIOS", "/isolinux/isolinux.bin"),
        xorriso.BootEntry("UEFI", "/images/efiboot.img"),
    ]


def test_checkisomd5_parsers() -> None:
    assert checkisomd5.parse_result("... the result is: PASS.\n") == "PASS"
    assert checkisomd5.parse_result("The media check is complete, the result is: NA.") == "NA"
    assert checkisomd5.parse_result("") == "UNKNOWN"
    out = "a.iso:   458b99f3e23682dea2e1a7621b21b1ec\nFragment sums: 56a4\n"
    assert checkisomd5.parse_implanted(out) == "458b99f3e23682dea2e1a7621b21b1ec"


def test_account_lines_reset_to_the_base() -> None:
    base = ["root:!locked::0:99999:7:::", "bin:*:1::::::"]
    current = ["root:$6$new::0:99999:7:::", "bin:*:1::::::", "liveuser:$6$pw:1::::::"]
    out, changed = seclude.reset_lines(current, base, ("liveuser", "root"))
    assert out == base and changed == ["root", "liveuser (removed)"]
    # a base that has liveuser: its line comes back; a base without root keeps root's
    out, changed = seclude.reset_lines(current, ["liveuser::1::::::"], ("liveuser", "root"))
    assert out == ["root:$6$new::0:99999:7:::", "bin:*:1::::::", "liveuser::1::::::"]
    assert changed == ["liveuser"]
    assert seclude.reset_lines(base, base, ("liveuser", "root")) == (base, [])


def test_rules_from_options() -> None:
    rule_list, keep = seclude.rules(["/srv/secret/"], ["etc/ssh/"])
    assert rule_list[-1] == seclude.Rule("srv/secret", seclude.Action.AUTO, "--seclude")
    assert keep == ["etc/ssh"]
    for bad in ("/", "", "/."):
        with pytest.raises(LiveOSError):
            seclude.rules([bad])
    # paths are inside the image: '..' cannot climb out of its root
    assert seclude.rules(keep=["../etc/x", "/a/../../b"])[1] == ["etc/x", "b"]
    patterns = {r.pattern for r in seclude.DEFAULT_RULES}
    # what editliveos misses (docs/ARCHITECTURE.md F5) is on the default list
    assert {
        "etc/NetworkManager/system-connections",
        "etc/ssh/ssh_host_*",
        "home/*/.bash_history",
    } <= patterns


def test_tune2fs_features_parser() -> None:
    from liveos_tools.tools import tune2fs

    text = (
        "Filesystem volume name:   Anaconda\n"
        "Filesystem features:      has_journal ext_attr resize_inode dir_index filetype extent\n"
        "Filesystem flags:         signed_directory_hash\n"
    )
    assert tune2fs.parse_features(text) == {
        "has_journal",
        "ext_attr",
        "resize_inode",
        "dir_index",
        "filetype",
        "extent",
    }
    assert tune2fs.parse_features("Filesystem features:      (none)\n") == {"(none)"}
    assert tune2fs.parse_features("") == set()
