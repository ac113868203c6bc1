"""checkisomd5 (isomd5sum): verify the md5 implantisomd5 put into an ISO (the check
dracut's rd.live.check runs at boot)."""

from __future__ import annotations

import re
from pathlib import Path

from liveos_tools.run import run

_RESULT = re.compile(r"the result is:\s*(\w+)", re.IGNORECASE)
_SUM = re.compile(r":\s+([0-9a-f]{32})\s*$", re.MULTILINE)


def parse_result(text: str) -> str:
    """'PASS', 'FAIL' or 'NA' (no md5 implanted) from checkisomd5's closing message.
    Its exit code says only 0 (pass) or 1 (fail or no sum)."""
    m = _RESULT.search(text)
    return m.group(1).upper() if m else "UNKNOWN"


def parse_implanted(text: str) -> str | None:
    """The implanted sum from `checkisomd5 --md5sumonly` ('NAME:   <32 hex digits>')."""
    m = _SUM.search(text)
    return m.group(1) if m else None


def check(iso: Path) -> str:
    res = run(["checkisomd5", str(iso)], check=False)
    return parse_result(res.stdout + res.stderr)


def implanted(iso: Path) -> str | None:
    res = run(["checkisomd5", "--md5sumonly", str(iso)], check=False)
    return parse_implanted(res.stdout)
