"""One testbed of two guests: readiness, SSH, files, CPU features, NIC queues, traffic."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from harness.errors import CommandFailed, SSHError
from harness.testbed import Testbed

from .conftest import ping


def test_ready_signal_and_timings(pair: Testbed) -> None:
    for g in pair:
        assert g.console.ready() is not None
        assert g.timings["launch"] < g.timings["cont"] < g.timings["ready"] <= g.timings["ssh"]
        assert g.status() == "running"


def test_exec_exit_code_stdout_stderr(pair: Testbed) -> None:
    a = pair.guest("a")
    r = a.run("echo out; echo err >&2; exit 3")
    assert (r.exit_code, r.stdout, r.stderr) == (3, "out\n", "err\n")
    with pytest.raises(CommandFailed, match="exited 3"):
        a.run("exit 3", check=True)
    assert a.run("hostname", check=True).stdout.strip() == "a"


def test_exec_timeout(pair: Testbed) -> None:
    with pytest.raises(SSHError, match="did not finish in time"):
        pair.guest("a").run("sleep 30", timeout=1)
    assert pair.guest("a").run("true").ok  # the connection survives


def test_stream_lines(pair: Testbed) -> None:
    lines: list[str] = []
    pair.guest("b").run("for i in 1 2 3; do echo line$i; sleep 0.1; done",
                        on_stdout=lines.append)
    assert lines == ["line1", "line2", "line3"]


def test_put_get_roundtrip(pair: Testbed, tmp_path: Path) -> None:
    blob = os.urandom(300_000)
    src = tmp_path / "blob"
    src.write_bytes(blob)
    a = pair.guest("a")
    a.put(src, "/tmp/blob")
    remote = a.run("sha256sum /tmp/blob", check=True).stdout.split()[0]
    assert remote == hashlib.sha256(blob).hexdigest()
    a.get("/tmp/blob", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == blob


def test_run_all_in_parallel(pair: Testbed) -> None:
    res = pair.run_all("hostname")
    assert {n: r.stdout.strip() for n, r in res.items()} == {"a": "a", "b": "b"}


def test_cpu_features_executed_in_user_space(pair: Testbed) -> None:
    a = pair.guest("a")
    assert {r.name for r in a.feature_reports if r.ok} == {"fsgsbase", "rdrand"}
    probe = a.probe_report()
    # stock QEMU: no uintr in CPUID, so the probe does not execute TESTUI
    assert probe["executed"] == {"fsgsbase": "ok", "rdrand": "ok", "uintr": "absent"}
    # the kernel advertises FSGSBASE to user space in AT_HWCAP2 bit 1
    assert "fsgsbase" in a.run("grep -m1 ^flags /proc/cpuinfo").stdout


def test_data_nic_queues_and_msix(pair: Testbed) -> None:
    for g in pair:
        (rep,) = g.verify_nics()
        assert (rep.queues_max, rep.rx_queues, rep.tx_queues) == (4, 4, 4)
        assert (rep.msix_rx, rep.msix_tx) == (4, 4)


def _tap_counters(tb: Testbed, tap: str) -> tuple[int, int]:
    """(rx, tx) packets of a tap, seen from the host: rx is what its guest sent."""
    out = tb.ns_run(["ip", "-s", "-j", "link", "show", "dev", tap]).stdout
    stats = json.loads(out)[0]["stats64"]
    return stats["rx"]["packets"], stats["tx"]["packets"]


def test_traffic_between_guests_over_bridge(pair: Testbed) -> None:
    """The echo requests and replies crossed the bridge in the testbed's namespace: each
    guest's tap carried at least the pings, in the right direction."""
    tap_a, tap_b = (pair.guest(n).plan.nics[0].tap for n in ("a", "b"))
    before = {t: _tap_counters(pair, t) for t in (tap_a, tap_b)}
    assert ping(pair, "a", "b", count=5) == 5
    after = {t: _tap_counters(pair, t) for t in (tap_a, tap_b)}
    rx = {t: after[t][0] - before[t][0] for t in after}
    tx = {t: after[t][1] - before[t][1] for t in after}
    # a sent 5 requests (its tap's rx), the bridge delivered them to b (b's tap's tx), and
    # the replies went back the other way; ARP and IPv6 chatter may add frames, never less
    assert rx[tap_a] >= 5 and tx[tap_b] >= 5, (rx, tx)
    assert rx[tap_b] >= 5 and tx[tap_a] >= 5, (rx, tx)
    assert pair.ns_run(["ip", "-o", "link", "show", "master", "br0"]).stdout.count("hbt") == 2
