"""Impairments in the namespace and the emulated IOMMU for user-space drivers."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from harness import net
from harness.errors import EnvironmentProblem
from harness.testbed import Testbed
from harness.traffic import tcp_mbit

RATE_SPEC = """
[[network]]
name = "data"
[[guest]]
name = "a"
  [[guest.nic]]
  network = "data"
[[guest]]
name = "b"
  [[guest.nic]]
  network = "data"
  [guest.nic.netem]
  {netem}
"""


def test_rate_limit_applies_to_frames_towards_guest(
        testbed_factory: Callable[..., Testbed]) -> None:
    tb = testbed_factory(RATE_SPEC.format(netem="rate_mbit = 8"))
    tap = tb.guest("b").plan.nics[0].tap
    assert "tbf" in tb.ns_run(["tc", "qdisc", "show", "dev", tap]).stdout
    limited = tcp_mbit(tb.guest("a"), tb.guest("b"), 4)
    free = tcp_mbit(tb.guest("b"), tb.guest("a"), 4)  # the other direction is not shaped
    assert limited < 8 * 1.3, f"{limited:.1f} Mbit/s through an 8 Mbit/s limit"
    assert free > limited * 2, f"unshaped {free:.1f} vs shaped {limited:.1f} Mbit/s"


def test_delay_uses_netem_or_says_why(testbed_factory: Callable[..., Testbed]) -> None:
    spec = RATE_SPEC.format(netem="delay_ms = 40")
    if not net.qdisc_supported("netem"):
        with pytest.raises(EnvironmentProblem, match="sch_netem"):
            testbed_factory(spec)
        return
    tb = testbed_factory(spec)
    ip = tb.guest("b").plan.nics[0].address.ip
    out = tb.guest("a").run(f"ping -c 5 {ip}").stdout
    avg = float(out.split("min/avg/max = ")[1].split("/")[1])
    assert avg >= 40


IOMMU_SPEC = """
[[network]]
name = "data"
[[guest]]
name = "a"
  [[guest.nic]]
  network = "data"
  queues = 2
  iommu = true
"""


def test_iommu_nic_can_be_handed_to_vfio(testbed_factory: Callable[..., Testbed]) -> None:
    tb = testbed_factory(IOMMU_SPEC)
    a = tb.guest("a")
    assert a.run("ls /sys/kernel/iommu_groups | wc -l").stdout.strip() != "0"
    bdf = a.run("basename $(readlink -f /sys/class/net/data0/device/..)", check=True).stdout.strip()
    dev = f"/sys/bus/pci/devices/{bdf}"
    a.run(f"echo vfio-pci > {dev}/driver_override && echo {bdf} > {dev}/driver/unbind && "
          f"echo {bdf} > /sys/bus/pci/drivers_probe", check=True)
    group = a.run(f"basename $(readlink {dev}/iommu_group)", check=True).stdout.strip()
    assert a.run(f"test -c /dev/vfio/{group}").ok
    assert not a.run("test -e /sys/class/net/data0").ok
    # and back to the kernel driver
    a.run(f"echo > {dev}/driver_override && echo {bdf} > {dev}/driver/unbind && "
          f"echo {bdf} > /sys/bus/pci/drivers_probe", check=True)
    assert a.run(f"basename $(readlink {dev}/driver)").stdout.strip() == "virtio-pci"


def test_single_and_many_queue_nics(testbed_factory: Callable[..., Testbed]) -> None:
    tb = testbed_factory("""
[[network]]
name = "data"
[[guest]]
name = "a"
  [[guest.nic]]
  network = "data"
  queues = 1
[[guest]]
name = "b"
vcpus = 1
  [[guest.nic]]
  network = "data"
  queues = 8
""")
    assert [r.rx_queues for r in tb.guest("a").nic_reports] == [1]
    assert [(r.rx_queues, r.msix_rx) for r in tb.guest("b").nic_reports] == [(8, 8)]
    ip = tb.guest("b").plan.nics[0].address.ip
    assert "0% packet loss" in tb.guest("a").run(f"ping -c 3 -W 2 {ip}").stdout
