"""``harness demo``: boot two guests with 4-queue data NICs, show them working, tear down.

Traffic uses the guests' kernel stacks over the data NICs, across the bridge in
the testbed's namespace: ICMP echo and a TCP bulk transfer with busybox nc.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from harness import config
from harness.guest import Guest
from harness.progress import Progress
from harness.testbed import Testbed
from harness.traffic import ping, tcp_mbit

TRANSFER_MB = 16


@dataclass(frozen=True)
class Traffic:
    sent: int
    received: int
    rtt_avg_ms: float
    tcp_mbit: float
    rx_queues_used: int


def demo_config() -> config.TestbedConfig:
    text = resources.files("harness").joinpath("specs/demo.toml").read_text()
    return config.parse(text)


def rx_packets_per_queue(g: Guest, nic: int = 0) -> list[int]:
    out = g.run(f"ethtool -S data{nic} | grep -E 'rx_queue_[0-9]+_packets'", check=True).stdout
    return [int(v) for v in re.findall(r"rx_queue_\d+_packets:\s*(\d+)", out)]


def traffic(a: Guest, b: Guest) -> Traffic:
    before = rx_packets_per_queue(b)
    p = ping(a, b, count=20, interval=0.05)
    mbit = tcp_mbit(a, b, TRANSFER_MB)
    after = rx_packets_per_queue(b)
    used = sum(1 for x, y in zip(before, after, strict=False) if y > x)
    return Traffic(sent=p.sent, received=p.received, rtt_avg_ms=p.rtt_avg_ms, tcp_mbit=mbit,
                   rx_queues_used=used)


def run_demo(progress: Progress) -> tuple[Testbed, Traffic]:
    """Bring the demo testbed up and measure traffic; the caller tears it down."""
    tb = Testbed.up(demo_config(), progress=progress)
    try:
        progress.step("sending traffic between the guests over the data NICs")
        return tb, traffic(tb.guest("a"), tb.guest("b"))
    except BaseException as exc:
        tb.down(error=exc)
        raise
