"""Plan on a read-only view, confirm, then carry out on a writable one.

A stick image or device is mounted read-only to plan, so that a dry run, a refusal or
a "no" leaves it byte-identical. Only once the user has agreed is it opened again,
writable, and planned again the same way; that second plan is the one carried out.
A directory, an overlay file or the running system is planned and written through the
same view. The CLI's writing commands and the TUI's actions all go through here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from types import TracebackType

from liveos_tools.media import Medium, Source, open_medium
from liveos_tools.plan import Plan

#: view(stack, writable) -> (plan, reopen): opens what it reads on `stack` (read-only
#: unless `writable`) and plans; `reopen` says the read-only view cannot be written
#: through, so carrying out needs a second, writable view.
View = Callable[[contextlib.ExitStack, bool], tuple[Plan, bool]]

#: the sources this process mounted read-only itself, to be reopened writable.
REOPENED = (Source.IMAGE, Source.DEVICE)


class Staged:
    """The plan made on the read-only view; carry_out() writes. Release it when done."""

    def __init__(self, view: View) -> None:
        self._view = view
        self._stack = contextlib.ExitStack()
        try:
            self.plan, self.reopen = view(self._stack, False)
        except BaseException:
            self._stack.close()
            raise

    def release(self) -> None:
        self._stack.close()

    def __enter__(self) -> Staged:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def carry_out(self, execute: Callable[[Plan], None]) -> Plan:
        """Execute the plan: on the same view, or on a writable one planned again."""
        if not self.reopen:
            execute(self.plan)
            return self.plan
        self.release()
        with contextlib.ExitStack() as stack:
            plan, _ = self._view(stack, True)
            execute(plan)
            return plan


def medium_view(
    target: str | None, make: Callable[[Medium], Plan], *, livedir: str | None = None
) -> View:
    """The View of one TARGET opened with open_medium, planned by make(medium)."""

    def view(stack: contextlib.ExitStack, writable: bool) -> tuple[Plan, bool]:
        medium = stack.enter_context(open_medium(target, livedir=livedir, writable=writable))
        return make(medium), medium.source in REOPENED

    return view
