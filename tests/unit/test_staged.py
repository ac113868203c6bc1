"""staged.Staged: plan on a read-only view, carry out on the same one or on a writable one
planned again, and never leave a view open."""

from __future__ import annotations

import contextlib

import pytest

from liveos_tools.plan import Plan
from liveos_tools.staged import Staged


class Views:
    def __init__(self, reopen: bool) -> None:
        self.reopen = reopen
        self.log: list[str] = []

    def __call__(self, stack: contextlib.ExitStack, writable: bool) -> tuple[Plan, bool]:
        mode = "rw" if writable else "ro"
        self.log.append(f"open {mode}")
        stack.callback(self.log.append, f"close {mode}")
        return Plan(f"plan on {mode}", "stick"), self.reopen


def test_a_view_that_can_be_written_is_planned_once() -> None:
    views = Views(reopen=False)
    ran: list[str] = []
    with Staged(views) as staged:
        assert staged.plan.title == "plan on ro"
        done = staged.carry_out(lambda p: ran.append(p.title))
    assert ran == ["plan on ro"] and done is staged.plan
    assert views.log == ["open ro", "close ro"]


def test_an_image_is_closed_then_reopened_writable_and_planned_again() -> None:
    views = Views(reopen=True)
    ran: list[str] = []
    with Staged(views) as staged:
        done = staged.carry_out(lambda p: ran.append(p.title))
    assert ran == ["plan on rw"] and done.title == "plan on rw"
    # the read-only view is gone before the writable one opens: never two at once
    assert views.log == ["open ro", "close ro", "open rw", "close rw"]


def test_a_dry_run_or_a_no_only_releases() -> None:
    views = Views(reopen=True)
    with Staged(views):
        pass
    assert views.log == ["open ro", "close ro"]


def test_a_failing_plan_closes_what_it_opened() -> None:
    log: list[str] = []

    def view(stack: contextlib.ExitStack, writable: bool) -> tuple[Plan, bool]:
        stack.callback(log.append, "closed")
        raise RuntimeError("refused")

    with pytest.raises(RuntimeError, match="refused"):
        Staged(view)
    assert log == ["closed"]
