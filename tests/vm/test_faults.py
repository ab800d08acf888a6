"""Fault injection over QMP: link down/up, hot-unplug/plug, pause, panic, kill."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from harness.errors import KernelPanic, QemuExited
from harness.testbed import Testbed

from .conftest import PAIR_SPEC, ping


def test_link_down_stops_traffic_and_up_restores(testbed_factory: Callable[..., Testbed]) -> None:
    tb = testbed_factory(PAIR_SPEC)
    b = tb.guest("b")
    assert ping(tb, "a", "b") == 3
    b.set_link(0, up=False)
    assert b.run("cat /sys/class/net/data0/carrier").stdout.strip() == "0"
    assert ping(tb, "a", "b", count=3, wait=1) == 0
    b.set_link(0, up=True)
    time.sleep(0.5)
    assert b.run("cat /sys/class/net/data0/carrier").stdout.strip() == "1"
    assert ping(tb, "a", "b") == 3


def test_hot_unplug_and_plug_seen_by_guest(testbed_factory: Callable[..., Testbed]) -> None:
    tb = testbed_factory(PAIR_SPEC)
    b = tb.guest("b")
    assert b.run("test -e /sys/class/net/data0").ok
    b.nic_unplug(0)
    assert b.qmp.events("DEVICE_DELETED")
    left = b.run("ls /sys/class/net").stdout.split()
    assert "data0" not in left and not any(n.startswith("eth") for n in left)
    b.nic_plug(0)
    deadline = time.monotonic() + 30
    names: list[str] = []
    while time.monotonic() < deadline:
        names = [n for n in b.run("ls /sys/class/net").stdout.split()
                 if n not in ("lo", "mgmt0")]
        if names:
            break
        time.sleep(0.5)
    assert len(names) == 1, f"hot-plugged NIC not seen, interfaces: {names}"


def test_pause_resume_records_events(testbed_factory: Callable[..., Testbed]) -> None:
    tb = testbed_factory(PAIR_SPEC)
    a = tb.guest("a")
    a.pause()
    assert a.status() == "paused"
    a.resume()
    assert a.status() == "running"
    kinds = [e["event"] for e in a.qmp.events()]
    assert kinds.index("STOP") < kinds.index("RESUME", kinds.index("STOP"))
    assert a.run("true").ok


def test_kernel_panic_is_detected(testbed_factory: Callable[..., Testbed]) -> None:
    tb = testbed_factory(PAIR_SPEC)
    a = tb.guest("a")
    a.check()
    a.run("echo c > /proc/sysrq-trigger &", timeout=10)
    deadline = time.monotonic() + 30
    with pytest.raises(KernelPanic, match="sysrq triggered crash") as exc:
        while time.monotonic() < deadline:
            a.check()
            time.sleep(0.2)
    assert exc.value.console_log.endswith("console.log")
    a.qmp.wait_event("GUEST_PANICKED", timeout=10)


def test_killed_guest_is_reported_and_cleaned(testbed_factory: Callable[..., Testbed]) -> None:
    tb = testbed_factory(PAIR_SPEC)
    a = tb.guest("a")
    a.kill()
    with pytest.raises(QemuExited, match="no longer running"):
        a.check()
    assert tb.guest("b").run("true").ok  # the other guest is unaffected


def test_powerdown_shuts_the_guest_down(testbed_factory: Callable[..., Testbed]) -> None:
    tb = testbed_factory(PAIR_SPEC)
    a = tb.guest("a")
    mark = a.qmp.event_count()
    a.powerdown()
    a.qmp.wait_event("SHUTDOWN", timeout=30, after=mark)
    assert a.proc is not None and a.proc.wait(30) == 0
    assert tb.guest("b").run("true").ok
