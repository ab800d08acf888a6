"""How the CLI shows things: rich on a terminal, plain text in pipes, JSON on request.

Only the CLI edge uses this module; library code reports through logging and the
Progress protocol. Tables are given as column names plus rows of plain values,
so the three renderings always carry the same figures.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table


class Output:
    def __init__(self, json_mode: bool = False) -> None:
        self.json_mode = json_mode
        self.tty = sys.stdout.isatty() and not json_mode
        self.console = Console(highlight=False) if self.tty else None
        self.err = Console(stderr=True, highlight=False)
        self._json: dict[str, Any] = {}

    def table(self, key: str, title: str, columns: Sequence[str],
              rows: Sequence[Sequence[Any]]) -> None:
        if self.json_mode:
            self._json[key] = [dict(zip(columns, r, strict=True)) for r in rows]
            return
        if self.console is not None:
            t = Table(title=title, title_justify="left")
            for c in columns:
                t.add_column(c)
            for r in rows:
                t.add_row(*[_cell(v) for v in r])
            self.console.print(t)
            return
        print(f"# {title}")
        print("\t".join(columns))
        for r in rows:
            print("\t".join(_cell(v) for v in r))

    def data(self, key: str, value: Any) -> None:
        """A value that only the JSON rendering carries (summaries, raw samples)."""
        if self.json_mode:
            self._json[key] = value

    def line(self, text: str) -> None:
        if self.json_mode:
            return
        if self.console is not None:
            self.console.print(text)
        else:
            print(text)

    def flush(self) -> None:
        if self.json_mode:
            print(json.dumps(self._json, indent=2, default=str))

    def progress(self) -> StepProgress:
        return StepProgress(self)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


class StepProgress:
    """The Progress protocol (harness/progress.py) drawn with rich on stderr."""

    def __init__(self, out: Output) -> None:
        self._live = out.err.is_terminal
        self._err = out.err
        self._rich: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> StepProgress:
        if self._live:
            self._rich = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                                  BarColumn(), TimeElapsedColumn(), console=self._err,
                                  transient=True)
            self._rich.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._rich is not None:
            self._rich.stop()

    def step(self, label: str, total: float | None = None) -> None:
        if self._rich is None:
            print(f"... {label}", file=sys.stderr, flush=True)
            return
        if self._task is not None:
            self._rich.update(self._task, completed=self._rich.tasks[-1].total or 1,
                              visible=False)
        self._task = self._rich.add_task(label, total=total)

    def advance(self, amount: float = 1) -> None:
        if self._rich is not None and self._task is not None:
            self._rich.advance(self._task, amount)

    def warn(self, text: str) -> None:
        if self._rich is not None:
            self._rich.console.print(f"harness: warning: {text}", highlight=False)
        else:
            print(f"harness: warning: {text}", file=sys.stderr, flush=True)
