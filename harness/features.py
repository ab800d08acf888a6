"""CPU features the harness can request from QEMU and verify inside a guest.

Pure data and pure checks: which CPUID bit and /proc/cpuinfo flag stand for each
feature, and how to judge the report printed by the guest probe
(guest/probes/cpuprobe.c). Running the probe is the guest module's job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from harness.errors import FeatureMissing, GuestError


@dataclass(frozen=True)
class Feature:
    name: str  # name in the spec and in QEMU's -cpu property list
    cpuinfo_flag: str | None  # flag in the guest's /proc/cpuinfo; None: the kernel has none
    leaf: int
    subleaf: int
    register: str  # eax/ebx/ecx/edx
    bit: int
    executed: bool  # the probe executes the instructions in user space
    hint: str  # how to get the feature when it is missing


FEATURES: dict[str, Feature] = {
    f.name: f
    for f in (
        Feature("fsgsbase", "fsgsbase", 7, 0, "ebx", 0, True,
                "needs -cpu max (TCG provides it) and a kernel with FSGSBASE support (5.9+)"),
        Feature("rdrand", "rdrand", 1, 0, "ecx", 30, True,
                "needs -cpu max or a host CPU with RDRAND"),
        Feature("rdseed", "rdseed", 7, 0, "ebx", 18, False,
                "needs -cpu max or a host CPU with RDSEED"),
        Feature("avx2", "avx2", 7, 0, "ebx", 5, False, "needs -cpu max"),
        Feature("rdpid", "rdpid", 7, 0, "ecx", 22, False,
                "QEMU 7.2's TCG does not emulate RDPID; use KVM on a host that has it"),
        Feature("x2apic", "x2apic", 1, 0, "ecx", 21, False,
                "TCG has no x2APIC; use KVM (accel = \"kvm\") on a host that has it"),
        # Debian's 6.1 kernel knows nothing of UINTR: no cpuinfo flag, and CR4.UINTR is set
        # by the project's module (guest/kmod/uintr), so executing TESTUI is the real test
        Feature("uintr", None, 7, 0, "edx", 5, True,
                "needs the project's QEMU ('harness qemu build'; stock QEMU 7.2 has no user "
                "interrupts) and the uintr module, which images load at boot when the CPU "
                "has the feature"),
    )
}


# Features that stock QEMU cannot give and the project's patched QEMU can (images/qemu/)
NEEDS_PROJECT_QEMU = frozenset({"uintr"})


def feature_names() -> list[str]:
    return sorted(FEATURES)


@dataclass(frozen=True)
class FeatureReport:
    """What the guest said about one feature."""

    name: str
    cpuid: bool
    cpuinfo: bool
    executed: bool | None  # None when the feature is not executed by the probe

    @property
    def ok(self) -> bool:
        return self.cpuid and self.cpuinfo and self.executed is not False


def judge(requested: list[str], probe_json: str, cpuinfo_flags: set[str],
          guest: str) -> list[FeatureReport]:
    """Turn the probe's JSON and the cpuinfo flags into a report per requested feature.

    Raises FeatureMissing naming the first missing feature and how to get it.
    """
    try:
        probe = json.loads(probe_json)
        cpuid_bits = probe["cpuid"]
        executed = probe["executed"]
    except (ValueError, KeyError, TypeError) as exc:
        raise GuestError(f"{guest}: the CPU probe printed unreadable output: {probe_json[:120]!r}",
                         guest=guest) from exc
    reports = []
    for name in requested:
        feat = FEATURES[name]
        reports.append(FeatureReport(
            name=name,
            cpuid=bool(cpuid_bits.get(name)),
            cpuinfo=feat.cpuinfo_flag is None or feat.cpuinfo_flag in cpuinfo_flags,
            executed=(executed.get(name) == "ok") if feat.executed else None,
        ))
    for rep in reports:
        if not rep.ok:
            why = []
            if not rep.cpuid:
                why.append("CPUID bit clear")
            if not rep.cpuinfo:
                why.append("absent from /proc/cpuinfo")
            if rep.executed is False:
                why.append("instruction faulted in user space: "
                           f"{executed.get(rep.name, 'not run')}")
            raise FeatureMissing(
                f"{guest}: CPU feature '{rep.name}' requested but not usable in the guest "
                f"({', '.join(why)}); {FEATURES[rep.name].hint}", guest=guest)
    return reports
