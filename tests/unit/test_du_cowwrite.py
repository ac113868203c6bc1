"""cowwrite: stores read back by the kernel-order reader (cow.py) and the merged view,
at every area boundary (the kernel's acceptance is proven in tests/guest/test_space_kernel.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from liveos_tools.cow import Geometry, StoreState, read_store
from liveos_tools.cowwrite import chunks_needed, fits, write_store
from liveos_tools.merge import MergedView


@pytest.mark.parametrize("chunk_sectors", [1, 8, 16])
@pytest.mark.parametrize("extra", [-1, 0, 1])
def test_written_store_reads_back(tmp_path: Path, chunk_sectors: int, extra: int) -> None:
    cb = chunk_sectors * 512
    epa = cb // 16
    n = 2 * epa + extra  # just short of, exactly at, and just past an area boundary
    geo = Geometry(chunk_sectors, (chunks_needed(Geometry(chunk_sectors, 1 << 40), n) + 3) * cb)
    olds = [3 * i + 1 for i in range(n)]
    chunks = [(o, o.to_bytes(4, "little") * (cb // 4)) for o in olds]
    store = tmp_path / "store"
    assert write_store(store, geo, chunks) == n
    rep = read_store(store, full=True)
    assert rep.state is StoreState.VALID and rep.exceptions == n
    assert rep.next_free == chunks_needed(geo, n)
    assert store.stat().st_size == geo.size_bytes
    base = tmp_path / "base"
    base.write_bytes(b"\x07" * ((olds[-1] + 2) * cb))
    with MergedView(base, store) as view:
        assert sorted(view.exceptions()) == olds
        for o, data in chunks[:: max(1, n // 50)]:
            assert view.pread(cb, o * cb) == data
        assert view.pread(cb, 0) == b"\x07" * cb  # chunk 0 has no exception


def test_fits() -> None:
    geo = Geometry(8, 10 * 4096)
    assert fits(geo, 8) and not fits(geo, 9)
