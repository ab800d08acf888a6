"""``harness bench uintr``: user interrupts against signals and eventfd, in one guest.

Boots one guest with the ``uintr`` CPU feature (so the project's QEMU), runs the guest
program ``uintr_bench`` (guest/uintr/uintr_bench.c) once, and turns its JSON into rows:
one-way notification latency and round trips per second for each mechanism, and the
ratios. The guest program measures; this module only starts it and reads its output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from harness import config
from harness.errors import GuestError
from harness.progress import Progress, Silent
from harness.testbed import Testbed

SPEC = """
name = "benchuintr"
[[guest]]
name = "u"
vcpus = {vcpus}
memory = 512
cpu_features = ["uintr"]
"""


@dataclass(frozen=True)
class Mechanism:
    name: str
    oneway_p50_ns: float | None
    oneway_p99_ns: float | None
    roundtrips_s: float | None  # mean over the run
    roundtrip_p50_ns: float | None  # steadier than the mean when vCPU threads get preempted
    error: str = ""


@dataclass(frozen=True)
class UintrResult:
    iterations: int
    vcpus: int
    mechanisms: list[Mechanism]
    ratios: dict[str, float | None]
    raw: dict[str, Any]


def parse(text: str) -> UintrResult:
    """The program's JSON (the last {...} block of its output) as a result."""
    start = text.find("{")
    try:
        raw = json.loads(text[start:]) if start >= 0 else None
    except ValueError:
        raw = None
    if not isinstance(raw, dict):
        raise GuestError(f"uintr_bench printed no readable JSON: {text.strip()[-200:]!r}")
    mechs = []
    for name, v in raw.items():
        if not isinstance(v, dict) or name == "ratios":
            continue
        mechs.append(Mechanism(name, v.get("oneway_p50_ns"), v.get("oneway_p99_ns"),
                               v.get("roundtrips_per_s"), v.get("roundtrip_p50_ns"),
                               str(v.get("error", ""))))
    return UintrResult(iterations=int(raw.get("iterations", 0)), vcpus=int(raw.get("vcpus", 0)),
                       mechanisms=mechs, ratios=dict(raw.get("ratios", {})), raw=raw)


def bench_uintr(iterations: int = 20000, vcpus: int = 2,
                progress: Progress | None = None) -> UintrResult:
    progress = progress or Silent()
    cfg = config.parse(SPEC.format(vcpus=vcpus))
    tb = Testbed.up(cfg, progress=progress)
    try:
        progress.step(f"uintr_bench: {iterations} round trips per mechanism")
        res = tb.guest("u").run(f"uintr_bench --iters {iterations}", timeout=1800)
        if not res.stdout.strip():
            raise GuestError(f"uintr_bench failed (exit {res.exit_code}): "
                             f"{res.stderr.strip()[-200:]}", guest="u")
        return parse(res.stdout)
    finally:
        tb.down()
