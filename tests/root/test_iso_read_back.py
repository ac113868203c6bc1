"""The verified write's read-back reads the medium, not a page cache that still holds
what was written: a block device whose cache has the right bytes while the medium under
it holds others must fail verification (writer/copy.py read_back, its O_DIRECT path and
its fallback)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from liveos_tools.tools import losetup
from liveos_tools.writer import copy

MIB = 1 << 20


@pytest.mark.parametrize("direct", [True, False])
def test_a_stale_page_cache_does_not_pass_verification(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct: bool
) -> None:
    data = os.urandom(copy.SEGMENT + 4 * MIB)
    medium = tmp_path / "medium.img"
    medium.write_bytes(data)
    expected = copy.checksum_of([data])
    if not direct:

        def refused(*args: object, **kwargs: object) -> copy.Checksum:
            raise copy._NoDirect

        monkeypatch.setattr(copy, "_direct_read_back", refused)
    dev = losetup.attach(medium)  # buffered: the device's pages are its own cache
    try:
        fd = os.open(dev, os.O_RDONLY)
        try:
            # the device's page cache now holds the right bytes ...
            assert os.pread(fd, len(data), 0) == data
            # ... and the medium under it changes (a stick that lost a write)
            at = copy.SEGMENT + 5
            with open(medium, "r+b") as f:
                f.seek(at)
                f.write(bytes([data[at] ^ 0xFF]))
                f.flush()
                os.fsync(f.fileno())
            assert os.pread(fd, 1, at) == data[at : at + 1]  # the cache is stale
            got = copy.read_back(fd, [(0, len(data))], len(data), "medium")
        finally:
            os.close(fd)
    finally:
        losetup.detach(dev)
    assert expected.first_difference(got) == copy.SEGMENT
