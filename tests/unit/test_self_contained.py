"""Nothing in the repository points at files outside it (the project's facts live in
docs/ARCHITECTURE.md, F1-F5): a fresh clone must be complete."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUTSIDE = re.compile(r"FACTS\.md|FACTS:|\.\./shared/|/work/(shared|main|helpers)")


def test_no_file_points_outside_the_repository() -> None:
    files = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    hits = []
    for name in files:
        if name.endswith((".gz", ".svg")):
            continue  # binaries hold no pointers
        path = REPO / name
        if not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        hits += [f"{name}: {m.group(0)}" for m in OUTSIDE.finditer(text)]
    hits = [h for h in hits if not h.startswith("tests/unit/test_self_contained.py")]
    assert hits == []
