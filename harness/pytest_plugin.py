"""pytest fixtures for tests that boot real guests (registered as a pytest11 plugin).

    testbed_factory  makes testbeds from TOML text or a TestbedConfig; owns them all,
                     saves console logs when the test failed, removes everything
    testbed_spec     TOML of the default testbed (override it, or parametrize it
                     indirectly, to change guests, NICs or features)
    testbed          a testbed made from ``testbed_spec``
    guest            the first guest of ``testbed``
    shared_testbed() a context manager for module-scoped fixtures that share one
                     testbed between tests (same log keeping, same cleanup)
    kept_testbeds()  state folders of the shared testbeds alive right now (a leak
                     check must not count them)

Console logs of failing tests are attached to the report and copied to
``--harness-artifacts`` (default: results/).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from harness import config, net
from harness.cleanup import processes_matching
from harness.guest import Guest
from harness.plan import TAP_PREFIX
from harness.testbed import Testbed

DEFAULT_SPEC = """
[[network]]
name = "data"
[[guest]]
name = "g"
cpu_features = ["fsgsbase", "rdrand"]
  [[guest.nic]]
  network = "data"
  queues = 4
"""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--harness-artifacts", default="results",
                     help="where console logs of failing guest tests are kept")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    rep = yield
    setattr(item, f"harness_rep_{rep.when}", rep)
    return rep


def _failed(node: pytest.Item) -> bool:
    return any(getattr(getattr(node, f"harness_rep_{w}", None), "failed", False)
               for w in ("setup", "call"))


def _testbed_name(node: pytest.Item, n: int) -> str:
    base = re.sub(r"[^a-z0-9]", "", node.name.lower().removeprefix("test"))[:10] or "t"
    return f"t{base}{n}"[:15]


@pytest.fixture
def testbed_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., Testbed]]:
    made: list[Testbed] = []

    def make(spec: str | config.TestbedConfig, **kw: object) -> Testbed:
        if isinstance(spec, str):
            cfg = config.parse(spec, default_name=_testbed_name(request.node, len(made)))
        else:
            cfg = spec
        tb = Testbed.up(cfg, **kw)  # type: ignore[arg-type]
        made.append(tb)
        return tb

    yield make
    failed = _failed(request.node)
    for tb in made:
        if failed:
            for g in save_logs(tb, request):
                request.node.add_report_section(
                    "call", f"console {tb.name}/{g.name}", g.console.tail(40))
        tb.down()


def save_logs(tb: Testbed, request: pytest.FixtureRequest) -> list[Guest]:
    """Copy every guest's console and QEMU log to the artifacts folder of ``request``'s node."""
    artifacts = Path(request.config.getoption("--harness-artifacts"))
    dest = artifacts / re.sub(r"[^\w.-]", "_", request.node.nodeid)
    dest.mkdir(parents=True, exist_ok=True)
    saved = []
    for g in tb:
        if g.files.console_log.exists():
            shutil.copy2(g.files.console_log, dest / f"{tb.name}-{g.name}-console.log")
            saved.append(g)
        if g.files.qemu_log.exists():
            shutil.copy2(g.files.qemu_log, dest / f"{tb.name}-{g.name}-qemu.log")
    return saved


_KEPT = pytest.StashKey[set[Path]]()


def kept_testbeds(request: pytest.FixtureRequest) -> frozenset[Path]:
    return frozenset(request.session.stash.get(_KEPT, set()))


@contextmanager
def shared_testbed(request: pytest.FixtureRequest, spec: str, name: str) -> Iterator[Testbed]:
    """A testbed for a module- or session-scoped fixture: logs kept if any test failed."""
    failed_before = request.session.testsfailed
    tb = Testbed.up(config.parse(spec, default_name=name))
    kept = request.session.stash.setdefault(_KEPT, set())
    kept.add(tb.state.dir)
    try:
        yield tb
    finally:
        if request.session.testsfailed > failed_before:
            save_logs(tb, request)
        kept.discard(tb.state.dir)
        tb.down()
        left = remains(tb)
        if left:
            pytest.fail(f"shared testbed {tb.name} left {', '.join(left)}", pytrace=False)


def remains(tb: Testbed) -> list[str]:
    """What of ``tb`` still exists after its teardown: QEMUs, namespace, taps, folder."""
    left = [f"qemu pid {p}" for p in processes_matching(str(tb.state.dir))]
    if tb.netns in net.list_netns(tb.netns):
        left.append(f"netns {tb.netns}")
    taps = {n.tap for g in tb.plan.guests for n in g.nics}
    left += [f"tap {t}" for t in net.list_links(TAP_PREFIX) if t in taps]
    if tb.state.dir.exists():
        left.append(f"state {tb.state.dir}")
    return left


@pytest.fixture
def testbed_spec() -> str:
    return DEFAULT_SPEC


@pytest.fixture
def testbed(testbed_factory: Callable[..., Testbed], testbed_spec: str) -> Testbed:
    return testbed_factory(testbed_spec)


@pytest.fixture
def guest(testbed: Testbed) -> Guest:
    return next(iter(testbed))
