"""The full flavor: a Debian root file system with real applications."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable

from harness.ssh import CommandResult
from harness.testbed import Testbed


def _retry(run: Callable[[], CommandResult], attempts: int = 20) -> CommandResult:
    """A client against a daemon that may need a moment to listen under TCG."""
    res = run()
    for _ in range(attempts - 1):
        if res.ok:
            break
        time.sleep(0.5)
        res = run()
    assert res.ok, res.stderr[-300:]
    return res

FULL_SPEC = """
[[network]]
name = "data"
[[guest]]
name = "f"
image = "full"
memory = "1G"
cpu_features = ["fsgsbase", "rdrand"]
  [[guest.nic]]
  network = "data"
  queues = 4
[[guest]]
name = "m"
  [[guest.nic]]
  network = "data"
"""


def test_full_image_runs_applications(testbed_factory) -> None:  # type: ignore[no-untyped-def]
    tb: Testbed = testbed_factory(FULL_SPEC)
    f = tb.guest("f")
    assert f.run("python3 -c 'print(6 * 7)'", check=True).stdout.strip() == "42"
    f.run("memcached -u root -d -l 0.0.0.0 -p 11211", check=True)
    ip = f.plan.nics[0].address.ip
    # talk memcached's text protocol from the minimal guest across the data network;
    # the daemon may need a moment to listen after forking under a loaded TCG host
    out = ""
    for _ in range(20):
        out = tb.guest("m").run(
            f"(printf 'set k 0 0 5\\r\\nhello\\r\\nget k\\r\\n'; sleep 1) | nc {ip} 11211",
            timeout=30).stdout
        if "STORED" in out:
            break
        time.sleep(0.5)
    assert "STORED" in out and "hello" in out
    # each tool does its job, over loopback in the guest
    f.run("iperf3 -s -D -1 -p 5201 --logfile /tmp/iperf3.log", check=True)
    res = _retry(lambda: f.run("iperf3 -c 127.0.0.1 -p 5201 -t 1 -J", timeout=60))
    assert json.loads(res.stdout)["end"]["sum_received"]["bytes"] > 0
    f.run("(sockperf server -i 127.0.0.1 -p 11111 > /tmp/sockperf.log 2>&1 &)", check=True)
    res = _retry(lambda: f.run("sockperf ping-pong -i 127.0.0.1 -p 11111 -t 1", timeout=60))
    m = re.search(r"avg-latency=([\d.]+)", res.stdout) or re.search(
        r"Latency is ([\d.]+) usec", res.stdout)
    assert m and float(m.group(1)) > 0, res.stdout[-500:]
    f.run("pkill sockperf", check=False)
    res = f.run("printf '#include <stdio.h>\\nint main(void){puts(\"built\");return 42;}\\n'"
                " > /tmp/t.c && gcc -O2 -o /tmp/t /tmp/t.c && /tmp/t", timeout=120)
    assert res.exit_code == 42 and res.stdout.strip() == "built", res.stderr
    (rep,) = f.nic_reports
    assert rep.rx_queues == 4
