"""A synchronous QMP client for the rest of the harness, over qemu.qmp's asyncio client.

Each Monitor owns one private event loop running in its own daemon thread, so it
never touches the caller's loop (pytest's, the CLI's, or none). Every call has a
timeout. Every event (SHUTDOWN, RESET, STOP, RESUME, GUEST_PANICKED,
NIC_RX_FILTER_CHANGED, DEVICE_DELETED, ...) is recorded as it arrives and can be
waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from qemu.qmp import QMPClient
from qemu.qmp.error import QMPError as _LibQMPError
from qemu.qmp.protocol import ConnectError

from harness.errors import QMPError

log = logging.getLogger(__name__)
T = TypeVar("T")



class Monitor:
    """One QMP connection. Use as a context manager or call close()."""

    def __init__(self, socket_path: str, name: str, timeout: float = 10.0) -> None:
        self.name = name
        self.timeout = timeout
        self._events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"qmp-{name}",
                                        daemon=True)
        self._thread.start()
        self._client = QMPClient(name)
        self._closed = False
        try:
            self._call(self._connect(socket_path), f"connect to {socket_path}")
        except BaseException:
            # QEMU serves one QMP client at a time: a half-made connection left open
            # would block the next one (e.g. the 'quit' of a cleanup after Ctrl-C)
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(2)
            self._closed = True
            self._stop_loop()
            raise

    async def _connect(self, path: str) -> None:
        await self._client.connect(path)
        self._pump = asyncio.ensure_future(self._collect())

    async def _collect(self) -> None:
        async for event in self._client.events:
            rec = {"event": event["event"], "data": event.get("data", {}),
                   "time": time.time()}
            with self._cond:
                self._events.append(rec)
                self._cond.notify_all()

    def _call(self, coro: Coroutine[Any, Any, T], what: str, timeout: float | None = None) -> T:
        if self._closed:
            coro.close()
            raise QMPError(f"{self.name}: QMP connection is closed")
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout or self.timeout)
        except TimeoutError as exc:
            fut.cancel()
            raise QMPError(f"{self.name}: QMP {what} timed out after "
                           f"{timeout or self.timeout:g} s") from exc
        except (ConnectError, _LibQMPError, OSError, EOFError) as exc:
            raise QMPError(f"{self.name}: QMP {what} failed: {exc}") from exc

    def cmd(self, command: str, timeout: float | None = None, **args: Any) -> Any:
        return self._call(self._client.execute(command, args or None), f"'{command}'", timeout)

    def hmp(self, line: str) -> str:
        return str(self.cmd("human-monitor-command", **{"command-line": line}))

    # --- events -----------------------------------------------------------------

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        with self._cond:
            return [e for e in self._events if name is None or e["event"] == name]

    def wait_event(self, name: str, timeout: float = 10.0, after: int = 0,
                   match: dict[str, Any] | None = None) -> dict[str, Any]:
        """Wait for event ``name`` among events recorded at index >= ``after``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for e in self._events[after:]:
                    if e["event"] == name and all(e["data"].get(k) == v
                                                  for k, v in (match or {}).items()):
                        return e
                left = deadline - time.monotonic()
                if left <= 0:
                    raise QMPError(f"{self.name}: no {name} event within {timeout:g} s")
                self._cond.wait(left)

    def event_count(self) -> int:
        with self._cond:
            return len(self._events)

    # --- lifecycle ----------------------------------------------------------------

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()

    async def _shutdown(self) -> None:
        pump = getattr(self, "_pump", None)
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        await self._client.disconnect()

    def close(self) -> None:
        if self._closed:
            return
        try:
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
            fut.result(3)
        except Exception as exc:  # the peer may already be gone; closing must not fail
            log.debug("%s: QMP disconnect: %s", self.name, exc)
        self._closed = True
        self._stop_loop()

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
