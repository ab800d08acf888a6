"""Keeping a cleanup whole: SIGINT and SIGTERM that arrive during it are held.

A second Ctrl-C (or a SIGTERM from a CI runner) in the middle of a teardown would
leave half a testbed behind. ``held()`` swaps in handlers that only note the
signal, and once the block ends restores the previous handlers and raises each
noted signal again, so it takes effect exactly as it would have (KeyboardInterrupt
under the CLI), only after the cleanup finished.

Python runs signal handlers in the main thread only; from any other thread
``held()`` does nothing.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

HELD = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def held() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: noted.append(signum))
                for sig in HELD}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        for sig in dict.fromkeys(noted):
            signal.raise_signal(sig)
