"""Route ``@pytest.mark.guest`` tests through one qemu guest boot.

Inside the guest (LIVEOS_IN_GUEST=1) guest tests run normally.  On the host
each one is replaced by a proxy item with the same nodeid; the first proxy to
run boots a single guest that runs all of them with pytest (see
tests/guestvm.py and tests/guest_plugin.py) and every proxy then reports its
own inner outcome.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Generator, Iterator
from typing import Any

import pytest
from _pytest._code.code import TerminalRepr
from _pytest._io import TerminalWriter
from _pytest.nodes import Node

from tests import guestvm

DEFAULT_GUEST_TIMEOUT = 1200.0

# The Ctrl-C tests send SIGINT to the commands they run, as a terminal would. A suite
# started in the background by a non-interactive shell (`bash .ci/run &`) inherits
# SIGINT ignored, and an ignored signal stays ignored across exec, so those commands
# would never see it. A handler here is reset to the default in every child.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

_NODEIDS = pytest.StashKey[list[str]]()
_RUN = pytest.StashKey[guestvm.GuestPytestRun]()

# Conditions of these marks describe the guest; evaluating them again on the
# host would skip or xfail the proxy for the wrong environment.
_INNER_ONLY_MARKS = frozenset({"skip", "skipif", "xfail"})


def _guest_timeout() -> float:
    return float(os.environ.get("LIVEOS_GUEST_TIMEOUT") or DEFAULT_GUEST_TIMEOUT)


def _guest_run(config: pytest.Config) -> guestvm.GuestPytestRun:
    run = config.stash.get(_RUN, None)
    if run is None:
        nodeids = config.stash[_NODEIDS]
        try:
            run = guestvm.run_guest_pytest(nodeids, config.rootpath, timeout=_guest_timeout())
        except Exception as exc:
            # Record the failure like a failed boot, so the remaining proxies
            # report it instead of each trying to boot again.
            result = guestvm.GuestResult(
                rc=None, log="", console=f"[guestvm: cannot start the guest: {exc!r}]", seconds=0.0
            )
            run = guestvm.GuestPytestRun(nodeids=tuple(nodeids), result=result)
        config.stash[_RUN] = run
    return run


class GuestTestFailed(Exception):
    """The inner test failed; carries the inner report text verbatim."""

    def __init__(self, text: str, crash: str) -> None:
        super().__init__(crash)
        self.text = text
        self.crash = crash


class _Crash:
    def __init__(self, message: str) -> None:
        self.message = message


class GuestFailureRepr(TerminalRepr):
    # The inner report is already formatted; a host traceback of the proxy
    # would only hide it.  reprcrash feeds the one-line `-ra` summary.
    def __init__(self, text: str, crash: str) -> None:
        self.text = text
        self.reprcrash = _Crash(crash)

    def toterminal(self, tw: TerminalWriter) -> None:
        for line in self.text.rstrip("\n").splitlines():
            tw.line(line)


def _skip(reason: str) -> None:
    # _use_item_location makes -ra point at the test, not at this conftest.
    raise pytest.skip.Exception(reason, _use_item_location=True)


class GuestProxyItem(pytest.Item):
    """Stands in on the host for a guest test; reports the guest's verdict."""

    def __init__(self, *, original: pytest.Item, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.original = original
        # Same markers and keywords so -m/-k, reports and plugins see no difference.
        self.own_markers = list(original.own_markers)
        self.keywords.update(original.keywords)
        self.inner: guestvm.InnerResult | None = None

    def iter_markers_with_node(self, name: str | None = None) -> Iterator[tuple[Node, pytest.Mark]]:
        for node, mark in super().iter_markers_with_node(name):
            if mark.name not in _INNER_ONLY_MARKS:
                yield node, mark

    def runtest(self) -> None:
        reason = guestvm.guest_unavailable_reason()
        if reason is not None:
            _skip(reason)
        run = _guest_run(self.config)
        res = self.inner = run.lookup(self.nodeid)
        if res is None:
            raise GuestTestFailed(
                f"no result from the guest for {self.nodeid}\n{run.failure_context()}",
                "no result from the guest",
            )
        if res.outcome == "skipped":
            _skip(res.longrepr)
        elif res.outcome == "xfailed":
            pytest.xfail(res.longrepr)
        elif res.outcome not in {"passed", "xpassed"}:
            crash = res.crash or res.outcome
            raise GuestTestFailed(f"[in guest: {res.outcome}]\n{res.longrepr}", f"guest: {crash}")

    def repr_failure(
        self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None
    ) -> str | TerminalRepr:
        if isinstance(excinfo.value, GuestTestFailed):
            return GuestFailureRepr(excinfo.value.text, excinfo.value.crash)
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.original.reportinfo()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    # Carry an inner XPASS over; the host never saw the xfail mark.
    if (
        isinstance(item, GuestProxyItem)
        and call.when == "call"
        and report.passed
        and item.inner is not None
        and item.inner.outcome == "xpassed"
    ):
        report.wasxfail = item.inner.longrepr
    return report


@pytest.hookimpl(trylast=True)  # after -k/-m deselection, so only selected tests boot
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    if guestvm.IN_GUEST:
        return
    nodeids: list[str] = []
    for i, item in enumerate(items):
        if item.get_closest_marker("guest") is None:
            continue
        assert item.parent is not None
        proxy = GuestProxyItem.from_parent(item.parent, name=item.name, original=item)
        items[i] = proxy
        nodeids.append(proxy.nodeid)
    config.stash[_NODEIDS] = nodeids


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    run = config.stash.get(_RUN, None)
    if run is None:
        return
    tr = terminalreporter
    tr.write_sep("-", "guest")
    n = len(run.nodeids)
    tests = f"{n} test{'' if n == 1 else 's'}"
    if run.result.rc is None:
        line = f"guest: {guestvm.describe(run.result)} ({tests}, {run.result.seconds:.1f} s)"
    else:
        line = (
            f"guest: booted {run.kver} under qemu tcg, ran {tests} in {run.result.seconds:.1f} s"
            f' (inner pytest: "{run.summary or "no summary line"}")'
        )
    tr.write_line(line)
    if not run.all_passed:
        tr.write_sep("-", "guest: inner pytest output")
        tr.write_line(run.result.log.rstrip("\n") or "(empty)")
        if run.result.rc is None or not run.result.log:
            tr.write_sep("-", "guest: console")
            tr.write_line(guestvm.tail(run.result.console, 200))
