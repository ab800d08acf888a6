"""The CLI end to end, Ctrl-C, a crashed harness + gc, boot timeout, leftovers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from harness import config
from harness.errors import BootTimeout, FeatureMissing
from harness.guest import Guest
from harness.testbed import Testbed

from ..conftest import leftovers

SPEC = """
name = "{name}"
[[network]]
name = "data"
[[guest]]
name = "a"
  [[guest.nic]]
  network = "data"
  queues = 2
[[guest]]
name = "b"
  [[guest.nic]]
  network = "data"
  queues = 2
"""


def harness(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True,
                         text=True, timeout=300, env=os.environ.copy())
    if check and res.returncode != 0:
        raise AssertionError(f"harness {' '.join(args)} -> {res.returncode}: {res.stderr}")
    return res


def test_cli_up_exec_status_down(tmp_path: Path, isolated_state: Path) -> None:
    spec = tmp_path / "cli.toml"
    spec.write_text(SPEC.format(name="clitest"))
    up = harness("--json", "up", str(spec))
    guests = json.loads(up.stdout)["guests"]
    assert {g["guest"] for g in guests} == {"a", "b"}
    try:
        r = harness("exec", "a", "--", "echo", "hello;", "exit", "4", check=False)
        assert r.returncode == 4 and r.stdout.strip() == "hello"
        r = harness("--json", "exec", "--all", "--", "hostname")
        res = json.loads(r.stdout)["results"]
        assert {n: v["stdout"].strip() for n, v in res.items()} == {"a": "a", "b": "b"}
        # the serial console (a root shell) and interactive SSH, driven through stdin
        con = subprocess.run([sys.executable, "-m", "harness.cli", "console", "a"],
                             input="echo console-$((6*7))\n", capture_output=True,
                             text=True, timeout=60, env=os.environ.copy())
        assert con.returncode == 0 and "console-42" in con.stdout, con.stdout[-500:]
        ssh = subprocess.run([sys.executable, "-m", "harness.cli", "ssh", "b"],
                             input="hostname\n", capture_output=True, text=True, timeout=60,
                             env=os.environ.copy())
        assert ssh.returncode == 0 and ssh.stdout.strip().endswith("b"), ssh.stderr
        st = json.loads(harness("--json", "status").stdout)["testbeds"]
        assert [row["process"] for row in st] == ["running", "running"]
        assert "running; detached" in st[0]["state"]
    finally:
        down = json.loads(harness("--json", "down", "clitest").stdout)["removed"]
    assert down[0]["guests"] == 2 and down[0]["namespaces"] == 1 and down[0]["taps"] == 2
    assert leftovers(isolated_state) == []


def test_doctor_reports_real_probes() -> None:
    checks = {c["check"]: c for c in json.loads(harness("--json", "doctor").stdout)["checks"]}
    assert checks["qemu"]["ok"] and checks["accel tcg"]["ok"]
    assert checks["accel tcg"]["detail"] == "ran guest code"
    # KVM is judged by running guest code, never by the device node alone
    assert checks["accel kvm"]["ok"] == (checks["accel kvm"]["detail"] == "ran guest code")
    assert checks["cpu feature fsgsbase"]["ok"] and not checks["cpu feature uintr"]["ok"]
    assert checks["image minimal"]["ok"]


def test_cli_bad_input_is_one_line(tmp_path: Path) -> None:
    spec = tmp_path / "bad.toml"
    spec.write_text('[[guest]]\nname = "a"\nvcpus = 0\n')
    r = harness("up", str(spec), check=False)
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "guest[0].vcpus" in r.stderr
    assert "Traceback" not in r.stderr
    r = harness("exec", "nosuch", "--", "true", check=False)
    assert r.returncode == 1 and "no testbed is up" in r.stderr
    r = harness("up", str(tmp_path / "missing.toml"), check=False)
    assert r.returncode == 1 and "cannot read spec file" in r.stderr
    r = harness("bench", "uintr", "--iters", "5", check=False)
    assert r.returncode == 1 and r.stderr.strip() == "harness: error: --iters: use 100 to 10000000"
    r = harness("bench", "rx-memory", "--burst", "0", check=False)
    assert r.returncode == 1 and "--burst: use 1 to 1024" in r.stderr
    r = harness("qemu", "nosuch", check=False)
    assert r.returncode == 2 and "invalid choice" in r.stderr and "Traceback" not in r.stderr


def _wait_for(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_ctrl_c_during_boot_leaves_nothing(tmp_path: Path, isolated_state: Path) -> None:
    spec = tmp_path / "intr.toml"
    spec.write_text(SPEC.format(name="intr"))
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "up", str(spec)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert _wait_for(lambda: bool(list(isolated_state.glob("intr/*/console.log"))), 60)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert leftovers(isolated_state) == []


def test_crashed_harness_is_collected_by_gc(tmp_path: Path, isolated_state: Path) -> None:
    script = tmp_path / "crash.py"
    script.write_text(
        "import os, sys\nfrom harness import config\nfrom harness.testbed import Testbed\n"
        f"tb = Testbed.up(config.parse({SPEC.format(name='crash')!r}))\n"
        "print('up', flush=True)\nos.kill(os.getpid(), 9)\n")
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == -9 and "up" in res.stdout
    left = leftovers(isolated_state)
    assert any(x.startswith("qemu pid") for x in left) and "netns hb-crash" in left
    status = json.loads(harness("--json", "status").stdout)["testbeds"]
    assert all("abandoned" in row["state"] for row in status if row["testbed"] == "crash")
    removed = json.loads(harness("--json", "gc").stdout)["removed"][0]
    assert removed["processes"] == 2 and removed["namespaces"] == 1
    assert leftovers(isolated_state) == []


def test_boot_timeout_is_reported(monkeypatch: pytest.MonkeyPatch,
                                  isolated_state: Path) -> None:
    # a guest that is never resumed cannot become ready
    monkeypatch.setattr(Guest, "cont", lambda self: None)
    cfg = config.parse('name = "slow"\nboot_timeout_s = 5\n[[guest]]\nname = "a"\n')
    with pytest.raises(BootTimeout, match=r"a: no readiness signal within 5 s.*console log"):
        Testbed.up(cfg)
    assert leftovers(isolated_state) == []


def test_feature_tcg_lacks_is_named(isolated_state: Path) -> None:
    cfg = config.parse('name = "feat"\n[[guest]]\nname = "a"\ncpu_features = ["rdpid"]\n')
    with pytest.raises(FeatureMissing, match=r"'rdpid'.*CPUID bit clear.*RDPID"):
        Testbed.up(cfg)
    assert leftovers(isolated_state) == []


def test_feature_qemu_cannot_offer_fails_before_boot(isolated_state: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # HARNESS_QEMU forces the stock binary, which has no uintr
    monkeypatch.setenv("HARNESS_QEMU", "/usr/bin/qemu-system-x86_64")
    cfg = config.parse('name = "uintr"\n[[guest]]\nname = "a"\ncpu_features = ["uintr"]\n')
    with pytest.raises(FeatureMissing, match=r"'uintr' is not offered.*harness qemu build"):
        Testbed.up(cfg)
    assert leftovers(isolated_state) == []
