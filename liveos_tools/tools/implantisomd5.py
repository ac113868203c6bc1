"""implantisomd5 (isomd5sum): the ISO's md5 in its primary volume descriptor, which
checkisomd5 and dracut's rd.live.check verify."""

from __future__ import annotations

from pathlib import Path

from liveos_tools.run import run


def implant(iso: Path) -> None:
    # --force: a re-run over an ISO that already carries a sum replaces it.
    run(["implantisomd5", "--force", str(iso)])
