"""What this host's QEMU can really do: binary, version, accelerators, CPU flags.

Accelerators are probed by running guest code, never by trusting /dev/kvm: a
64 KiB firmware image whose reset vector writes to the isa-debug-exit port makes
QEMU exit with a known status only if the accelerator really executed it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from harness.errors import EnvironmentProblem

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


@dataclass(frozen=True)
class AccelProbe:
    accel: str
    works: bool
    detail: str


def probe_accel(qemu: str, accel: str, timeout: float = 10.0) -> AccelProbe:
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


@lru_cache(maxsize=4)
def choose_accel(qemu: str, wanted: str) -> str:
    """'auto' picks KVM only when a real probe ran guest code with it."""
    if wanted == "tcg":
        return "tcg"
    kvm = probe_accel(qemu, "kvm")
    if kvm.works:
        return "kvm"
    if wanted == "kvm":
        raise EnvironmentProblem(f"accel = \"kvm\" was asked for but KVM does not work here "
                                 f"({kvm.detail}); use accel = \"auto\" or \"tcg\"")
    return "tcg"


def firmware() -> Path | None:
    """qboot boots a PVH kernel in a fraction of SeaBIOS's time; use it when present."""
    return QBOOT if QBOOT.exists() else None
