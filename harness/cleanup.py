"""Remove what a testbed owns: its processes, taps, namespace and state folder.

Works only from the state directory (never from memory), so the same code serves
``harness down``, a Ctrl-C, the end of a test session and ``harness gc`` after a
crash. Every step tolerates a resource that is already gone, and runs whatever the
step before it raised; kills are confirmed.

What belongs to a testbed is decided by whole path components (testbed ``tb`` never
matches ``tb2``'s QEMU) and, for host-wide names, by claims (claims.py): nothing
that a live harness process is still creating is ever removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness import claims, net
from harness.plan import NETNS_PREFIX, TAP_PREFIX
from harness.state import REMOVING, Resource, TestbedState, all_states, unfinished

log = logging.getLogger(__name__)


@dataclass
class Removed:
    processes: list[int] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)

    def extend(self, other: Removed) -> None:
        self.processes += other.processes
        self.links += other.links
        self.namespaces += other.namespaces
        self.dirs += other.dirs

    @property
    def count(self) -> int:
        return len(self.processes) + len(self.links) + len(self.namespaces) + len(self.dirs)


def cmdline(pid: int) -> str:
    """A process's command line, arguments joined by spaces ('' when it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


def names_path(cmdline: str, folder: str) -> bool:
    """Does ``cmdline`` name ``folder`` or a path inside it, as whole path components?

    QEMU's command line holds the state folder in options such as
    ``path=/state/tb/a/console.sock``: ``/state/tb`` is named there, ``/state/t`` and
    ``/state/tb2`` are not.
    """
    folder = folder.rstrip("/")
    if not folder:
        return False
    return re.search(rf"(?:^|[\s=,:]){re.escape(folder)}(?:/|[\s,:]|$)", cmdline) is not None


def processes_matching(folder: str) -> list[int]:
    """QEMU processes whose command line names ``folder`` (a state folder) or a path
    inside it."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            cmd = cmdline(int(entry.name))
            if "qemu-system" in cmd and names_path(cmd, folder):
                pids.append(int(entry.name))
    return pids


def kill_confirmed(pids: list[int], timeout: float = 5.0) -> list[int]:
    """SIGKILL each pid and wait until it is gone (or a zombie of someone else)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    left = list(pids)
    while left and time.monotonic() < deadline:
        for pid in list(left):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done == pid:
                    left.remove(pid)
                    continue
            except ChildProcessError:
                pass
            stat = Path(f"/proc/{pid}/stat")
            if not stat.exists() or ") Z" in stat.read_text():
                left.remove(pid)
        time.sleep(0.01)
    return [p for p in pids if p not in left]


def _step(what: str, fn: Callable[[], object]) -> None:
    """One teardown step: a failure is logged and the next step still runs."""
    try:
        fn()
    except Exception as exc:  # teardown must go on whatever one step raised
        log.warning("teardown: %s failed: %s", what, exc)


def teardown(st: TestbedState) -> Removed:
    """Remove everything recorded for a testbed, newest first, then its folder."""
    out = Removed()
    resources = st.resources()

    def kill() -> None:
        pids = {int(r.name) for r in resources if r.kind == "process" and r.match
                and names_path(cmdline(int(r.name)), r.match)}
        pids.update(processes_matching(str(st.dir)))
        out.processes = kill_confirmed(sorted(pids))

    _step("killing QEMU", kill)
    for r in reversed(resources):
        if r.kind == "tap":
            def tap(r: Resource = r) -> None:
                if net.delete_link(r.name) or (r.netns and net.delete_link(r.name, r.netns)):
                    out.links.append(r.name)
                _release_mine(r.name, st)
            _step(f"deleting tap {r.name}", tap)
        elif r.kind == "netns":
            def ns(r: Resource = r) -> None:
                if net.delete_netns(r.name):
                    out.namespaces.append(r.name)
                _release_mine(r.name, st)
            _step(f"deleting namespace {r.name}", ns)
    for r in resources:
        if r.kind == "dir" and Path(r.name).exists():
            _step(f"removing {r.name}", lambda r=r: shutil.rmtree(r.name, ignore_errors=True))
            out.dirs.append(r.name)
    if st.dir.exists():
        # out of sight first (a hidden name), so no reader sees a half-removed testbed
        gone = st.dir.with_name(f".{st.dir.name}{REMOVING}{os.getpid()}")
        try:
            os.rename(st.dir, gone)
        except OSError:
            gone = st.dir
        shutil.rmtree(gone, ignore_errors=True)
        out.dirs.append(str(st.dir))
    return out


def _release_mine(name: str, st: TestbedState) -> None:
    c = claims.owner(name)
    if c is not None and Path(c.state_dir) == st.dir:
        claims.release(name)


def taps_named(cmdline: str) -> set[str]:
    """Harness taps a QEMU command line opens (``ifname=hbt...``)."""
    return set(re.findall(rf"ifname=({re.escape(TAP_PREFIX)}[\w-]+)", cmdline))


def taps_in_use(ignore: str = "") -> set[str]:
    """Taps held by any running QEMU, whichever state folder (or user) started it;
    QEMUs whose command line contains ``ignore`` (a state folder) are left out."""
    used: set[str] = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            cmd = cmdline(int(entry.name))
            if "qemu-system" in cmd and not (ignore and names_path(cmd, ignore)):
                used |= taps_named(cmd)
    return used


def gc(everything: bool = False) -> Removed:
    """Remove testbeds whose owner died without cleaning up (or all with ``everything``),
    plus harness-named taps and namespaces that nobody owns.

    Never removed: a tap or namespace a running QEMU uses (whoever started it), one
    with a live claim (a harness still creating it, from any state folder), or one a
    live testbed of this state folder records. Names are listed *before* the state
    folders are read: a testbed records a name before it creates it, so a name that
    exists at listing time is seen in its record.
    """
    out = Removed()
    namespaces = net.list_netns(NETNS_PREFIX)
    taps = net.list_links(TAP_PREFIX)
    for d in unfinished():
        shutil.rmtree(d, ignore_errors=True)
        out.dirs.append(str(d))
    live_names: set[str] = set()
    for st in all_states():
        abandoned = not st.detached and not st.owner_alive()
        if everything or abandoned:
            out.extend(teardown(st))
        else:
            live_names.add(st.name)
            live_names.update(str(r.name) for r in st.resources())
    used = taps_in_use()

    def owned(name: str) -> bool:
        c = claims.owner(name)
        return name in live_names or (c is not None and c.live())

    for ns in namespaces:
        if owned(ns) or ns.removeprefix(NETNS_PREFIX) in live_names:
            continue
        if set(net.list_links(TAP_PREFIX, ns)) & used:
            log.info("keeping namespace %s: a running QEMU uses its taps", ns)
            continue
        if net.delete_netns(ns):
            out.namespaces.append(ns)
        claims.release(ns)
    for tap in taps:
        if not owned(tap) and tap not in used and net.delete_link(tap):
            out.links.append(tap)
            claims.release(tap)
    for c in claims.all_claims():  # claims whose owner died and whose object is gone
        if not c.live() and c.name not in namespaces and c.name not in taps:
            claims.release(c.name)
    return out
