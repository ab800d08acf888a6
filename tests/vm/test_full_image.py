"""The full flavor: a Debian root file system with real applications."""

from __future__ import annotations

import time

from harness.testbed import Testbed

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
    for tool in ("iperf3 --version", "sockperf --version", "gcc --version"):
        assert f.run(tool).ok, tool
    (rep,) = f.nic_reports
    assert rep.rx_queues == 4
