"""What this host's QEMU can really do: binary, version, accelerators, CPU flags.

Accelerators are probed by running guest code, never by trusting /dev/kvm, in two
steps. First a 64 KiB firmware image whose reset vector writes to the
isa-debug-exit port: QEMU exits with a known status only if the accelerator really
executed it (cheap; catches a missing or refusing KVM). Then, because a KVM that
runs those few instructions can still hang on a real kernel (nested and cloud
machines often do), the image's own Linux kernel is booted under KVM with no root
file system: it must print its banner and reach the panic at the end of kernel
start-up within ``LINUX_PROBE_TIMEOUT_S`` (TCG gets there in about 3 s). That
answer is cached per host boot, QEMU binary and kernel. ``decide_accel`` turns the
probes into a choice and is pure.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from harness.errors import EnvironmentProblem
from harness.paths import cache_root

QBOOT = Path("/usr/share/qemu/qboot.rom")
_EXIT_PORT = 0xF4
_EXIT_VALUE = 0x42  # QEMU exits with (value << 1) | 1


def qemu_binary(needs_project: Sequence[str] = ()) -> str:
    """The QEMU to run.

    HARNESS_QEMU wins when set; when something in the spec only the project's patched
    QEMU has (``TestbedConfig.needs_project_qemu()``: uintr, drop_when_full), its cached
    build (qemu_build.py), which must exist; otherwise the system's.
    """
    env = os.environ.get("HARNESS_QEMU")
    if env:
        return env
    if needs_project:
        from harness import qemu_build

        build = qemu_build.current()
        if build is None:
            raise EnvironmentProblem(
                f"{needs_project[0]} needs the project's QEMU, which is not built for "
                "the current sources and patches; run 'harness qemu build' (about 10 "
                "minutes the first time)")
        return str(build.binary)
    path = shutil.which("qemu-system-x86_64")
    if not path:
        raise EnvironmentProblem("qemu-system-x86_64 is not installed; install the "
                                 "qemu-system-x86 package (scripts/setup does)")
    return path


@lru_cache(maxsize=4)
def qemu_version(qemu: str) -> str:
    out = subprocess.run([qemu, "--version"], capture_output=True, text=True, check=False)
    m = re.search(r"version (\S+)", out.stdout)
    return m.group(1) if m else "unknown"


@lru_cache(maxsize=4)
def cpu_flags(qemu: str) -> frozenset[str]:
    """CPUID flag names this QEMU binary accepts in -cpu."""
    out = subprocess.run([qemu, "-cpu", "help"], capture_output=True, text=True,
                         check=False).stdout
    _, _, flags = out.partition("Recognized CPUID flags:")
    return frozenset(flags.split())


def reset_vector_rom() -> bytes:
    """A 64 KiB BIOS image: at the reset vector, out 0xf4 <- 0x42, then hlt forever."""
    code = bytes([0xB0, _EXIT_VALUE, 0xE6, _EXIT_PORT, 0xF4, 0xEB, 0xFD])
    rom = bytearray(b"\xf4" * 0x10000)
    rom[0xFFF0:0xFFF0 + len(code)] = code
    return bytes(rom)


ACCELS = ("auto", "tcg", "kvm")
LINUX_PROBE_TIMEOUT_S = 20.0  # TCG reaches the same panic in about 3 s on these machines
# the kernel's last words when it finds no root file system: start-up is complete
_LINUX_DONE = re.compile(r"Kernel panic - not syncing|VFS: Unable to mount root")


@dataclass(frozen=True)
class AccelProbe:
    accel: str
    works: bool
    detail: str


@dataclass(frozen=True)
class AccelChoice:
    accel: str  # "tcg" or "kvm"
    why: str    # one line for doctor, status and warnings


def probe_accel(qemu: str, accel: str, timeout: float = 10.0) -> AccelProbe:
    """Does ``accel`` execute guest code at all (the reset-vector probe)?"""
    if accel == "kvm" and not os.path.exists("/dev/kvm"):
        return AccelProbe(accel, False, "/dev/kvm does not exist")
    with tempfile.TemporaryDirectory(prefix="harness-probe-") as tmp:
        rom = Path(tmp) / "probe.rom"
        rom.write_bytes(reset_vector_rom())
        argv = [qemu, "-nodefaults", "-no-user-config", "-display", "none", "-machine", "q35",
                "-accel", accel, "-cpu", "max", "-m", "16M", "-bios", str(rom),
                "-device", f"isa-debug-exit,iobase={_EXIT_PORT:#x},iosize=1"]
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                 check=False)
        except subprocess.TimeoutExpired:
            return AccelProbe(accel, False, f"guest code did not run within {timeout:g} s")
    if res.returncode == (_EXIT_VALUE << 1) | 1:
        return AccelProbe(accel, True, "ran guest code")
    msg = (res.stderr.strip().splitlines() or [f"exit status {res.returncode}"])[-1]
    return AccelProbe(accel, False, msg[:160])


def linux_boot_argv(qemu: str, accel: str, kernel: Path) -> list[str]:
    """QEMU booting ``kernel`` with no root file system, console on stdout: start-up
    ends in a panic, and -no-reboot turns ``panic=-1`` into QEMU's exit."""
    argv = [qemu, "-nodefaults", "-no-user-config", "-display", "none", "-machine", "q35",
            "-accel", accel, "-cpu", "max", "-m", "256M", "-serial", "stdio", "-no-reboot",
            "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1 cryptomgr.notests"]
    fw = firmware()
    return argv + (["-bios", str(fw)] if fw else [])


def judge_linux_boot(console: str, timed_out: bool, timeout: float) -> AccelProbe:
    """Pure: what a probe boot's console output says about the accelerator."""
    lines = [ln.strip() for ln in console.splitlines() if ln.strip()]
    if _LINUX_DONE.search(console):
        return AccelProbe("kvm", True, "booted Linux")
    if not lines:
        return AccelProbe("kvm", False, "KVM present but cannot boot Linux: the kernel printed "
                          f"nothing in {timeout:g} s")
    where = re.sub(r"^\[\s*[\d.]+\]\s*", "", lines[-1])[:80]
    end = f"stopped after {timeout:g} s" if timed_out else "QEMU exited"
    return AccelProbe("kvm", False, f"KVM present but cannot boot Linux: {end} at "
                      f"'{where}'")


def _probe_cache_key(qemu: str, kernel: Path) -> str:
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = "unknown"
    h = hashlib.sha256(boot_id.encode())
    for f in (Path(shutil.which(qemu) or qemu), kernel):
        try:
            st = f.stat()
            h.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(str(f).encode())
    return h.hexdigest()[:16]


def _probe_cache() -> Path:
    return cache_root() / "accel-probes.json"


def _cached(key: str) -> AccelProbe | None:
    try:
        entry = json.loads(_probe_cache().read_text()).get(key)
        return AccelProbe(**entry) if entry else None
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def remember_linux_probe(qemu: str, kernel: Path, probe: AccelProbe) -> None:
    """Keep a Linux-boot verdict for this host boot, QEMU and kernel (also used when a
    guest under KVM was found silent and restarted under TCG)."""
    path = _probe_cache()
    try:
        known = json.loads(path.read_text())
        if not isinstance(known, dict):
            known = {}
    except (OSError, ValueError):
        known = {}
    known[_probe_cache_key(qemu, kernel)] = asdict(probe)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(known, indent=1) + "\n")
    tmp.replace(path)


def probe_kvm_linux(qemu: str, kernel: Path, timeout: float = LINUX_PROBE_TIMEOUT_S,
                    use_cache: bool = True) -> AccelProbe:
    """Does KVM boot the guests' real kernel to the end of its start-up? Cached."""
    key = _probe_cache_key(qemu, kernel)
    if use_cache and (hit := _cached(key)) is not None:
        return hit
    try:
        res = subprocess.run(linux_boot_argv(qemu, "kvm", kernel), capture_output=True,
                             timeout=timeout, check=False)
        probe = judge_linux_boot(res.stdout.decode(errors="replace"), False, timeout)
        if not probe.works and not res.stdout.strip() and res.stderr.strip():
            err = res.stderr.decode(errors="replace").strip().splitlines()[-1]
            probe = AccelProbe("kvm", False, f"KVM present but cannot boot Linux: {err[:120]}")
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        probe = judge_linux_boot(out, True, timeout)
    remember_linux_probe(qemu, kernel, probe)
    return probe


def decide_accel(wanted: str, reset: AccelProbe | None, linux: AccelProbe | None) -> AccelChoice:
    """Pure: the accelerator for ``wanted`` (auto | tcg | kvm) given the probes.

    KVM only where it ran the reset vector *and* booted Linux. ``auto`` falls back to
    TCG with the reason; an explicit ``kvm`` that cannot work is an error naming it.
    """
    if wanted not in ACCELS:
        raise EnvironmentProblem(f"accel '{wanted}' is unknown; use one of {', '.join(ACCELS)}")
    if wanted == "tcg":
        return AccelChoice("tcg", "TCG asked for")
    problem = ""
    if reset is None or not reset.works:
        problem = f"KVM cannot run guest code ({reset.detail if reset else 'not probed'})"
    elif linux is None:
        problem = "KVM was not probed with a Linux kernel"
    elif not linux.works:
        problem = linux.detail
    if not problem:
        return AccelChoice("kvm", "KVM boots Linux here")
    if wanted == "kvm":
        raise EnvironmentProblem(f"accel = \"kvm\" was asked for but {problem}; use "
                                 "accel = \"auto\" or \"tcg\" (or HARNESS_ACCEL=tcg)")
    return AccelChoice("tcg", problem)


def wanted_accel(spec_value: str, override: str | None = None) -> str:
    """The accelerator asked for: a command-line override, then HARNESS_ACCEL, then the
    spec's ``accel``."""
    value = override or os.environ.get("HARNESS_ACCEL") or spec_value
    if value not in ACCELS:
        source = ("--accel" if override else "HARNESS_ACCEL" if os.environ.get("HARNESS_ACCEL")
                  else "accel")
        raise EnvironmentProblem(f"{source}: '{value}' is unknown; use one of "
                                 f"{', '.join(ACCELS)}")
    return value


@lru_cache(maxsize=8)
def choose_accel(qemu: str, wanted: str, kernel: Path | None = None) -> AccelChoice:
    """Probe as far as needed and decide (see decide_accel); ``kernel`` is the guests'."""
    if wanted == "tcg":
        return decide_accel(wanted, None, None)
    reset = probe_accel(qemu, "kvm")
    linux = None
    if reset.works and kernel is not None:
        linux = probe_kvm_linux(qemu, kernel)
    return decide_accel(wanted, reset, linux)


def firmware() -> Path | None:
    """qboot boots a PVH kernel in a fraction of SeaBIOS's time; use it when present."""
    return QBOOT if QBOOT.exists() else None
