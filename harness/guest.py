"""One running QEMU guest: launch, readiness, SSH, QMP operations, verification, stop.

A Guest owns its QEMU process, its QMP connection and its SSH session. It does
not create taps or namespaces (testbed.py does) and records every process in the
testbed state before anything else can fail. ``stop`` is idempotent: QMP quit,
then SIGKILL, and it confirms the process is gone.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import features as feats
from harness.console import ConsoleLog
from harness.errors import (
    BootTimeout,
    GuestError,
    KernelPanic,
    QemuExited,
    QMPError,
)
from harness.images import Image
from harness.plan import GuestPlan, NicPlan
from harness.qemu_cmd import LaunchParams, build_argv, root_port
from harness.qmp import Monitor
from harness.ssh import CommandResult, Session
from harness.state import Resource, TestbedState, proc_start_time

log = logging.getLogger(__name__)

PROBE = "/usr/local/bin/cpuprobe"


class Phase(enum.Enum):
    NEW = "new"
    LAUNCHED = "launched"  # QEMU started, paused (-S)
    BOOTING = "booting"
    READY = "ready"  # readiness marker seen, SSH connected
    STOPPED = "stopped"


@dataclass(frozen=True)
class GuestFiles:
    dir: Path

    @property
    def qmp(self) -> Path:
        return self.dir / "qmp.sock"

    @property
    def console_sock(self) -> Path:
        return self.dir / "console.sock"

    @property
    def console_log(self) -> Path:
        return self.dir / "console.log"

    @property
    def qemu_log(self) -> Path:
        return self.dir / "qemu.log"


@dataclass(frozen=True)
class NicReport:
    name: str
    queues_max: int
    rx_queues: int
    tx_queues: int
    msix_rx: int
    msix_tx: int


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (QEMU binds it moments later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Guest:
    def __init__(self, plan: GuestPlan, files: GuestFiles, *, image: Image | None = None,
                 state: TestbedState | None = None, ssh_port: int = 0,
                 key_file: Path | None = None, host_key: str = "") -> None:
        self.plan = plan
        self.name = plan.name
        self.files = files
        self.image = image
        self.state = state
        self.ssh_port = ssh_port
        self.key_file = key_file
        self.host_key = host_key
        self.phase = Phase.NEW
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self._qmp: Monitor | None = None
        self._ssh: Session | None = None
        self.console = ConsoleLog(files.console_log)
        self.timings: dict[str, float] = {}
        self.feature_reports: list[feats.FeatureReport] = []
        self.nic_reports: list[NicReport] = []

    # --- launch and readiness ---------------------------------------------------------

    def launch(self, qemu: str, accel: str, pubkey: str, firmware: Path | None) -> None:
        if self.phase is not Phase.NEW or self.image is None or self.state is None:
            raise GuestError(f"{self.name}: cannot launch a guest twice", guest=self.name)
        self.files.dir.mkdir(parents=True, exist_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.files.qmp))
        listener.listen(1)
        try:
            params = LaunchParams(qemu=qemu, accel=accel, qmp_fd=listener.fileno(),
                                  console_sock=self.files.console_sock,
                                  console_log=self.files.console_log, ssh_port=self.ssh_port,
                                  pubkey=pubkey, firmware=firmware)
            argv = build_argv(self.plan, self.image.boot, params)
            (self.files.dir / "qemu.argv").write_text(json.dumps(argv, indent=1) + "\n")
            self.timings["launch"] = time.monotonic()
            with open(self.files.qemu_log, "wb") as qlog:
                # own session: a Ctrl-C at the terminal reaches the harness, which then
                # stops the guests in order, instead of killing QEMU under it
                self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=qlog,
                                             stderr=subprocess.STDOUT,
                                             pass_fds=[listener.fileno()],
                                             start_new_session=True)
        finally:
            listener.close()
        self.pid = self.proc.pid
        self.state.record(Resource("process", str(self.pid), match=str(self.files.dir)))
        self.state.meta["guests"][self.name] = self.describe()
        self.state.save()
        self.phase = Phase.LAUNCHED
        try:
            self._qmp = Monitor(str(self.files.qmp), self.name)
        except QMPError as exc:
            self._raise_exited(f"QEMU did not come up: {exc}")

    def describe(self) -> dict[str, Any]:
        return {"pid": self.pid, "start_time": proc_start_time(self.pid) if self.pid else None,
                "ssh_port": self.ssh_port, "dir": str(self.files.dir),
                "image": self.image.flavor if self.image else "",
                "host_key": self.host_key, "key_file": str(self.key_file or ""),
                "taps": [n.tap for n in self.plan.nics]}

    def cont(self) -> None:
        self.qmp.cmd("cont")
        self.timings["cont"] = time.monotonic()
        self.phase = Phase.BOOTING

    def poll_ready(self) -> bool:
        """One non-blocking readiness check; raises on panic or QEMU exit."""
        self.console.poll()
        panic = self.console.panic()
        if panic:
            raise KernelPanic(f"{self.name}: guest kernel panicked: {panic}", guest=self.name,
                              console_log=str(self.files.console_log))
        if self.console.ready() is not None:
            self.timings["ready"] = time.monotonic()
            return True
        if self.proc is not None and self.proc.poll() is not None:
            self._raise_exited(f"QEMU exited with status {self.proc.returncode} during boot")
        return False

    def check(self) -> None:
        """Raise if the guest panicked or its QEMU ended since it booted."""
        self.console.poll()
        panic = self.console.panic()
        if panic:
            raise KernelPanic(f"{self.name}: guest kernel panicked: {panic}", guest=self.name,
                              console_log=str(self.files.console_log))
        if not self.alive():
            self._raise_exited("QEMU is no longer running")

    def _raise_exited(self, what: str) -> None:
        try:
            tail = self.files.qemu_log.read_text(errors="replace").strip().splitlines()
        except OSError:
            tail = []
        useful = [ln for ln in tail if not ln.startswith("libbpf")][-1:] or [""]
        raise QemuExited(f"{self.name}: {what}: {useful[0][:200]}", guest=self.name,
                         console_log=str(self.files.console_log))

    def boot_timeout(self, seconds: float) -> BootTimeout:
        return BootTimeout(f"{self.name}: no readiness signal within {seconds:g} s "
                           f"(last console line: {self.console.tail(1)[:120]!r})",
                           guest=self.name, console_log=str(self.files.console_log))

    def connect(self) -> None:
        if self.key_file is None:
            raise GuestError(f"{self.name}: no SSH key known", guest=self.name)
        self._ssh = Session(self.name, self.ssh_port, self.key_file, self.host_key)
        self.timings["ssh"] = time.monotonic()
        self.phase = Phase.READY

    # --- access ---------------------------------------------------------------------

    @property
    def qmp(self) -> Monitor:
        if self._qmp is None:
            if not self.files.qmp.exists():
                raise QMPError(f"{self.name}: no QMP socket at {self.files.qmp}")
            self._qmp = Monitor(str(self.files.qmp), self.name)
        return self._qmp

    @property
    def ssh(self) -> Session:
        if self._ssh is None:
            self.connect()
        assert self._ssh is not None
        return self._ssh

    def run(self, command: str, *, timeout: float = 60.0, check: bool = False,
            **kw: Any) -> CommandResult:
        return self.ssh.run(command, timeout=timeout, check=check, **kw)

    def put(self, local: Path | str, remote: str) -> None:
        self.ssh.put(local, remote)

    def get(self, remote: str, local: Path | str) -> None:
        self.ssh.get(remote, local)

    # --- verification -----------------------------------------------------------------

    def verify_features(self) -> list[feats.FeatureReport]:
        """Check every requested CPU feature inside the guest (cpuinfo + executed probe)."""
        res = self.run(f"{PROBE}; echo ===; grep -m1 '^flags' /proc/cpuinfo", check=True)
        probe_out, _, flags = res.stdout.partition("===")
        flagset = set(flags.split(":", 1)[-1].split())
        self.feature_reports = feats.judge(list(self.plan.config.cpu_features) or [],
                                           probe_out.strip(), flagset, self.name)
        return self.feature_reports

    def probe_report(self) -> dict[str, Any]:
        return json.loads(self.run(PROBE, check=True).stdout)

    def verify_nics(self) -> list[NicReport]:
        """Check each data NIC's queue count and its per-queue MSI-X vectors."""
        reports = []
        for nic in self.plan.nics:
            reports.append(self.nic_report(nic))
            r = reports[-1]
            want = nic.queues
            problems = []
            if r.queues_max != want:
                problems.append(f"device offers {r.queues_max} queue pairs")
            if r.rx_queues != want or r.tx_queues != want:
                problems.append(f"kernel uses {r.rx_queues} rx / {r.tx_queues} tx queues")
            if r.msix_rx != want or r.msix_tx != want:
                problems.append(f"{r.msix_rx} rx / {r.msix_tx} tx MSI-X vectors")
            if problems:
                raise GuestError(f"{self.name}: data{nic.index} should have {want} queue pairs "
                                 f"with one MSI-X vector each, but {'; '.join(problems)}",
                                 guest=self.name)
        self.nic_reports = reports
        return reports

    def nic_report(self, nic: NicPlan) -> NicReport:
        dev = f"data{nic.index}"
        # per-queue vectors by name; their mode (msix, not msi/intx) from the PCI device
        script = (
            f"d=/sys/class/net/{dev}; v=$(basename $(readlink $d/device)); "
            f"echo max=$(ethtool -l {dev} | awk '/^Combined:/ {{print $2; exit}}'); "
            "echo rx=$(ls -d $d/queues/rx-* | wc -l); echo tx=$(ls -d $d/queues/tx-* | wc -l); "
            "echo msix=$(cat $d/device/../msi_irqs/* 2>/dev/null | grep -c msix); "
            "echo msix_rx=$(grep -c \" $v-input\\.\" /proc/interrupts); "
            "echo msix_tx=$(grep -c \" $v-output\\.\" /proc/interrupts)"
        )
        out = self.run(script, check=True).stdout
        vals = dict(ln.split("=", 1) for ln in out.split() if "=" in ln)

        def num(key: str) -> int:
            try:
                return int(vals.get(key, "0") or 0)
            except ValueError:
                return 0

        # a per-queue vector only counts when the device runs in MSI-X mode
        msix = num("msix") >= num("msix_rx") + num("msix_tx")
        return NicReport(dev, num("max"), num("rx"), num("tx"),
                         num("msix_rx") if msix else 0, num("msix_tx") if msix else 0)

    # --- QMP operations (fault injection) ----------------------------------------------

    def status(self) -> str:
        return str(self.qmp.cmd("query-status")["status"])

    def pause(self) -> None:
        self.qmp.cmd("stop")

    def resume(self) -> None:
        self.qmp.cmd("cont")

    def powerdown(self) -> None:
        self.qmp.cmd("system_powerdown")

    def set_link(self, nic: int, up: bool) -> None:
        self.qmp.cmd("set_link", name=self._nic(nic).device_id, up=up)

    def nic_unplug(self, nic: int, timeout: float = 30.0) -> None:
        """Ask the guest to release the NIC (PCIe hot-unplug) and wait until it did."""
        dev = self._nic(nic).device_id
        mark = self.qmp.event_count()
        self.qmp.cmd("device_del", id=dev)
        self.qmp.wait_event("DEVICE_DELETED", timeout=timeout, after=mark,
                            match={"device": dev})

    def nic_plug(self, nic: int) -> None:
        n = self._nic(nic)
        args: dict[str, Any] = {"driver": "virtio-net-pci", "netdev": n.netdev_id,
                                "id": n.device_id, "mac": n.mac, "bus": root_port(n.index),
                                "mq": n.queues > 1, "vectors": n.vectors,
                                "disable-legacy": "on", "romfile": ""}
        if n.config.iommu:
            args.update({"iommu_platform": True, "ats": True})
        self.qmp.cmd("device_add", **args)

    def _nic(self, index: int) -> NicPlan:
        if not 0 <= index < len(self.plan.nics):
            raise GuestError(f"{self.name}: no data NIC {index}; it has "
                             f"{len(self.plan.nics)}", guest=self.name)
        return self.plan.nics[index]

    # --- handing a data NIC to a user-space driver ------------------------------------

    def nic_pci_address(self, nic: int) -> str:
        """The guest's PCI address of data NIC ``nic`` (from QEMU's view of the bus)."""
        dev = self._nic(nic).device_id

        def walk(devices: list[dict[str, Any]], bus: int) -> str | None:
            for d in devices:
                if d.get("qdev_id") == dev:
                    return f"0000:{bus:02x}:{d['slot']:02x}.{d['function']:x}"
                sub = d.get("pci_bridge", {})
                found = walk(sub.get("devices", []), sub.get("bus", {}).get("secondary", 0))
                if found:
                    return found
            return None

        for bus in self.qmp.cmd("query-pci"):
            found = walk(bus["devices"], bus["bus"])
            if found:
                return found
        raise GuestError(f"{self.name}: data NIC {nic} is not on the PCI bus (unplugged?)",
                         guest=self.name)

    def bind_nic(self, nic: int, driver: str) -> str:
        """Bind data NIC ``nic`` to 'vfio-pci' (user-space drivers) or back to the kernel's
        'virtio-pci'; returns its PCI address. Needs iommu = true for vfio-pci."""
        if driver not in ("vfio-pci", "virtio-pci"):
            raise GuestError(f"{self.name}: driver must be vfio-pci or virtio-pci, "
                             f"not {driver!r}", guest=self.name)
        if driver == "vfio-pci" and not self._nic(nic).config.iommu:
            raise GuestError(f"{self.name}: data NIC {nic} has no IOMMU; set iommu = true "
                             "on it in the spec to hand it to vfio-pci", guest=self.name)
        bdf = self.nic_pci_address(nic)
        dev = f"/sys/bus/pci/devices/{bdf}"
        current = self.run(f"basename $(readlink -f {dev}/driver) 2>/dev/null").stdout.strip()
        if current == driver:
            return bdf
        override = driver if driver == "vfio-pci" else ""
        self.run(f"echo '{override}' > {dev}/driver_override; "
                 f"if [ -e {dev}/driver ]; then echo {bdf} > {dev}/driver/unbind; fi; "
                 f"echo {bdf} > /sys/bus/pci/drivers_probe", check=True)
        bound = self.run(f"basename $(readlink -f {dev}/driver)").stdout.strip()
        if bound != driver:
            raise GuestError(f"{self.name}: {bdf} is bound to {bound or 'nothing'}, "
                             f"not {driver}", guest=self.name)
        if driver == "virtio-pci":  # the kernel's netdev is new: give it its name back
            n = self._nic(nic)
            self.run(f"for d in /sys/class/net/*; do [ \"$(cat $d/address)\" = {n.mac} ] && "
                     f"ip link set ${{d##*/}} name data{nic} && "
                     f"ip addr add {n.address} dev data{nic} && ip link set data{nic} up; "
                     "done; true", check=True)
        return bdf

    def kill(self) -> None:
        """Fault injection: SIGKILL the QEMU process, as a crash would."""
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self._reap(5.0)

    # --- stop ---------------------------------------------------------------------------

    def alive(self) -> bool:
        if self.pid is None:
            return False
        if self.proc is not None:
            return self.proc.poll() is None
        start = self.state.meta["guests"].get(self.name, {}).get("start_time") \
            if self.state else None
        return proc_start_time(self.pid) is not None and \
            (start is None or proc_start_time(self.pid) == start)

    def _reap(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None:
                if self.proc.poll() is not None:
                    return True
            elif not self.alive():
                return True
            time.sleep(0.02)
        return False

    def disconnect(self) -> None:
        """Close this process's SSH and QMP connections; QEMU keeps running."""
        if self._ssh is not None:
            try:
                self._ssh.close()
            except Exception as exc:  # closing a dead transport must not mask the caller
                log.debug("%s: ssh close: %s", self.name, exc)
            self._ssh = None
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None

    def stop(self, graceful_timeout: float = 5.0) -> None:
        """QMP quit, then SIGKILL; safe to call any number of times."""
        if self.phase is Phase.STOPPED:
            return
        if self._ssh is not None:
            try:
                self._ssh.close()
            except Exception as exc:  # a dead transport must not keep QEMU running
                log.debug("%s: ssh close: %s", self.name, exc)
            self._ssh = None
        if self.alive():
            try:
                self.qmp.cmd("quit", timeout=graceful_timeout)
            except QMPError as exc:
                log.debug("%s: quit: %s", self.name, exc)
            if not self._reap(graceful_timeout):
                self.kill()
        self.disconnect()
        self.phase = Phase.STOPPED
