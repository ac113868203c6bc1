"""The details view names files the way the CLI does: IMAGE:/LiveOS/... for a stick image
or device, never the temporary mount point this process read it through."""

from __future__ import annotations

from pathlib import Path

from liveos_tools.media import Source
from liveos_tools.tasks.monitor import report_from_json
from tests.tui.conftest import fixture_sticks

# isort: split
from liveos_tools_tui.present import details_rows


def test_overlay_file_of_an_image_is_shown_inside_the_image() -> None:
    (fx,) = fixture_sticks("01")
    assert fx.status is not None
    report = report_from_json(fx.status)
    mount = Path("/tmp/liveos-ro-abc123")
    overlay = mount / "LiveOS" / "overlay-STICK-1234"
    medium = report.medium._replace(source=Source.IMAGE, target="/srv/stick.img", root=mount)
    report = report._replace(medium=medium, overlay=report.overlay._replace(path=str(overlay)))
    rows = dict(details_rows(report, None))
    assert rows["Overlay file"] == "/srv/stick.img:/LiveOS/overlay-STICK-1234"
    assert "liveos-ro" not in " ".join(v for _, v in details_rows(report, None))


def test_a_directory_keeps_its_own_paths() -> None:
    (fx,) = fixture_sticks("01")
    assert fx.status is not None
    report = report_from_json(fx.status)
    medium = report.medium._replace(source=Source.DIRECTORY, root=Path("/media/me/STICK"))
    path = "/media/me/STICK/LiveOS/overlay-x"
    assert medium.shown_path(path) == path
    # A device the user mounted keeps that mount's path: the user knows it.
    device = medium._replace(source=Source.DEVICE, target="/dev/sdb")
    assert device.shown_path(path) == path
    # A device this process mounted for a moment is named by the device.
    temp = device._replace(root=Path("/tmp/liveos-ro-x1y2"))
    assert temp.shown_path("/tmp/liveos-ro-x1y2/LiveOS/overlay-x") == "/dev/sdb:/LiveOS/overlay-x"
    assert temp.shown_path("/tmp/liveos-ro-x1y2") == "/dev/sdb:/"
