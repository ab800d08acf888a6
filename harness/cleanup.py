"""Remove what a testbed owns: its processes, taps, namespace and state folder.

Works only from the state directory (never from memory), so the same code serves
``harness down``, a Ctrl-C, the end of a test session and ``harness gc`` after a
crash. Every step tolerates a resource that is already gone; kills are confirmed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import net
from harness.plan import NETNS_PREFIX, TAP_PREFIX
from harness.state import TestbedState, all_states

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


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


def processes_matching(text: str) -> list[int]:
    """QEMU processes whose command line names ``text`` (a testbed's state folder)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            cmd = _cmdline(int(entry.name))
            if "qemu-system" in cmd and text in cmd:
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


def teardown(st: TestbedState) -> Removed:
    """Remove everything recorded for a testbed, newest first, then its folder."""
    out = Removed()
    resources = st.resources()
    pids = {int(r.name) for r in resources if r.kind == "process"
            and r.match and r.match in _cmdline(int(r.name))}
    pids.update(processes_matching(str(st.dir)))
    out.processes = kill_confirmed(sorted(pids))
    for r in reversed(resources):
        if r.kind == "tap":
            if net.delete_link(r.name) or (r.netns and net.delete_link(r.name, r.netns)):
                out.links.append(r.name)
        elif r.kind == "netns" and net.delete_netns(r.name):
            out.namespaces.append(r.name)
    for r in resources:
        if r.kind == "dir" and Path(r.name).exists():
            shutil.rmtree(r.name, ignore_errors=True)
            out.dirs.append(r.name)
    if st.dir.exists():
        shutil.rmtree(st.dir, ignore_errors=True)
        out.dirs.append(str(st.dir))
    return out


def taps_named(cmdline: str) -> set[str]:
    """Harness taps a QEMU command line opens (``ifname=hbt...``)."""
    return set(re.findall(rf"ifname=({re.escape(TAP_PREFIX)}[\w-]+)", cmdline))


def taps_in_use(ignore: str = "") -> set[str]:
    """Taps held by any running QEMU, whichever state folder (or user) started it;
    QEMUs whose command line contains ``ignore`` (a state folder) are left out."""
    used: set[str] = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            cmd = _cmdline(int(entry.name))
            if "qemu-system" in cmd and not (ignore and ignore in cmd):
                used |= taps_named(cmd)
    return used


def gc(everything: bool = False) -> Removed:
    """Remove testbeds whose owner died without cleaning up (or all with ``everything``),
    plus harness-named taps and namespaces that no live testbed claims.

    A tap or namespace that a running QEMU still uses is never touched, even when this
    state folder does not know it: another user, or a run with another HARNESS_STATE,
    owns it.
    """
    out = Removed()
    live_names: set[str] = set()
    for st in all_states():
        abandoned = not st.detached and not st.owner_alive()
        if everything or abandoned or not st.meta:
            out.extend(teardown(st))
        else:
            live_names.add(st.name)
            live_names.update(str(r.name) for r in st.resources())
    used = taps_in_use()
    for ns in net.list_netns(NETNS_PREFIX):
        if ns in live_names or ns.removeprefix(NETNS_PREFIX) in live_names:
            continue
        if set(net.list_links(TAP_PREFIX, ns)) & used:
            log.info("keeping namespace %s: a running QEMU uses its taps", ns)
            continue
        if net.delete_netns(ns):
            out.namespaces.append(ns)
    for tap in net.list_links(TAP_PREFIX):
        if tap not in live_names and tap not in used and net.delete_link(tap):
            out.links.append(tap)
    return out
