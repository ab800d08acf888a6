"""A running testbed: the namespace, bridges and taps, its guests, their readiness.

``Testbed.up(config)`` goes from a validated config to guests that answer over
SSH with their CPU features and NIC queues verified; any failure on the way
removes everything made so far. ``Testbed.attach(name)`` reopens a testbed a
previous ``harness up`` left running. ``down()`` removes it all (cleanup.py).
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from harness import cleanup, host, images, keys, net, state
from harness.config import TestbedConfig, parse_dict
from harness.errors import ConfigError, FeatureMissing, HarnessError
from harness.features import FEATURES
from harness.guest import Guest, GuestFiles, free_port
from harness.plan import TestbedPlan, make_plan
from harness.progress import Progress, Silent
from harness.ssh import CommandResult, run_parallel
from harness.state import Resource, TestbedState

log = logging.getLogger(__name__)


def _check_features(cfg: TestbedConfig, qemu: str) -> None:
    """Fail before booting when this QEMU cannot even offer a requested feature."""
    offered = host.cpu_flags(qemu)
    for g in cfg.guests:
        for f in g.cpu_features:
            if offered and f not in offered:
                raise FeatureMissing(f"guest {g.name!r}: CPU feature '{f}' is not offered by "
                                     f"{qemu} ({host.qemu_version(qemu)}); {FEATURES[f].hint}",
                                     guest=g.name)


class Testbed:
    __test__ = False  # not a pytest test class

    def __init__(self, plan: TestbedPlan, st: TestbedState, guests: dict[str, Guest],
                 accel: str) -> None:
        self.plan = plan
        self.state = st
        self.guests = guests
        self.accel = accel
        self.closed = False

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def netns(self) -> str:
        return self.plan.netns

    def guest(self, name: str) -> Guest:
        if name not in self.guests:
            raise ConfigError(f"no guest named '{name}' in testbed '{self.name}'; "
                              f"guests: {', '.join(self.guests)}")
        return self.guests[name]

    def __iter__(self) -> Iterator[Guest]:
        return iter(self.guests.values())

    # --- bring-up ---------------------------------------------------------------------

    @classmethod
    def up(cls, cfg: TestbedConfig, *, progress: Progress | None = None,
           verify: bool = True, state_root: Path | None = None) -> Testbed:
        progress = progress or Silent()
        plan = make_plan(cfg)
        qemu = host.qemu_binary(cfg.needs_project_qemu())
        _check_features(cfg, qemu)
        imgs = {}
        for flavor in sorted({g.config.image for g in plan.guests}):
            imgs[flavor] = images.get(flavor, progress=progress)
        progress.step("probing accelerators")
        accel = host.choose_accel(qemu, cfg.accel)
        st = state.create(cfg.name, state_root)
        st.meta.update(accel=accel, qemu=qemu, netns=plan.netns, config=_config_summary(cfg))
        st.save()
        guests: dict[str, Guest] = {}
        tb = cls(plan, st, guests, accel)
        try:
            tb._bring_up(qemu, imgs, progress, verify)
        except BaseException:
            tb.down()
            raise
        return tb

    def _bring_up(self, qemu: str, imgs: dict[str, images.Image], progress: Progress,
                  verify: bool) -> None:
        plan, st = self.plan, self.state
        key_file, pubkey = keys.generate(st.dir / "id_ed25519", f"harness-{plan.name}")
        progress.step(f"creating namespace {plan.netns}")
        st.record(Resource("netns", plan.netns))
        net.create_netns(plan.netns)
        for n in plan.networks:
            net.create_bridge(plan.netns, n.bridge)
        progress.step(f"starting {len(plan.guests)} guest(s)", total=len(plan.guests))
        for gp in plan.guests:
            for nic in gp.nics:
                st.record(Resource("tap", nic.tap, netns=plan.netns))
                net.create_tap(nic.tap, multi_queue=nic.queues > 1)
            img = imgs[gp.config.image]
            g = Guest(gp, GuestFiles(st.dir / gp.name), image=img, state=st,
                      ssh_port=free_port(), key_file=key_file, host_key=img.host_key)
            self.guests[gp.name] = g
            g.launch(qemu, self.accel, pubkey, host.firmware())
            for nic in gp.nics:
                net.attach_tap(nic.tap, plan.netns, nic.bridge)
                net.apply_netem(plan.netns, nic.tap, nic.config.netem)
            progress.advance()
        for g in self.guests.values():
            g.cont()
        self.wait_ready(progress)
        progress.step("connecting over SSH")
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda g: g.connect(), self.guests.values()))
        if verify:
            progress.step("verifying CPU features and NIC queues in the guests")
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(self._verify, self.guests.values()))
        st.meta["guests"] = {name: g.describe() for name, g in self.guests.items()}
        st.save()

    @staticmethod
    def _verify(g: Guest) -> None:
        g.verify_features()
        g.verify_nics()

    def wait_ready(self, progress: Progress) -> None:
        timeout = self.plan.config.boot_timeout_s
        deadline = time.monotonic() + timeout
        waiting = dict(self.guests)
        progress.step(f"waiting for {len(waiting)} guest(s) to boot", total=len(waiting))
        while waiting:
            for name, g in list(waiting.items()):
                if g.poll_ready():
                    del waiting[name]
                    progress.advance()
            if waiting and time.monotonic() > deadline:
                raise next(iter(waiting.values())).boot_timeout(timeout)
            if waiting:
                time.sleep(0.02)

    # --- attach to a running testbed -------------------------------------------------

    @classmethod
    def attach(cls, name: str, state_root: Path | None = None) -> Testbed:
        st = state.find(name, state_root)
        cfg = _config_from_summary(st.meta.get("config", {}), name)
        plan = make_plan(cfg)
        guests = {}
        for gp in plan.guests:
            info = st.meta.get("guests", {}).get(gp.name, {})
            g = Guest(gp, GuestFiles(Path(info.get("dir", st.dir / gp.name))), state=st,
                      ssh_port=int(info.get("ssh_port", 0)),
                      key_file=Path(info["key_file"]) if info.get("key_file") else None,
                      host_key=info.get("host_key", ""))
            g.pid = info.get("pid")
            guests[gp.name] = g
        return cls(plan, st, guests, st.meta.get("accel", "tcg"))

    def detach(self) -> None:
        """Leave the testbed running for later commands ('harness down' removes it)."""
        self.state.meta["detached"] = True
        self.state.save()
        self.disconnect()
        self.closed = True

    def disconnect(self) -> None:
        """Close this process's SSH and QMP connections; the guests keep running."""
        for g in self.guests.values():
            g.disconnect()

    # --- use ------------------------------------------------------------------------

    def run_all(self, command: str, timeout: float = 60.0) -> dict[str, CommandResult]:
        return run_parallel([g.ssh for g in self.guests.values()], command, timeout)

    def ns_run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        """Run a host command inside the testbed's namespace (e.g. tcpdump, tc)."""
        return subprocess.run(net.netns_exec(self.netns, argv), capture_output=True,
                              text=True, check=False)

    # --- teardown --------------------------------------------------------------------

    def down(self) -> cleanup.Removed:
        if self.closed and not self.state.dir.exists():
            return cleanup.Removed()
        for g in self.guests.values():
            try:
                g.stop()
            except HarnessError as exc:
                log.warning("%s: %s", g.name, exc)
        removed = cleanup.teardown(self.state)
        self.closed = True
        return removed

    def __enter__(self) -> Testbed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()


def _config_summary(cfg: TestbedConfig) -> dict[str, Any]:
    """The config as plain data, enough to rebuild the plan when attaching."""
    return {
        "name": cfg.name, "accel": cfg.accel, "boot_timeout_s": cfg.boot_timeout_s,
        "network": [{"name": n.name, "subnet": str(n.subnet)} for n in cfg.networks],
        "guest": [{
            "name": g.name, "vcpus": g.vcpus, "memory": g.memory_mb, "image": g.image,
            "cpu_features": list(g.cpu_features),
            "nic": [{"network": n.network, "queues": n.queues, "iommu": n.iommu,
                     **({"address": str(n.address)} if n.address else {}),
                     "netem": {k: v for k, v in vars(n.netem).items() if v}}
                    for n in g.nics],
        } for g in cfg.guests],
    }


def _config_from_summary(summary: dict[str, Any], name: str) -> TestbedConfig:
    return parse_dict(summary, default_name=name)
