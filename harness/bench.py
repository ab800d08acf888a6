"""``harness bench boot``: how fast guests come up and answer, measured on real guests.

Each figure is a sample per run; the table reports median, min and max. The
testbeds are made and removed through the same Testbed API the tests use.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from harness import config
from harness.progress import Progress, Silent
from harness.stats import Summary, summarize
from harness.testbed import Testbed

TARGETS = {"ready_s": 4.0, "exec_rtt_ms": 50.0, "parallel_ready_s": 30.0}


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    summary: Summary
    target: float | None

    @property
    def meets(self) -> bool | None:
        return None if self.target is None else self.summary.median <= self.target


def _one_guest_spec(i: int, image: str) -> config.TestbedConfig:
    return config.parse(f"""
name = "bench{i}"
[[network]]
name = "data"
[[guest]]
name = "g"
image = "{image}"
  [[guest.nic]]
  network = "data"
  queues = 4
""")


def _parallel_spec(n: int, image: str) -> config.TestbedConfig:
    guests = "".join(f"""
[[guest]]
name = "g{i}"
vcpus = 1
memory = "256M"
image = "{image}"
  [[guest.nic]]
  network = "data"
  queues = 2
""" for i in range(n))
    return config.parse(f'name = "benchpar"\nboot_timeout_s = 300\n'
                        f'[[network]]\nname = "data"\n{guests}')


def pss_mib(pid: int) -> float:
    """Proportional set size of a process (shared pages split among their users)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


def bench_boot(runs: int = 5, parallel: int = 8, image: str = "minimal",
               progress: Progress | None = None) -> list[Metric]:
    progress = progress or Silent()
    samples: dict[str, list[float]] = {"ready_s": [], "first_ssh_s": [], "exec_rtt_ms": [],
                                       "idle_pss_mib": [], "parallel_ready_s": []}
    for i in range(runs):
        progress.step(f"single guest, run {i + 1}/{runs}")
        with Testbed.up(_one_guest_spec(i, image), verify=False) as tb:
            g = tb.guest("g")
            g.run("true", check=True)
            t0 = g.timings["launch"]
            samples["ready_s"].append(g.timings["ready"] - t0)
            samples["first_ssh_s"].append(time.monotonic() - t0)
            rtts = []
            for _ in range(20):
                rtts.append(g.run("true").seconds * 1000)
            samples["exec_rtt_ms"].append(summarize(rtts).median)
            time.sleep(2)  # let boot-time page faults settle
            if g.pid:
                samples["idle_pss_mib"].append(pss_mib(g.pid))
    if parallel:
        for i in range(runs):
            progress.step(f"{parallel} guests in parallel, run {i + 1}/{runs}")
            t0 = time.monotonic()
            with Testbed.up(_parallel_spec(parallel, image), verify=False) as tb:
                last = max(g.timings["ready"] for g in tb)
                samples["parallel_ready_s"].append(last - t0)
    labels = {
        "ready_s": ("QEMU start to ready signal", "s"),
        "first_ssh_s": ("QEMU start to first SSH command done", "s"),
        "exec_rtt_ms": ("SSH exec round trip (median of 20)", "ms"),
        "idle_pss_mib": ("host memory per idle guest (PSS)", "MiB"),
        "parallel_ready_s": (f"{parallel} guests started to all ready", "s"),
    }
    return [Metric(k, labels[k][0], labels[k][1], summarize(v), TARGETS.get(k))
            for k, v in samples.items() if v]
