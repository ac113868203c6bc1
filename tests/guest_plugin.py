"""pytest plugin for the pytest run *inside* the guest (``-p tests.guest_plugin``).

Records one entry per test in a JSON file, {nodeid: {outcome, longrepr,
crash, duration}}, which the host-side proxies in tests/conftest.py turn back into
their own outcomes.  Collection errors are recorded under the collector's
nodeid so a proxy can show why its test never ran.

The file is rewritten after every test, so a guest that is killed at the
timeout still reports what finished.  Only the standard library and pytest
are used: this module must not import the harness.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
from _pytest._io import TerminalWriter

RESULTS_ENV = "LIVEOS_GUEST_RESULTS"
DEFAULT_RESULTS = "/run/out/results.json"
# Optional JSON list of the nodeids to run; everything else collected is deselected.
NODEIDS_ENV = "LIVEOS_GUEST_NODEIDS"

_results: dict[str, dict[str, Any]] = {}


def _results_path() -> Path:
    return Path(os.environ.get(RESULTS_ENV) or DEFAULT_RESULTS)


def _flush() -> None:
    path = _results_path()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_results, indent=1, sort_keys=True))
    tmp.replace(path)


def _report_text(report: pytest.TestReport | pytest.CollectReport) -> str:
    # Like report.longreprtext, which strip()s away the first line's indentation.
    buf = io.StringIO()
    tw = TerminalWriter(buf)
    tw.hasmarkup = False
    report.toterminal(tw)
    return buf.getvalue().lstrip("\n").rstrip()


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    # Skips carry (path, lineno, "Skipped: reason").
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return report.longreprtext


def _crash_line(report: pytest.TestReport) -> str:
    reprcrash = getattr(report.longrepr, "reprcrash", None)
    message = getattr(reprcrash, "message", None)
    if message:
        return str(message).splitlines()[0]
    lines = report.longreprtext.strip().splitlines()
    return lines[-1] if lines else ""


def _phase_outcome(report: pytest.TestReport) -> tuple[str, str]:
    wasxfail = getattr(report, "wasxfail", None)
    if report.passed:
        return ("xpassed", str(wasxfail)) if wasxfail is not None else ("passed", "")
    if report.skipped:
        if wasxfail is not None:
            return "xfailed", str(wasxfail)
        return "skipped", _skip_reason(report)
    return ("failed" if report.when == "call" else "error"), _report_text(report)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    rec = _results.setdefault(
        report.nodeid, {"outcome": "passed", "longrepr": "", "crash": "", "duration": 0.0}
    )
    rec["duration"] += report.duration
    outcome, text = _phase_outcome(report)
    if report.when == "teardown":
        if outcome == "error":
            # A teardown error after a failure keeps the failure, with both texts.
            if rec["outcome"] in {"failed", "error"}:
                rec["longrepr"] += "\n\n--- teardown ---\n" + text
            else:
                rec.update(outcome="error", longrepr=text, crash=_crash_line(report))
        _flush()
    elif report.when == "setup" and outcome == "passed":
        pass
    else:
        crash = _crash_line(report) if outcome in {"failed", "error"} else ""
        rec.update(outcome=outcome, longrepr=text, crash=crash)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    # A module that fails to import, or skips itself (importorskip), hides its
    # tests; the record under the collector's nodeid stands in for all of them.
    if report.failed:
        _results[report.nodeid] = {
            "outcome": "error",
            "longrepr": _report_text(report),
            "crash": "collection error",
            "duration": 0.0,
        }
        _flush()
    elif report.skipped:
        _results[report.nodeid] = {
            "outcome": "skipped",
            "longrepr": _skip_reason(report),
            "crash": "",
            "duration": 0.0,
        }
        _flush()


def _covered_by_collector(nodeid: str) -> bool:
    return any(key == "" or nodeid.startswith((key + "::", key + "/")) for key in _results)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    source = os.environ.get(NODEIDS_ENV)
    if not source:
        return
    wanted = json.loads(Path(source).read_text())
    wanted_set = set(wanted)
    keep = [item for item in items if item.nodeid in wanted_set]
    drop = [item for item in items if item.nodeid not in wanted_set]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    collected = {item.nodeid for item in keep}
    for nodeid in wanted:
        if nodeid not in collected and not _covered_by_collector(nodeid):
            _results[nodeid] = {
                "outcome": "error",
                "longrepr": f"{nodeid} was not collected inside the guest "
                "(is its parametrization environment-dependent?)",
                "crash": "not collected in the guest",
                "duration": 0.0,
            }
    _flush()


def pytest_sessionfinish(session: pytest.Session) -> None:
    _flush()
