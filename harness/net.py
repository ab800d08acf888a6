"""Host networking for testbeds: namespaces, bridges, multi-queue taps, qdiscs.

Every data-plane link lives inside a network namespace the harness made, so guest
traffic never reaches a host interface. Commands run iproute2/tc with argument
lists (never a shell). ``tc_argv`` is pure so the qdisc choice is unit tested.
"""

from __future__ import annotations

import subprocess
import uuid

from harness.config import Netem
from harness.errors import EnvironmentProblem, NetError


def _ip(argv: list[str], what: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise EnvironmentProblem(f"{argv[0]} is missing; install iproute2 "
                                 "(scripts/setup does)") from exc
    if check and res.returncode != 0:
        msg = res.stderr.strip().splitlines()[-1:] or ["(no message)"]
        hint = " (the harness needs root or CAP_NET_ADMIN)" if "ermission" in msg[0] else ""
        raise NetError(f"cannot {what}: {msg[0]}{hint}")
    return res


def netns_exec(ns: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def create_netns(ns: str) -> None:
    _ip(["ip", "netns", "add", ns], f"create network namespace {ns}")
    _ip(["ip", "-n", ns, "link", "set", "lo", "up"], f"bring up lo in {ns}")
    # With br_netfilter loaded on the host, bridges hand frames to the IP firewall
    # hooks, which drop malformed IPv4 (bad checksum, length, header) before the
    # peer guest sees it: a testbed bridge must be a plain wire.
    for table in ("iptables", "ip6tables", "arptables"):
        _ip(netns_exec(ns, ["sysctl", "-q", "-w", f"net.bridge.bridge-nf-call-{table}=0"]),
            "", check=False)


def delete_netns(ns: str) -> bool:
    return _ip(["ip", "netns", "del", ns], f"delete namespace {ns}", check=False).returncode == 0


def list_netns(prefix: str) -> list[str]:
    out = _ip(["ip", "netns", "list"], "list namespaces", check=False).stdout
    return [ln.split()[0] for ln in out.splitlines() if ln.startswith(prefix)]


def create_bridge(ns: str, bridge: str) -> None:
    _ip(["ip", "-n", ns, "link", "add", bridge, "type", "bridge"], f"create bridge {bridge}")
    # no STP and no forwarding delay: links come up at once
    _ip(["ip", "-n", ns, "link", "set", bridge, "type", "bridge", "stp_state", "0",
         "forward_delay", "0"], f"configure bridge {bridge}")
    _ip(["ip", "-n", ns, "link", "set", bridge, "up"], f"bring up bridge {bridge}")


def create_tap(tap: str, multi_queue: bool) -> None:
    # QEMU opens a one-queue tap without IFF_MULTI_QUEUE and the kernel refuses the
    # open if the flag differs from how the tap was made
    argv = ["ip", "tuntap", "add", "dev", tap, "mode", "tap"]
    _ip(argv + (["multi_queue"] if multi_queue else []), f"create tap {tap}")


def attach_tap(tap: str, ns: str, bridge: str) -> None:
    """Move a tap QEMU already opened into the namespace and onto its bridge."""
    _ip(["ip", "link", "set", tap, "netns", ns], f"move tap {tap} into {ns}")
    _ip(["ip", "-n", ns, "link", "set", tap, "master", bridge], f"attach {tap} to {bridge}")
    _ip(["ip", "-n", ns, "link", "set", tap, "up"], f"bring up {tap}")


def set_queue_len(ns: str, dev: str, frames: int) -> None:
    """Frames a tap keeps for a guest that is not taking them (its txqueuelen); beyond
    that the kernel drops. The default (1000) hides how much RX memory a guest posted."""
    _ip(["ip", "-n", ns, "link", "set", dev, "txqueuelen", str(frames)],
        f"set the queue length of {dev}")


def delete_link(name: str, ns: str = "") -> bool:
    argv = ["ip", *(["-n", ns] if ns else []), "link", "del", name]
    return _ip(argv, f"delete {name}", check=False).returncode == 0


def list_links(prefix: str, ns: str = "") -> list[str]:
    argv = ["ip", *(["-n", ns] if ns else []), "-o", "link", "show"]
    out = _ip(argv, "list links", check=False).stdout
    names = []
    for ln in out.splitlines():
        parts = ln.split(": ", 2)
        if len(parts) > 1:
            name = parts[1].split("@")[0]
            if name.startswith(prefix):
                names.append(name)
    return names


def tc_argv(dev: str, netem: Netem) -> list[str]:
    """The tc command for a NIC's impairments: netem when delay/loss, else tbf for rate."""
    if netem.needs_netem:
        argv = ["tc", "qdisc", "replace", "dev", dev, "root", "netem"]
        if netem.delay_ms:
            argv += ["delay", f"{netem.delay_ms:g}ms"]
            if netem.jitter_ms:
                argv += [f"{netem.jitter_ms:g}ms"]
        if netem.loss_pct:
            argv += ["loss", f"{netem.loss_pct:g}%"]
        if netem.rate_mbit:
            argv += ["rate", f"{netem.rate_mbit:g}mbit"]
        return argv
    burst_kb = max(32, int(netem.rate_mbit * 1000 / 8 / 100))  # ~10 ms worth of bytes
    return ["tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate",
            f"{netem.rate_mbit:g}mbit", "burst", f"{burst_kb}kb", "latency", "50ms"]


def apply_netem(ns: str, dev: str, netem: Netem) -> None:
    if netem.empty:
        return
    res = _ip(netns_exec(ns, tc_argv(dev, netem)), f"set impairments on {dev}", check=False)
    if res.returncode != 0:
        if "unknown" in res.stderr.lower() and netem.needs_netem:
            raise EnvironmentProblem(
                "netem delay/loss needs the host kernel's sch_netem, which this kernel lacks "
                "('modprobe sch_netem' failed or it is not built); keep only rate_mbit, "
                "or run on a host with sch_netem")
        raise NetError(f"cannot set impairments on {dev}: {res.stderr.strip()[:200]}")


def qdisc_supported(kind: str) -> bool:
    """Probe a qdisc kind on a dummy link in a throwaway namespace."""
    ns = f"hb-probe-{uuid.uuid4().hex[:8]}"
    try:
        create_netns(ns)
    except (NetError, EnvironmentProblem):
        return False
    try:
        if _ip(["ip", "-n", ns, "link", "add", "p0", "type", "dummy"], "", False).returncode:
            return False
        argv = ["tc", "qdisc", "add", "dev", "p0", "root", kind]
        if kind == "tbf":
            argv += ["rate", "1mbit", "burst", "32kb", "latency", "50ms"]
        return _ip(netns_exec(ns, argv), "", False).returncode == 0
    finally:
        delete_netns(ns)

