"""Reading a guest's serial console log: readiness marker, panics, tails for reports.

QEMU writes the console to a log file (chardev logfile); the guest's start-up
script prints ``HARNESS-READY`` once its SSH server listens. Reading the file
incrementally is cheap and needs no connection, so nothing polls SSH.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

READY_RE = re.compile(r"HARNESS-READY host=(\S+) uptime=([0-9.]+)")
PANIC_RE = re.compile(r"Kernel panic - not syncing[^\r\n]*")


@dataclass
class ConsoleLog:
    path: Path
    _offset: int = 0
    _text: str = ""

    def poll(self) -> str:
        """Read what was appended since the last poll; returns the new text."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return ""
        self._offset += len(data)
        new = data.decode(errors="replace")
        self._text += new
        return new

    @property
    def text(self) -> str:
        return self._text

    def ready(self) -> float | None:
        """Guest uptime at readiness, if the marker was seen."""
        m = READY_RE.search(self._text)
        return float(m.group(2)) if m else None

    def panic(self) -> str | None:
        m = PANIC_RE.search(self._text)
        return m.group(0).strip() if m else None

    def tail(self, lines: int = 30) -> str:
        self.poll()
        return "\n".join(self._text.splitlines()[-lines:])
