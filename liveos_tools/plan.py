"""Planned changes: every command that writes to a stick builds a Plan first.

A Plan lists exactly what will happen: the commands it will run and the byte
ranges it will write. `--dry-run` prints it, the CLI and the TUI show it before
asking for confirmation, and `execute()` runs it step by step. Steps keep their
actions as closures so the plan that is shown is the plan that runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

#: progress(step_index, step_count, summary) - called before each step runs.
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class ByteRange:
    """A write the plan will make: `length` bytes at `offset` of `path`."""

    path: str
    offset: int
    length: int
    what: str

    def render(self) -> str:
        end = self.offset + self.length
        return f"write {self.path} bytes {self.offset}..{end} ({self.length} bytes): {self.what}"


@dataclass(frozen=True)
class Step:
    summary: str
    #: exactly the programs the step runs, in order, one argv each (shown as `run:` lines)
    commands: tuple[tuple[str, ...], ...] = ()
    writes: tuple[ByteRange, ...] = ()
    action: Callable[[], None] | None = field(default=None, compare=False, repr=False)

    def render(self) -> list[str]:
        lines = [self.summary]
        lines.extend("  run: " + " ".join(argv) for argv in self.commands)
        lines.extend("  " + w.render() for w in self.writes)
        return lines


@dataclass
class Plan:
    title: str
    target: str
    steps: list[Step] = field(default_factory=list)
    #: what will be lost if the plan runs (shown in the confirmation).
    destroys: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(
        self,
        summary: str,
        action: Callable[[], None] | None = None,
        *,
        argv: Sequence[str] = (),
        commands: Sequence[Sequence[str]] = (),
        writes: tuple[ByteRange, ...] | list[ByteRange] = (),
    ) -> None:
        """`argv` for a step that runs one program, `commands` for several."""
        cmds = ((tuple(argv),) if argv else ()) + tuple(tuple(c) for c in commands)
        self.steps.append(Step(summary, cmds, tuple(writes), action))

    @property
    def destructive(self) -> bool:
        return bool(self.destroys)

    def render(self) -> str:
        lines = [f"{self.title}: {self.target}"]
        for i, step in enumerate(self.steps, 1):
            first, *rest = step.render()
            lines.append(f"{i:2d}. {first}")
            lines.extend(f"    {r}" for r in rest)
        lines.extend(f"note: {n}" for n in self.notes)
        lines.extend(f"destroys: {d}" for d in self.destroys)
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "target": self.target,
            "steps": [
                {
                    "summary": s.summary,
                    "commands": [list(c) for c in s.commands],
                    "writes": [w.__dict__ for w in s.writes],
                }
                for s in self.steps
            ],
            "destroys": self.destroys,
            "notes": self.notes,
        }

    def execute(self, progress: Progress | None = None) -> None:
        for i, step in enumerate(self.steps):
            if progress:
                progress(i, len(self.steps), step.summary)
            if step.action is not None:
                step.action()
        if progress:
            progress(len(self.steps), len(self.steps), "done")
