"""How long-running library code reports progress without knowing who listens.

Library code calls ``progress.step(label)``, ``progress.advance()`` and, for what
the user must know although the work goes on, ``progress.warn(text)``; the CLI
passes a rich-backed implementation, tests and library users get the silent
default (warnings go to logging). Nothing here prints.
"""

from __future__ import annotations

import logging
from typing import Protocol

log = logging.getLogger(__name__)


class Progress(Protocol):
    def step(self, label: str, total: float | None = None) -> None:
        """Begin a new step; ``total`` enables a bar."""

    def advance(self, amount: float = 1) -> None:
        """Advance the current step."""

    def warn(self, text: str) -> None:
        """Something the user must know although the work goes on (one line)."""


class Silent:
    def step(self, label: str, total: float | None = None) -> None:
        pass

    def advance(self, amount: float = 1) -> None:
        pass

    def warn(self, text: str) -> None:
        log.warning("%s", text)
