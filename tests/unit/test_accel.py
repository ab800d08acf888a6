"""Which accelerator guests get: KVM only where it really boots Linux (faked probes)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from harness import host
from harness.errors import EnvironmentProblem
from harness.host import AccelProbe

RAN = AccelProbe("kvm", True, "ran guest code")
REFUSED = AccelProbe("kvm", False, "failed to set MSR 0x10a")
BOOTED = AccelProbe("kvm", True, "booted Linux")
HUNG = AccelProbe("kvm", False, "KVM present but cannot boot Linux: the kernel printed nothing "
                  "in 20 s")


@pytest.mark.parametrize(("wanted", "reset", "linux", "accel", "why"), [
    ("auto", RAN, BOOTED, "kvm", "KVM boots Linux here"),
    ("kvm", RAN, BOOTED, "kvm", "KVM boots Linux here"),
    ("auto", RAN, HUNG, "tcg", "cannot boot Linux"),
    ("auto", REFUSED, None, "tcg", "KVM cannot run guest code (failed to set MSR"),
    ("auto", RAN, None, "tcg", "not probed with a Linux kernel"),
    ("tcg", RAN, BOOTED, "tcg", "TCG asked for"),
])
def test_decision(wanted: str, reset: AccelProbe, linux: AccelProbe | None, accel: str,
                  why: str) -> None:
    choice = host.decide_accel(wanted, reset, linux)
    assert choice.accel == accel and why in choice.why


@pytest.mark.parametrize(("reset", "linux", "message"), [
    (RAN, HUNG, "cannot boot Linux"),
    (REFUSED, None, "cannot run guest code"),
])
def test_explicit_kvm_that_cannot_work_is_an_error(reset: AccelProbe, linux: AccelProbe | None,
                                                   message: str) -> None:
    with pytest.raises(EnvironmentProblem, match=message):
        host.decide_accel("kvm", reset, linux)


def test_unknown_accel_is_named() -> None:
    with pytest.raises(EnvironmentProblem, match="accel 'hvf' is unknown"):
        host.decide_accel("hvf", None, None)


@pytest.mark.parametrize(("console", "timed_out", "works", "detail"), [
    ("[ 0.0] Linux version 6.1\n[ 2.1] Kernel panic - not syncing: VFS: Unable to mount "
     "root fs on unknown-block(0,0)\n", False, True, "booted Linux"),
    ("", True, False, "printed nothing in 20 s"),
    ("[    0.000000] Linux version 6.1\n[   19.01] setup_percpu: NR_CPUS:8192\n", True,
     False, "stopped after 20 s at 'setup_percpu: NR_CPUS:8192'"),
    ("[ 0.0] Linux version 6.1\n", False, False, "QEMU exited at 'Linux version 6.1'"),
])
def test_judge_linux_boot(console: str, timed_out: bool, works: bool, detail: str) -> None:
    probe = host.judge_linux_boot(console, timed_out, 20)
    assert probe.works is works and detail in probe.detail


def test_override_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HARNESS_ACCEL", raising=False)
    assert host.wanted_accel("auto") == "auto"
    monkeypatch.setenv("HARNESS_ACCEL", "tcg")
    assert host.wanted_accel("kvm") == "tcg"
    assert host.wanted_accel("auto", override="kvm") == "kvm"
    monkeypatch.setenv("HARNESS_ACCEL", "fast")
    with pytest.raises(EnvironmentProblem, match="HARNESS_ACCEL: 'fast' is unknown"):
        host.wanted_accel("auto")


def test_linux_verdict_is_cached_per_boot_qemu_and_kernel(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"\x7fELF one")
    runs: list[list[str]] = []

    def fake_run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
        runs.append(argv)
        return subprocess.CompletedProcess(argv, 0, b"Kernel panic - not syncing: VFS", b"")

    monkeypatch.setattr(host.subprocess, "run", fake_run)
    qemu = "/usr/bin/qemu-system-x86_64"
    assert host.probe_kvm_linux(qemu, kernel).works
    assert host.probe_kvm_linux(qemu, kernel).works and len(runs) == 1
    assert "-accel" in runs[0] and runs[0][runs[0].index("-accel") + 1] == "kvm"
    kernel.write_bytes(b"\x7fELF another kernel")  # a new image: probed again
    os.utime(kernel, ns=(1, 1))
    host.probe_kvm_linux(qemu, kernel)
    assert len(runs) == 2
    # a guest found silent under KVM overrides the verdict for this kernel
    host.remember_linux_probe(qemu, kernel, HUNG)
    assert host.probe_kvm_linux(qemu, kernel) == HUNG and len(runs) == 2


def test_choose_never_probes_for_tcg(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a: object, **kw: object) -> AccelProbe:
        raise AssertionError("probed")

    monkeypatch.setattr(host, "probe_accel", boom)
    assert host.choose_accel("/nonexistent/qemu", "tcg").accel == "tcg"
