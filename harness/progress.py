"""How long-running library code reports progress without knowing who listens.

Library code calls ``progress.step(label)`` and ``progress.advance()``; the CLI
passes a rich-backed implementation, tests and library users get the silent
default. Nothing here prints.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def step(self, label: str, total: float | None = None) -> None:
        """Begin a new step; ``total`` enables a bar."""

    def advance(self, amount: float = 1) -> None:
        """Advance the current step."""


class Silent:
    def step(self, label: str, total: float | None = None) -> None:
        pass

    def advance(self, amount: float = 1) -> None:
        pass
