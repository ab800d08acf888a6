"""Suite-wide settings: an isolated state folder, and leak checks per test and per run.

The image cache is shared with the user's (building images is slow); testbed state
goes to a folder of this session. After every test, what the harness makes (QEMU
processes, hb-* namespaces, hbt* taps, state folders) must be back to what it was
before it, apart from testbeds that module-scoped fixtures keep on purpose; what a
test left is removed at once (so it cannot fail the next test) and that test errors
with what it leaked. At the end of the run nothing may be left; the message names
the test during which each leftover appeared.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import claims, net, state
from harness.cleanup import cmdline, names_path, processes_matching, taps_in_use, teardown
from harness.plan import NETNS_PREFIX, TAP_PREFIX
from harness.pytest_plugin import kept_testbeds

# leftover description -> the test after which it was first seen
_FIRST_SEEN = pytest.StashKey[dict[str, str]]()


@pytest.fixture(scope="session", autouse=True)
def isolated_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("harness-state")
    old = os.environ.get("HARNESS_STATE")
    os.environ["HARNESS_STATE"] = str(root)
    yield root
    if old is None:
        del os.environ["HARNESS_STATE"]
    else:
        os.environ["HARNESS_STATE"] = old


def _ours(name: str, root: Path) -> bool:
    """A namespace or tap this session may have made: claimed from our state folder,
    or claimed by nobody. Names claimed from another state folder belong to another
    harness on this machine (another user, another run) and are never ours."""
    c = claims.owner(name)
    return c is None or c.belongs_to(root)


def leftovers(root: Path, keep: frozenset[Path] = frozenset()) -> list[str]:
    """What testbeds of state folder ``root`` left: QEMU processes, namespaces, taps and
    state folders, except those of the testbeds in ``keep`` (alive on purpose)."""
    kept_names: set[str] = set()
    for d in keep:
        kept_names |= {r.name for r in state.load(d).resources()}
    left = [f"qemu pid {p}" for p in processes_matching(str(root))
            if not any(names_path(cmdline(p), str(d)) for d in keep)]
    used = taps_in_use(ignore=str(root))
    left += [f"netns {n}" for n in net.list_netns(NETNS_PREFIX)
             if not n.startswith("hb-probe") and n not in kept_names and _ours(n, root)
             and not set(net.list_links(TAP_PREFIX, n)) & used]
    left += [f"tap {t}" for t in net.list_links(TAP_PREFIX)
             if t not in used and t not in kept_names and _ours(t, root)]
    left += [f"state {d.name}" for d in sorted(root.iterdir())
             if d not in keep] if root.exists() else []
    return left


def _remove(root: Path, keep: frozenset[Path]) -> None:
    """Take away what a test leaked, so that the next test starts clean."""
    for st in state.all_states(root):
        if st.dir not in keep:
            teardown(st)
    for d in state.unfinished(root):
        teardown(state.load(d))
    for item in leftovers(root, keep):
        kind, _, name = item.partition(" ")
        if kind == "netns":
            net.delete_netns(name)
            claims.release(name)
        elif kind == "tap":
            net.delete_link(name)
            claims.release(name)


@pytest.fixture(autouse=True)
def no_leaks_per_test(request: pytest.FixtureRequest, isolated_state: Path) -> Iterator[None]:
    """Errors the test that left something behind (after removing it)."""
    before = set(leftovers(isolated_state, kept_testbeds(request)))
    yield
    keep = kept_testbeds(request)
    new = [x for x in leftovers(isolated_state, keep) if x not in before]
    if new:
        seen = request.session.stash.setdefault(_FIRST_SEEN, {})
        for x in new:
            seen.setdefault(x, request.node.nodeid)
        _remove(isolated_state, keep)
        pytest.fail(f"{request.node.nodeid} leaked: {', '.join(new)}", pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def no_leaks_after_suite(request: pytest.FixtureRequest, isolated_state: Path
                         ) -> Iterator[None]:
    """Fails the run (as a teardown error) if anything outlives the suite."""
    yield
    left = leftovers(isolated_state)
    if left:
        seen = request.session.stash.get(_FIRST_SEEN, {})
        _remove(isolated_state, frozenset())
        pytest.fail("the suite leaked: " + ", ".join(
            f"{x} (left by {seen.get(x, 'a module or session fixture')})" for x in left),
            pytrace=False)
