"""A running testbed: the namespace, bridges and taps, its guests, their readiness.

``Testbed.up(config)`` goes from a validated config to guests that answer over
SSH with their CPU features and NIC queues verified; any failure or interrupt on
the way removes everything made so far, after copying the guests' console and QEMU
logs to ``results/<testbed>/`` (the error names the copy). ``Testbed.attach(name)``
reopens a testbed a previous ``harness up`` left running. ``down()`` removes it all
(cleanup.py).

The accelerator is KVM only where it really boots Linux (host.py); a guest that
prints nothing under KVM within ``KVM_SILENT_S`` makes the whole testbed start once
more under TCG, with a warning, and the verdict is remembered.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness import claims, cleanup, config, host, images, interrupts, keys, net, state
from harness.config import TestbedConfig
from harness.errors import (
    ConfigError,
    EnvironmentProblem,
    FeatureMissing,
    GuestError,
    HarnessError,
    QemuExited,
    StateError,
)
from harness.features import FEATURES
from harness.guest import Guest, GuestFiles, free_port
from harness.paths import results_root
from harness.plan import GuestPlan, TestbedPlan, make_plan
from harness.progress import Progress, Silent
from harness.ssh import CommandResult, run_parallel
from harness.state import Resource, TestbedState

log = logging.getLogger(__name__)

# A guest under a working KVM reaches init and prints in about a second; one that has
# printed nothing after this long is taken for a KVM that cannot run Linux here.
KVM_SILENT_S = 10.0
PORT_ATTEMPTS = 3  # a forwarded SSH port taken between choosing it and QEMU's bind


class KvmSilent(HarnessError):
    """A guest started under KVM printed nothing: restart under TCG."""


def require_root() -> None:
    """Taps and namespaces need root: say so before building or probing anything."""
    if os.geteuid() != 0:
        raise EnvironmentProblem("the harness makes taps and network namespaces and must "
                                 f"run as root (uid {os.geteuid()}); use sudo")


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
           verify: bool = True, state_root: Path | None = None,
           accel: str | None = None) -> Testbed:
        """Start the testbed of ``cfg``; ``accel`` overrides HARNESS_ACCEL and the spec."""
        progress = progress or Silent()
        require_root()
        plan = make_plan(cfg)
        qemu = host.qemu_binary(cfg.needs_project_qemu())
        _check_features(cfg, qemu)
        imgs = {}
        for flavor in sorted({g.config.image for g in plan.guests}):
            imgs[flavor] = images.get(flavor, progress=progress)
        wanted = host.wanted_accel(cfg.accel, accel)
        kernel = next(iter(imgs.values())).boot.kernel
        if wanted != "tcg":
            progress.step("probing accelerators (KVM must boot the guests' kernel)")
        choice = host.choose_accel(qemu, wanted, kernel)
        try:
            return cls._start(plan, qemu, imgs, choice.accel, progress, verify, state_root)
        except KvmSilent as exc:
            host.remember_linux_probe(qemu, kernel, host.AccelProbe("kvm", False, str(exc)))
            host.choose_accel.cache_clear()
            if wanted == "kvm":
                raise EnvironmentProblem(f"accel = \"kvm\" was asked for but {exc}; use "
                                         "accel = \"auto\" or \"tcg\"") from exc
            progress.warn(f"{exc}; starting the testbed again under TCG")
            return cls._start(plan, qemu, imgs, "tcg", progress, verify, state_root)

    @classmethod
    def _start(cls, plan: TestbedPlan, qemu: str, imgs: dict[str, images.Image], accel: str,
               progress: Progress, verify: bool, state_root: Path | None) -> Testbed:
        st = state.create(plan.name, state_root)
        tb = cls(plan, st, {}, accel)
        try:
            st.meta.update(accel=accel, qemu=qemu, netns=plan.netns,
                           config=config.to_dict(plan.config))
            st.save()
            tb._bring_up(qemu, imgs, progress, verify)
        except BaseException as exc:
            tb.down(error=None if isinstance(exc, KvmSilent) else exc)
            raise
        return tb

    def _bring_up(self, qemu: str, imgs: dict[str, images.Image], progress: Progress,
                  verify: bool) -> None:
        plan, st = self.plan, self.state
        key_file, pubkey = keys.generate(st.dir / "id_ed25519", f"harness-{plan.name}")
        progress.step(f"creating namespace {plan.netns}")
        self._claim(Resource("netns", plan.netns))
        net.create_netns(plan.netns)
        for n in plan.networks:
            net.create_bridge(plan.netns, n.bridge)
        progress.step(f"starting {len(plan.guests)} guest(s)", total=len(plan.guests))
        for gp in plan.guests:
            for nic in gp.nics:
                self._claim(Resource("tap", nic.tap, netns=plan.netns))
                net.create_tap(nic.tap, multi_queue=nic.queues > 1)
            self.guests[gp.name] = self._launch(gp, qemu, imgs[gp.config.image], key_file,
                                                pubkey)
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

    def _claim(self, res: Resource) -> None:
        """Record a host-wide name in the state folder and claim it, before making it."""
        self.state.record(res)
        claims.claim(res.name, self.state.dir)

    def _launch(self, gp: GuestPlan, qemu: str, img: images.Image, key_file: Path,
                pubkey: str) -> Guest:
        """Start one guest's QEMU (paused); a forwarded SSH port that another process
        took between free_port() and QEMU's bind is chosen again."""
        for attempt in range(PORT_ATTEMPTS):
            g = Guest(gp, GuestFiles(self.state.dir / gp.name), image=img, state=self.state,
                      ssh_port=free_port(), key_file=key_file, host_key=img.host_key)
            try:
                g.launch(qemu, self.accel, pubkey, host.firmware())
                return g
            except QemuExited as exc:
                if "host forwarding" not in str(exc) or attempt == PORT_ATTEMPTS - 1:
                    self.guests[gp.name] = g  # its logs are evidence
                    raise
                log.info("%s: SSH port %d was taken; choosing another", gp.name, g.ssh_port)
                g.stop()
                for f in (g.files.qmp, g.files.console_sock):
                    f.unlink(missing_ok=True)
        raise AssertionError("unreachable")

    @staticmethod
    def _verify(g: Guest) -> None:
        g.verify_features()
        g.verify_nics()

    def wait_ready(self, progress: Progress) -> None:
        timeout = self.plan.config.boot_timeout_s
        start = time.monotonic()
        deadline = start + timeout
        waiting = dict(self.guests)
        progress.step(f"waiting for {len(waiting)} guest(s) to boot", total=len(waiting))
        while waiting:
            for name, g in list(waiting.items()):
                if g.poll_ready():
                    del waiting[name]
                    progress.advance()
            if not waiting:
                break
            now = time.monotonic()
            if self.accel == "kvm" and now - start > KVM_SILENT_S:
                silent = [g.name for g in waiting.values() if not g.console.tail(1)]
                if silent:
                    raise KvmSilent(f"KVM present but cannot boot Linux: guest "
                                    f"'{silent[0]}' printed nothing in {KVM_SILENT_S:g} s")
            if now > deadline:
                raise next(iter(waiting.values())).boot_timeout(timeout)
            time.sleep(0.02)

    # --- attach to a running testbed -------------------------------------------------

    @classmethod
    def attach(cls, name: str, state_root: Path | None = None) -> Testbed:
        st = state.find(name, state_root)
        try:
            cfg = config.parse_dict(st.meta.get("config", {}), default_name=name)
        except ConfigError as exc:
            raise StateError(f"testbed '{name}': its state folder {st.dir} holds no "
                                   f"usable config ({exc}); remove it with 'harness gc'") from exc
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

    def down(self, error: BaseException | None = None) -> cleanup.Removed:
        """Stop every guest and remove everything the testbed made; idempotent.

        With ``error`` (what made the caller give up), the guests' logs are copied to
        ``results/<testbed>/`` first and the error is pointed at the copy. Every step
        runs whatever the one before it raised; SIGINT/SIGTERM wait until the end.
        """
        if self.closed and not self.state.dir.exists():
            return cleanup.Removed()
        with interrupts.held():
            if isinstance(error, Exception):
                try:
                    self.keep_evidence(error)
                except OSError as exc:
                    log.warning("cannot keep the logs of %s: %s", self.name, exc)
            for g in self.guests.values():
                try:
                    g.stop()
                except Exception as exc:  # one guest's trouble must not stop the teardown
                    log.warning("%s: %s", g.name, exc)
            removed = cleanup.teardown(self.state)
            self.closed = True
        return removed

    def keep_evidence(self, error: Exception | None = None) -> Path | None:
        """Copy each guest's console log, QEMU log and command line to
        ``results/<testbed>/``; point ``error`` (a HarnessError) at the copies."""
        files = [(g, f) for g in self.guests.values()
                 for f in (g.files.console_log, g.files.qemu_log, g.files.dir / "qemu.argv")
                 if f.exists()]
        if not files:
            return None
        dest = results_root() / self.name
        dest.mkdir(parents=True, exist_ok=True)
        copies: dict[str, Path] = {}
        for g, f in files:
            copy = dest / f"{g.name}-{f.name}"
            shutil.copyfile(f, copy)
            copies[str(f)] = copy
        if isinstance(error, GuestError) and error.console_log in copies:
            error.console_log = str(copies[error.console_log])
        elif isinstance(error, HarnessError):
            error.evidence = str(dest)
        return dest

    def __enter__(self) -> Testbed:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self.down(error=exc)
