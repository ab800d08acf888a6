"""Running the library OS's programs in guests: the bypass UDP echo server and the load
generator, with their JSON outputs parsed into typed results.

The echo server drives a data NIC through vfio-pci (guest NIC with iommu = true);
the load generator uses the peer guest's kernel UDP sockets. This module starts
and stops those programs over SSH; it does not bind drivers itself beyond calling
``Guest.bind_nic``.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass
from typing import Any

from harness.errors import GuestError
from harness.guest import Guest

STATS = "/run/udp_echo.json"
LOG = "/run/udp_echo.log"


@dataclass(frozen=True)
class EchoOptions:
    queues: int = 1
    scheme: str = "pool"  # pool | fixed
    mode: str = "poll"  # poll | arm
    port: int = 7
    ring: int = 0  # 0: the device's maximum
    pool_buffers: int = 0  # 0: the program's default (128)
    buffer_size: int = 0
    stride: int = 0
    rss: bool = True
    # rings over 256 entries in normal pages: only on the project's QEMU (patch 0009)
    small_page_rings: bool = False

    def argv(self, bdf: str, address: str) -> list[str]:
        args = ["udp_echo", "--pci", bdf, "--ip", address, "--queues", str(self.queues),
                "--scheme", self.scheme, "--mode", self.mode, "--port", str(self.port),
                "--stats", STATS]
        if not self.rss:
            args.append("--no-rss")
        if self.small_page_rings:
            args.append("--rings-in-small-pages")
        for flag, value in (("--ring", self.ring), ("--pool-buffers", self.pool_buffers),
                            ("--buffer-size", self.buffer_size), ("--stride", self.stride)):
            if value:
                args += [flag, str(value)]
        return args


@dataclass(frozen=True)
class LoadResult:
    sent: int
    received: int
    lost: int
    bad: int
    achieved_pps: float
    offered_pps: float
    p50_us: float | None
    p99_us: float | None
    raw: dict[str, Any]

    @property
    def loss_ratio(self) -> float:
        return self.lost / self.sent if self.sent else 0.0


class EchoServer:
    """udp_echo running on one guest's data NIC (bound to vfio-pci while it runs)."""

    def __init__(self, guest: Guest, nic: int = 0, opts: EchoOptions | None = None) -> None:
        self.guest = guest
        self.nic = nic
        self.opts = opts or EchoOptions()
        self.bdf = ""
        self.running = False

    def start(self, timeout: float = 30.0) -> EchoServer:
        g = self.guest
        self.bdf = g.bind_nic(self.nic, "vfio-pci")
        address = str(g.plan.nics[self.nic].address)
        cmd = " ".join(shlex.quote(a) for a in self.opts.argv(self.bdf, address))
        g.run(f"rm -f {STATS}; {cmd} > {LOG} 2>&1 &", check=True)
        self.running = True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if g.run(f"test -s {STATS}").ok:
                return self
            if not g.run("pidof udp_echo").ok:
                break
            time.sleep(0.1)
        log = g.run(f"cat {LOG}").stdout.strip()
        self.running = False
        g.bind_nic(self.nic, "virtio-pci")  # the kernel driver gets its NIC back
        raise GuestError(f"{g.name}: udp_echo did not start: {log[-300:]}", guest=g.name)

    def stats(self) -> dict[str, Any]:
        out = self.guest.run(f"cat {STATS}", check=True).stdout
        try:
            return dict(json.loads(out))
        except ValueError as exc:
            raise GuestError(f"{self.guest.name}: unreadable udp_echo stats: {out[:200]!r}",
                             guest=self.guest.name) from exc

    def pid(self) -> int | None:
        out = self.guest.run("pidof udp_echo").stdout.split()
        return int(out[0]) if out else None

    def stop(self, rebind: bool = True, timeout: float = 20.0) -> dict[str, Any]:
        """SIGTERM, wait for the final stats (with the accounting check), rebind the NIC."""
        g = self.guest
        final: dict[str, Any] = {}
        if self.running:
            g.run("kill -TERM $(pidof udp_echo) 2>/dev/null; true")
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and g.run("pidof udp_echo").ok:
                time.sleep(0.1)
            if g.run("pidof udp_echo").ok:
                g.run("kill -KILL $(pidof udp_echo) 2>/dev/null; true")
                raise GuestError(f"{g.name}: udp_echo ignored SIGTERM", guest=g.name)
            final = self.stats()
            self.running = False
        if rebind:
            g.bind_nic(self.nic, "virtio-pci")
        return final

    def __enter__(self) -> EchoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def loadgen(client: Guest, server: Guest, *, nic: int = 0, port: int = 7, size: int = 64,
            duration: float = 3.0, rate: int = 0, window: int = 4, flows: int = 8,
            timeout_ms: int = 1000, burst: int = 1, warmup: float = 0.5) -> LoadResult:
    """Run udp_loadgen on ``client`` against ``server``'s data NIC address."""
    dst = server.plan.nics[nic].address.ip
    pacing = f"--rate {rate} --burst {burst}" if rate else f"--rate 0 --window {window}"
    cmd = (f"udp_loadgen --dst {dst} --port {port} --size {size} --duration {duration} "
           f"--warmup {warmup} {pacing} --flows {flows} --timeout-ms {timeout_ms} --json")
    res = client.run(cmd, timeout=warmup + duration + 60, check=True)
    try:
        raw = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise GuestError(f"{client.name}: udp_loadgen printed {res.stdout[-200:]!r}",
                         guest=client.name) from exc
    return LoadResult(sent=raw["sent"], received=raw["received"], lost=raw["lost"],
                      bad=raw["bad"], achieved_pps=raw["achieved_pps"],
                      offered_pps=raw["offered_pps"], p50_us=raw.get("p50_us"),
                      p99_us=raw.get("p99_us"), raw=raw)
