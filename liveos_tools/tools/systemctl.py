"""systemctl: reload units and start or stop one (the monitor's service)."""

from __future__ import annotations

from liveos_tools.run import run, which


def available() -> bool:
    """False where there is no systemd (a container, a rescue shell): units start at boot."""
    return which("systemctl") is not None


def daemon_reload() -> None:
    run(["systemctl", "daemon-reload"])


def start(unit: str) -> None:
    run(["systemctl", "start", unit])


def stop(unit: str) -> None:
    """Stop the unit; one that is not running (or not loaded) is not an error."""
    run(["systemctl", "stop", unit], check=False)
