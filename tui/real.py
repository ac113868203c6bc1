"""RealBackend: real sticks through liveos_tools.

Task modules are imported when an action is chosen (they are heavy, and the app
starts without them). A user who is not root reads the running system from the
monitor's status file and runs actions as the equivalent `liveos-overlay ... --yes`
under pkexec or sudo.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from liveos_tools.errors import LiveOSError, ToolError
from liveos_tools.media import (
    LIVE_ROOT,
    HomeKind,
    Medium,
    boot_args_on_stick,
    mounted_livedir,
)
from liveos_tools.plan import Plan, Progress
from liveos_tools.units import MiB

from . import discovery
from .backend import (
    Action,
    ActionParams,
    ActionUnavailable,
    Details,
    Prepared,
    Reading,
    Stick,
    StickEvent,
    StickOrigin,
    reading_of_published,
)

#: where each action lives in the library: (module, function).
TASKS: dict[Action, tuple[str, str]] = {
    Action.REPAIR: ("liveos_tools.tasks.repair", "plan_repair"),
    Action.GROW: ("liveos_tools.tasks.grow", "plan_grow"),
    Action.RESET: ("liveos_tools.tasks.reset", "plan_reset"),
    Action.GROW_HOME: ("liveos_tools.tasks.home", "plan_resize"),
    Action.COPY_HOME: ("liveos_tools.tasks.home", "plan_copy"),
    Action.REFRESH: ("liveos_tools.tasks.refresh", "plan_refresh"),
    Action.ROLLBACK: ("liveos_tools.tasks.refresh", "plan_rollback"),
    Action.COMPACT: ("liveos_tools.tasks.compact", "plan_compact"),
}


def running_live_system() -> bool:
    return LIVE_ROOT.is_dir() or Path("/dev/mapper/live-rw").exists()


def load_task(action: Action) -> Callable[..., Plan]:
    module, func = TASKS[action]
    fn: Callable[..., Plan] = getattr(importlib.import_module(module), func)
    return fn


def size_arg(nbytes: int) -> str:
    return f"{nbytes // MiB}M" if nbytes % MiB == 0 else f"{nbytes}b"


def command_for(stick: Stick, action: Action, params: ActionParams) -> list[str]:
    """The liveos-overlay command line that does the same as the action."""
    target = [stick.target] if stick.target else []
    by = ["--by", size_arg(params.by_bytes)] if params.by_bytes else []
    if action is Action.REPAIR:
        return ["repair", *target, "--yes"]
    if action is Action.GROW:
        return ["grow", *target, *by, "--yes"]
    if action in (Action.RESET, Action.REFRESH, Action.ROLLBACK, Action.COMPACT):
        return [action.value, *target, "--yes"]
    if action is Action.REMIX:
        label = ["--label", params.label] if params.label else []
        clone = ["--clone"] if params.clone else []
        return ["remix", *target, "-o", str(params.output), *label, *clone, "--yes"]
    live = [stick.target or str(LIVE_ROOT)]
    if action is Action.GROW_HOME:
        return ["home", "resize", *live, *by, "--yes"]
    dest = params.dest.target if params.dest and params.dest.target else str(LIVE_ROOT)
    extra = ["--delete-home"] if params.delete_existing else []
    return ["home", "copy", *live, dest, *extra, "--yes"]


def liveos_overlay_argv() -> list[str]:
    found = shutil.which("liveos-overlay")
    if found:
        return [os.path.abspath(found)]
    return [sys.executable, "-m", "liveos_tools.cli.main"]


class RealBackend:
    def __init__(
        self,
        targets: Sequence[str] = (),
        *,
        scan: bool = True,
        live: bool | None = None,
        status_file: Path | None = None,
        is_root: bool | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.targets = list(targets)
        self.scan = scan
        self.live = running_live_system() if live is None else live
        self.is_root = os.geteuid() == 0 if is_root is None else is_root
        self.status_file = status_file
        #: the time the monitor's published_at is compared with.
        self.wall_clock = wall_clock
        # Sticks found by udev: node -> stick, so a removal can name the card.
        self._plugged: dict[str, Stick] = {}

    # --- finding sticks ---

    def list_sticks(self) -> list[Stick]:
        sticks: list[Stick] = []
        if self.live:
            sticks.append(Stick("live", None, "This computer's live system", StickOrigin.LIVE))
        for t in self.targets:
            sticks.append(Stick(os.path.abspath(t), os.path.abspath(t), t, StickOrigin.ARGUMENT))
        if self.scan:
            for info in discovery.scan():
                stick = self._liveos_stick(info)
                if stick is not None:
                    sticks.append(stick)
        return sticks

    def _liveos_stick(self, info: dict[str, str]) -> Stick | None:
        node = info["node"]
        if self.live and LIVE_ROOT.is_dir() and _same_device(node, LIVE_ROOT):
            return None  # the running system's own stick: already the live card
        stick = Stick(node, node, discovery.title_of(info), StickOrigin.PLUGGED)
        if not self.is_root:
            # Without root only a stick the desktop mounted can be read: through its folder.
            where = mounted_livedir(node)
            if where is None:
                return None
            stick = Stick(node, where, stick.title, StickOrigin.PLUGGED)
            self._plugged[node] = stick
            return stick
        try:
            from liveos_tools.media import open_medium

            with open_medium(node):
                pass
        except LiveOSError:
            return None
        self._plugged[node] = stick
        return stick

    def watch(self, callback: StickEvent) -> Callable[[], None] | None:
        if not self.scan:
            return None

        def handle(info: dict[str, str]) -> None:
            node, action = info.get("node", ""), info.get("action")
            if action == "remove":
                old = self._plugged.pop(node, None)
                if old is not None:
                    callback("remove", old)
            elif action in ("add", "change") and discovery.is_candidate(info):
                stick = self._liveos_stick(info)
                if stick is not None:
                    callback("add", stick)

        return discovery.start_monitor(handle)

    # --- reading ---

    def _published(self) -> Reading:
        from liveos_tools.tasks import monitor

        doc = monitor.read_published(self.status_file or monitor.STATUS_PATH)
        return reading_of_published(doc, self.wall_clock())

    def status(self, stick: Stick) -> Reading:
        from liveos_tools.media import open_medium
        from liveos_tools.tasks.status import build_status

        if stick.target is None and not self.is_root:
            return self._published()
        with open_medium(stick.target) as medium:
            return Reading(build_status(medium))

    def details(self, stick: Stick) -> Details:
        from liveos_tools.media import open_medium

        if stick.target is None and not self.is_root:
            return Details()
        with open_medium(stick.target) as medium:
            boot = boot_args_on_stick(medium.root) if medium.root else ({}, ())
            return Details(_dm_table(medium), *boot)

    def space(self, stick: Stick) -> dict[str, Any]:
        from liveos_tools.tasks import du

        if stick.target is None and not self.is_root:
            summary = self._published_doc().get("du")
            if not isinstance(summary, dict):
                raise LiveOSError(
                    "the monitor has not published a du summary yet",
                    "it does so every 10 minutes; or run liveos-tui as root",
                )
            if "error" in summary:
                raise LiveOSError(str(summary["error"]), summary.get("hint"))
            return summary
        return du.du_medium(stick.target).to_json(depth=4, top=50)

    def _published_doc(self) -> dict[str, Any]:
        from liveos_tools.tasks import monitor

        return monitor.read_published(self.status_file or monitor.STATUS_PATH)

    # --- acting ---

    def prepare(self, stick: Stick, action: Action, params: ActionParams) -> Prepared:
        if not self.is_root:
            return self._privileged(stick, action, params)
        if action is Action.REMIX:  # only reads the stick: no writable reopening
            from .remix import prepare_remix

            return prepare_remix(stick, params)
        from liveos_tools.staged import REOPENED, Staged

        fn = load_task(action)

        def view(stack: contextlib.ExitStack, writable: bool) -> tuple[Plan, bool]:
            plan, medium = self._plan(fn, stack, stick, action, params, writable=writable)
            return plan, medium.source in REOPENED

        # As the CLI does: the plan shown is made on a read-only mount; it is carried
        # out on a writable one, planned again the same way.
        staged = Staged(view)
        if not staged.reopen:
            return Prepared(plan=staged.plan, release=staged.release)

        def run(progress: Progress) -> None:
            staged.carry_out(lambda plan: plan.execute(progress))

        return Prepared(plan=staged.plan, release=staged.release, run=run)

    def _plan(
        self,
        fn: Callable[..., Plan],
        stack: contextlib.ExitStack,
        stick: Stick,
        action: Action,
        params: ActionParams,
        *,
        writable: bool,
    ) -> tuple[Plan, Medium]:
        from liveos_tools.media import open_medium

        medium = stack.enter_context(open_medium(stick.target, writable=writable))
        if action is Action.GROW:
            return fn(medium, by_bytes=params.by_bytes), medium
        if action in (Action.REPAIR, Action.RESET, Action.REFRESH, Action.ROLLBACK, Action.COMPACT):
            return fn(medium), medium
        if medium.home_path is None:
            raise ActionUnavailable(
                f"{stick.title} has no home.img", "make one: liveos-overlay home create"
            )
        if action is Action.GROW_HOME:
            if medium.home_kind is not HomeKind.LUKS:
                return fn(medium.home_path, by_bytes=params.by_bytes), medium
            if params.passphrase is None:
                # The card did not show LUKS (it changed since), so nobody asked.
                raise ActionUnavailable(
                    "home.img is encrypted: its passphrase is needed",
                    "press h again: the dialog now asks for it",
                )
            plan = fn(
                medium.home_path,
                by_bytes=params.by_bytes,
                passphrase=params.passphrase.reveal(),
            )
            return plan, medium
        if params.dest is None:
            raise ActionUnavailable("choose the stick to copy home.img to")
        dest = stack.enter_context(open_medium(params.dest.target, writable=writable))
        if dest.livedir_path is None:
            raise ActionUnavailable(f"{params.dest.title} has no {dest.livedir} folder to copy to")
        dest_path = dest.livedir_path / medium.home_path.name
        return fn(medium.home_path, dest_path, delete_existing=params.delete_existing), medium

    def accepts_passphrase(self) -> bool:
        # As root the passphrase goes straight to the library; not root, it reaches
        # `liveos-overlay home resize --passphrase-file -` on stdin under pkexec/sudo
        # (sudo asks for its own password on the terminal, not on stdin).
        return True

    def _privileged(self, stick: Stick, action: Action, params: ActionParams) -> Prepared:
        tail = command_for(stick, action, params)
        stdin = b""
        if action is Action.GROW_HOME and (params.home_encrypted or params.passphrase):
            if params.passphrase is None:
                raise ActionUnavailable("home.img is encrypted: its passphrase is needed")
            # On stdin, never on the command line (which every user can read in /proc).
            tail = [*tail, "--passphrase-file", "-"]
            stdin = params.passphrase.reveal()
        from liveos_tools.tools import sudo

        graphical = bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
        door = sudo.choose(graphical=graphical)
        if door is None:
            raise ActionUnavailable(
                f"{action.label} needs root, and neither pkexec nor sudo is installed",
                "run liveos-tui as root",
            )
        tool, needs_terminal = door, door == "sudo"
        command = [*liveos_overlay_argv(), *tail]
        argv = sudo.argv_as_root(tool, command)
        plan = Plan(title=action.label, target=stick.title)

        def run_it() -> None:
            try:
                # Not the terminal: the app (or sudo's prompt) owns that. Only an
                # encrypted home's passphrase goes this way.
                sudo.run_as_root(tool, command, input=stdin)
            except ToolError as err:
                raise privileged_error(tool, err) from None

        plan.add(f"run as root through {tool}", run_it, argv=argv)
        dry = " ".join(["liveos-overlay", *[a for a in tail if a != "--yes"], "--dry-run"])
        plan.notes.append(f"you are not root: {tool} asks for a password first")
        plan.notes.append(f"to see every step it takes, run as root: {dry}")
        if action is Action.RESET:
            plan.destroys.append("every change saved in the overlay")
        return Prepared(
            plan=plan,
            needs_terminal=needs_terminal,
            privilege=f"runs as root through {tool}",
        )

    def execute(self, prepared: Prepared, progress: Progress) -> None:
        try:
            if prepared.run is not None:
                prepared.run(progress)
            else:
                prepared.plan.execute(progress)
        except OSError as exc:  # a task let one through: still a message, not a traceback
            raise LiveOSError(f"{prepared.plan.title} failed: {exc}") from exc


#: pkexec's own exit codes (man pkexec): it did not run the command.
PKEXEC_DISMISSED = 126
PKEXEC_NOT_AUTHORIZED = 127


def privileged_error(tool: str, err: ToolError) -> LiveOSError:
    """What a failed `pkexec|sudo liveos-overlay ...` means, as one error with a hint.

    liveos-overlay prints `error: ...` and `hint: ...` on stderr: those are the
    message. Otherwise it is pkexec or sudo refusing, and nothing ran.
    """
    message = hint = None
    for line in err.stderr.splitlines():
        if line.startswith("error: "):
            message = line.removeprefix("error: ").strip()
        elif line.startswith("hint: "):
            hint = line.removeprefix("hint: ").strip()
    if message:
        return LiveOSError(message, hint)
    if tool == "pkexec" and err.returncode == PKEXEC_DISMISSED:
        return LiveOSError("the password dialog was dismissed", "nothing was changed")
    if tool == "pkexec" and err.returncode == PKEXEC_NOT_AUTHORIZED:
        return LiveOSError(
            f"pkexec did not authorize it ({_last_line(err.stderr) or 'not authorized'})",
            "nothing was changed; ask an administrator, or run liveos-tui as root",
        )
    return LiveOSError(
        err.message, err.hint or "run it in a terminal to see all it says: " + " ".join(err.argv)
    )


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _same_device(node: str, path: Path) -> bool:
    with contextlib.suppress(OSError):
        return os.stat(node).st_rdev == os.stat(path).st_dev
    return False


def _dm_table(medium: Medium) -> str | None:
    if medium.live_dm is None:
        return None
    from liveos_tools.tools import dmsetup

    with contextlib.suppress(LiveOSError):
        return dmsetup.table_text(medium.live_dm).strip() or None
    return None
