"""Kernel-stack traffic between guests over their data NICs (busybox ping and nc).

Throughput is timed at the receiver: the transfer counts as done when the
receiving nc has seen the sender close, so socket buffers cannot flatter it.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from harness.errors import GuestError
from harness.guest import Guest


@dataclass(frozen=True)
class PingResult:
    sent: int
    received: int
    rtt_avg_ms: float


def ping(src: Guest, dst: Guest, count: int = 5, interval: float = 0.2,
         wait_s: int = 2) -> PingResult:
    ip = dst.plan.nics[0].address.ip
    out = src.run(f"ping -c {count} -i {interval} -W {wait_s} {ip}",
                  timeout=count * interval + wait_s + 30).stdout
    m = re.search(r"(\d+) packets transmitted, (\d+) packets received", out)
    if not m:
        raise GuestError(f"{src.name}: ping printed no summary: {out[-200:]!r}", guest=src.name)
    rtt = re.search(r"min/avg/max = [\d.]+/([\d.]+)/", out)
    return PingResult(int(m.group(1)), int(m.group(2)), float(rtt.group(1)) if rtt else 0.0)


def tcp_mbit(src: Guest, dst: Guest, megabytes: int = 8, port: int = 5001,
             timeout: float = 120.0) -> float:
    """Send ``megabytes`` over TCP from src to dst's data0; Mbit/s seen by the receiver."""
    ip = dst.plan.nics[0].address.ip
    done = f"/tmp/rx-{port}"
    # the receiver counts bytes with the socket as its stdin (-e), so nc's own stdin
    # reaching EOF cannot cut the transfer short
    dst.run(f"rm -f {done}; printf '#!/bin/sh\\nwc -c > {done}.part && mv {done}.part {done}\\n'"
            f" > {done}.sh && chmod +x {done}.sh && "
            f"(nc -l -p {port} -e {done}.sh > /dev/null 2>&1 &)", check=True)
    time.sleep(0.2)
    start = time.monotonic()
    src.run(f"dd if=/dev/zero bs=64k count={megabytes * 16} 2>/dev/null | nc {ip} {port}",
            timeout=timeout, check=True)
    while True:
        r = dst.run(f"cat {done} 2>/dev/null")
        if r.ok and r.stdout.strip():
            break
        if time.monotonic() - start > timeout:
            raise GuestError(f"{dst.name}: TCP transfer from {src.name} did not finish",
                             guest=dst.name)
        time.sleep(0.05)
    elapsed = time.monotonic() - start
    got = int(r.stdout.strip())
    if got != megabytes * 2**20:
        raise GuestError(f"{dst.name}: received {got} of {megabytes * 2**20} bytes",
                         guest=dst.name)
    return megabytes * 2**20 * 8 / 1e6 / elapsed
