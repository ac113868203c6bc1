"""The app on a real stick image through RealBackend: read it, grow its overlay from the UI.

Needs root and loop devices on the host (ext4 and squashfs only). The stick is an ext4
image made with mkfs.ext4 -d, holding LiveOS/squashfs.img (a squashfs of a small ext4
LiveOS/rootfs.img), a kernel-written overlay from tests/fixtures/cow and a home.img.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.widgets import Input

from liveos_tools.units import MiB
from tests.tui.screen_text import screen_text

# isort: split
from liveos_tools_tui.app import LiveOSApp
from liveos_tools_tui.dialogs.confirm import ConfirmDialog
from liveos_tools_tui.dialogs.message import MessageDialog
from liveos_tools_tui.dialogs.params import ParamsDialog
from liveos_tools_tui.real import RealBackend

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

COW = Path(__file__).resolve().parents[1] / "fixtures" / "cow" / "demo-60pct.cow.gz"
TOOLS = ("mkfs.ext4", "mksquashfs", "losetup", "mount", "blkid")


def _our_loops(tmp: Path) -> set[str]:
    """Loop devices backed by a file under tmp (other tests on this machine use loops too)."""
    out = subprocess.run(
        ["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"],
        capture_output=True,
        text=True,
    ).stdout
    found = set()
    for line in out.splitlines():
        name, _, back = line.strip().partition(" ")
        if back.strip().startswith(str(tmp)):
            found.add(name)
    return found


def _mounts_of(devices: set[str]) -> list[str]:
    """Mount points (in this namespace) whose source is one of the devices."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        source = fields[fields.index("-") + 2]
        if source in devices:
            found.append(fields[4])
    return found


@pytest.fixture
def no_leaks(tmp_path: Path) -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("needs root for loop devices and mounts")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)}")
    yield
    # Only what this test made: other engineers' tests attach loops and mount meanwhile.
    leaked = _our_loops(tmp_path)
    mounted = _mounts_of(leaked)
    for where in mounted:
        subprocess.run(["umount", where], check=False)
    for dev in leaked:
        subprocess.run(["losetup", "-d", dev], check=False)
    assert not mounted, f"the test leaked mounts: {mounted}"
    assert not leaked, f"the test leaked loop devices: {sorted(leaked)}"


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def build_stick(tmp: Path, label: str = "LIVETEST") -> tuple[Path, str]:
    """An ext4 stick image; returns it and the overlay's file name."""
    fsuuid = str(uuid.uuid4())
    rootfs_dir = tmp / "rootfs"
    (rootfs_dir / "etc").mkdir(parents=True)
    (rootfs_dir / "etc" / "os-release").write_text("NAME=Test\n")
    squash_src = tmp / "squash" / "LiveOS"
    squash_src.mkdir(parents=True)
    _run("mkfs.ext4", "-q", "-F", "-d", str(rootfs_dir), str(squash_src / "rootfs.img"), "4M")
    stick_dir = tmp / "stick"
    livedir = stick_dir / "LiveOS"
    livedir.mkdir(parents=True)
    _run("mksquashfs", str(tmp / "squash"), str(livedir / "squashfs.img"), "-quiet", "-noappend")
    name = f"overlay-{label}-{fsuuid}"
    with gzip.open(COW) as src, open(livedir / name, "wb") as dst:
        shutil.copyfileobj(src, dst)
    _run("mkfs.ext4", "-q", "-F", "-L", "HOME", str(livedir / "home.img"), "8M")
    image = tmp / "stick.img"
    _run(
        "mkfs.ext4", "-q", "-F", "-L", label, "-U", fsuuid, "-d", str(stick_dir), str(image), "200M"
    )
    return image, name


async def test_grow_the_overlay_of_a_real_stick_from_the_ui(tmp_path: Path, no_leaks: None) -> None:
    pytest.importorskip("liveos_tools.tasks.grow")
    image, name = build_stick(tmp_path)
    backend = RealBackend([str(image)], scan=False, live=False, is_root=True)
    app = LiveOSApp(backend, refresh=0, watch=False)
    async with app.run_test(size=(80, 24)) as pilot:
        for _ in range(100):
            await pilot.pause(0.05)
            card = app.card_for(str(image))
            if card is not None and (card.report or card.error):
                break
        assert card is not None
        assert card.error is None, card.error
        assert card.report is not None
        o = card.report.overlay
        assert (o.state.value, o.used_bytes, o.total_bytes) == ("valid", 39368 * 512, 32 * MiB)
        assert card.badge_text == "healthy"
        assert card.report.medium.overlay_name_problem is None
        assert "60.1%  19.2 / 32.0 MiB" in screen_text(app)

        await pilot.press("g")
        await pilot.pause()
        assert isinstance(app.screen, ParamsDialog)
        app.screen.query_one("#size", Input).value = "16M"
        await pilot.press("enter")
        # Planning runs in a worker after the dialog closes: wait for its outcome, not
        # for the dialog to go (a loaded machine plans slower than the dialog closes).
        for _ in range(1200):
            await pilot.pause(0.05)
            if isinstance(app.screen, (ConfirmDialog, MessageDialog)):
                break
        if isinstance(app.screen, MessageDialog):
            pytest.fail(f"planning failed: {screen_text(app)}")
        assert isinstance(app.screen, ConfirmDialog)
        shown = app.screen.plan.render()
        assert name in shown and "16 MiB" in shown
        await pilot.press("y")
        for _ in range(400):
            await pilot.pause(0.05)
            if isinstance(app.screen, MessageDialog):
                break
        text = screen_text(app)
        assert app.last_outcome == "done", text
        await pilot.press("enter")
        for _ in range(100):
            await pilot.pause(0.05)
            if card.report is not None and card.report.overlay.total_bytes == 48 * MiB:
                break
        assert card.report is not None and card.report.overlay.total_bytes == 48 * MiB
        assert card.report.overlay.used_bytes == 39368 * 512  # nothing written was lost

    # Read the file's size on the stick itself, independently of the app.
    debugfs = subprocess.run(
        ["debugfs", "-R", f"stat /LiveOS/{name}", str(image)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"Size: {48 * MiB}" in debugfs
