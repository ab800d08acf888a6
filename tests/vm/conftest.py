"""Fixtures shared by the guest tests: a two-guest testbed reused within a module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import qemu_build
from harness.pytest_plugin import shared_testbed
from harness.testbed import Testbed

PAIR_SPEC = """
[[network]]
name = "data"
[[guest]]
name = "a"
cpu_features = ["fsgsbase", "rdrand"]
  [[guest.nic]]
  network = "data"
  queues = 4
[[guest]]
name = "b"
  [[guest.nic]]
  network = "data"
  queues = 4
"""


@pytest.fixture(scope="session")
def project_qemu() -> Path:
    """The project's patched QEMU, built when missing ('make test' builds it first)."""
    return qemu_build.build().binary


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/vm/" in str(item.fspath):
            item.add_marker(pytest.mark.vm)


@pytest.fixture(scope="module")
def pair(request: pytest.FixtureRequest) -> Iterator[Testbed]:
    """Two guests (a, b) with 4-queue data NICs on one bridge; shared by a module."""
    name = "p" + request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")[:10]
    with shared_testbed(request, PAIR_SPEC, name.replace("_", "")) as tb:
        yield tb


def ping(tb: Testbed, src: str, dst: str, count: int = 3, wait: int = 2) -> int:
    """Packets received by ``src`` pinging ``dst``'s data0 address."""
    ip = tb.guest(dst).plan.nics[0].address.ip
    out = tb.guest(src).run(f"ping -c {count} -W {wait} {ip}", timeout=60).stdout
    for line in out.splitlines():
        if "packets received" in line:
            return int(line.split(",")[1].split()[0])
    return 0
