"""What `status` says about refresh: a kept previous image, an interrupted switch.

On status's fast path: a few stat() calls; json is imported only when a journal exists.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

from liveos_tools.media import Medium

JOURNAL = ".liveos-refresh.json"  # liveos_tools.switch.JOURNAL, without importing it
PREVIOUS = "previous"


class RefreshState(NamedTuple):
    previous_bytes: int | None  # the kept previous image + its overlay, None if none
    interrupted_op: str | None  # refresh | rollback
    interrupted_step: str | None

    def lines(self, target: str) -> list[str]:
        out = []
        if self.previous_bytes is not None:
            out.append(
                f"Previous image kept ({self.previous_bytes / (1024 * 1024):.1f} MiB) in "
                f"LiveOS/{PREVIOUS}/: `liveos-overlay rollback` boots it again, "
                "`rollback --drop-previous` frees it"
            )
        if self.interrupted_op is not None:
            if self.interrupted_op in ("refresh", "update"):
                again = (
                    "update --from <the same release>"
                    if self.interrupted_op == "update"
                    else "refresh"
                )
                what = (
                    f"run `liveos-overlay {again} {target}` to finish it or "
                    f"`liveos-overlay rollback {target}` to undo it"
                )
            else:
                what = f"run `liveos-overlay rollback {target}` to finish it"
            out.append(
                f"warning: an interrupted {self.interrupted_op} (step "
                f"{self.interrupted_step}): {what}"
            )
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "previous_bytes": self.previous_bytes,
            "interrupted": self.interrupted_op,
            "interrupted_step": self.interrupted_step,
        }


def from_json(doc: dict[str, Any] | None) -> RefreshState:
    """The inverse of RefreshState.to_json (a monitor's published status)."""
    doc = doc or {}
    return RefreshState(
        doc.get("previous_bytes"), doc.get("interrupted"), doc.get("interrupted_step")
    )


def read_state(medium: Medium) -> RefreshState:
    ldir = medium.livedir_path
    if ldir is None:
        return RefreshState(None, None, None)
    prev = ldir / PREVIOUS
    size = None
    if os.path.isdir(prev):
        size = sum(p.stat().st_size for p in Path(prev).iterdir() if p.is_file())
        # an OverlayFS upper directory (and its ovlwork/) kept with the old image
        for sub in (p for p in Path(prev).iterdir() if p.is_dir() and not p.is_symlink()):
            for dirpath, _dirs, names in os.walk(sub):
                size += sum(os.lstat(os.path.join(dirpath, n)).st_blocks * 512 for n in names)
    op = step = None
    journal = ldir / JOURNAL
    if journal.exists():
        import json

        try:
            data = json.loads(journal.read_text())
            op, step = str(data.get("op", "refresh")), str(data.get("step", "?"))
        except (OSError, ValueError):
            op, step = "refresh", "unreadable journal"
    return RefreshState(size, op, step)
