"""Suite-wide settings: an isolated state folder and a leak check after the whole run.

The image cache is shared with the user's (building images is slow); testbed
state goes to a folder of this session, and at the end nothing the harness makes
(QEMU processes, hb-* namespaces, hbt* taps, state folders) may be left.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.cleanup import processes_matching, taps_in_use
from harness.net import list_links, list_netns
from harness.plan import NETNS_PREFIX, TAP_PREFIX


@pytest.fixture(scope="session", autouse=True)
def isolated_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    state = tmp_path_factory.mktemp("harness-state")
    old = os.environ.get("HARNESS_STATE")
    os.environ["HARNESS_STATE"] = str(state)
    yield state
    if old is None:
        del os.environ["HARNESS_STATE"]
    else:
        os.environ["HARNESS_STATE"] = old


def leftovers(state: Path) -> list[str]:
    """What this session left: its QEMU processes, namespaces and taps. Those a QEMU of
    another state folder uses (another user's testbeds) are theirs, not leftovers."""
    left = [f"qemu pid {p}" for p in processes_matching(str(state))]
    used = taps_in_use(ignore=str(state))
    left += [f"netns {n}" for n in list_netns(NETNS_PREFIX)
             if not n.startswith("hb-probe") and not set(list_links(TAP_PREFIX, n)) & used]
    left += [f"tap {t}" for t in list_links(TAP_PREFIX) if t not in used]
    left += [f"state {d.name}" for d in state.iterdir()] if state.exists() else []
    return left


@pytest.fixture(scope="session", autouse=True)
def no_leaks_after_suite(isolated_state: Path) -> Iterator[None]:
    """Fails the run (as a teardown error) if anything outlives the suite."""
    yield
    if os.geteuid() != 0:
        return
    left = leftovers(isolated_state)
    if left:
        subprocess.run([sys.executable, "-m", "harness.cli", "gc", "--all"], check=False)
        pytest.fail(f"the suite leaked: {', '.join(left)}")
