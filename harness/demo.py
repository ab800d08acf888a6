"""``harness demo``: boot two guests with 4-queue data NICs, show them working, tear down.

Traffic uses the guests' kernel stacks over the data NICs, across the bridge in
the testbed's namespace: ICMP echo and a TCP bulk transfer with busybox nc.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from harness import config
from harness.errors import GuestError
from harness.guest import Guest
from harness.progress import Progress
from harness.testbed import Testbed

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
    dst = str(b.plan.nics[0].address.ip)
    before = rx_packets_per_queue(b)
    ping = a.run(f"ping -c 20 -i 0.05 -W 2 {dst}", timeout=60).stdout
    m = re.search(r"(\d+) packets transmitted, (\d+) packets received", ping)
    rtt = re.search(r"min/avg/max = [\d.]+/([\d.]+)/", ping)
    if not m:
        raise GuestError(f"{a.name}: ping printed no summary: {ping[-200:]!r}", guest=a.name)
    b.run("nc -l -p 5001 > /dev/null 2>&1 &", check=True)
    res = a.run(f"sleep 0.3; dd if=/dev/zero bs=64k count={TRANSFER_MB * 16} 2>/dev/null "
                f"| nc -w 5 {dst} 5001", timeout=120, check=True)
    after = rx_packets_per_queue(b)
    used = sum(1 for x, y in zip(before, after, strict=False) if y > x)
    return Traffic(sent=int(m.group(1)), received=int(m.group(2)),
                   rtt_avg_ms=float(rtt.group(1)) if rtt else 0.0,
                   tcp_mbit=TRANSFER_MB * 8 / res.seconds, rx_queues_used=used)


def run_demo(progress: Progress) -> tuple[Testbed, Traffic]:
    """Bring the demo testbed up and measure traffic; the caller tears it down."""
    tb = Testbed.up(demo_config(), progress=progress)
    try:
        progress.step("sending traffic between the guests over the data NICs")
        return tb, traffic(tb.guest("a"), tb.guest("b"))
    except BaseException:
        tb.down()
        raise
