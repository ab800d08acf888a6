"""The CLI end to end, interrupts at every moment of 'up', a crashed harness + gc, gc
racing 'up', testbeds side by side, the KVM fallback, kept evidence, leftovers."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from harness import config
from harness.cleanup import cmdline
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


def test_doctor_kvm_verdict_is_what_guests_run_on(testbed_factory: Callable[..., Testbed]
                                                  ) -> None:
    """doctor's KVM state and a real testbed agree: guests run on KVM exactly when doctor
    says KVM boots Linux here (on these machines it does not: TCG)."""
    checks = {c["check"]: c for c in json.loads(harness("--json", "doctor").stdout)["checks"]}
    assert checks["qemu"]["ok"] and checks["accel tcg"]["ok"]
    assert checks["accel tcg"]["detail"] == "ran guest code"
    kvm = checks["accel kvm"]
    assert kvm["ok"] == (kvm["detail"] == "booted Linux"), kvm
    assert checks["cpu feature fsgsbase"]["ok"] and not checks["cpu feature uintr"]["ok"]
    assert checks["image minimal"]["ok"]
    tb = testbed_factory('[[guest]]\nname = "a"\nmemory = "256M"\n', verify=False)
    assert tb.accel == ("kvm" if kvm["ok"] else "tcg")
    # what QEMU was really started with, not what the harness believes
    argv = json.loads((tb.guest("a").files.dir / "qemu.argv").read_text())
    assert argv[argv.index("-accel") + 1].split(",")[0] == tb.accel


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


ONE = """
name = "{name}"
[[network]]
name = "data"
[[guest]]
name = "a"
memory = "256M"
  [[guest.nic]]
  network = "data"
  queues = 2
"""


def _up_process(spec: Path) -> tuple[subprocess.Popen[str], float]:
    """'harness up SPEC' started; returns once the harness's own code runs (its first
    progress line), with the time of that line."""
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "up", str(spec)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    first = proc.stderr.readline()
    assert first.startswith("..."), first
    return proc, time.monotonic()


def test_interrupt_at_any_moment_of_up_leaves_nothing(tmp_path: Path,
                                                      isolated_state: Path) -> None:
    """SIGINT at 15 moments spread over one 'up' (images, accelerator probe, namespace,
    taps, QEMU start, boot wait, SSH, verification): each run either exits 130 with
    nothing left, or had already finished, and then 'down' leaves nothing."""
    spec = tmp_path / "intr.toml"
    spec.write_text(ONE.format(name="intr"))
    proc, t0 = _up_process(spec)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    full = time.monotonic() - t0
    harness("down", "intr")
    outcomes = []
    for i in range(15):
        delay = full * i / 14
        proc, t0 = _up_process(spec)
        time.sleep(max(0.0, delay - (time.monotonic() - t0)))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
        outcomes.append(proc.returncode)
        if proc.returncode == 0:  # it finished before the signal: down must clean up
            harness("down", "intr")
        else:
            assert proc.returncode == 130, f"interrupt {i} ({delay:.2f} s): {err}"
            assert "interrupted" in err and "Traceback" not in err
        assert leftovers(isolated_state) == [], f"interrupt {i} at {delay:.2f} s"
    # the spread really covered the work: at least half the runs were cut short (the
    # later delays may land after the end when a run goes faster than the measured one;
    # half leaves room for runs 40% faster on a machine whose load changes)
    assert outcomes.count(130) >= 7, outcomes


def test_interrupted_image_build_leaves_nothing(tmp_path: Path) -> None:
    """SIGINT at five moments of an image build (unpacking, modules, guest programs,
    initramfs): exit 130, no temporary folder, no build process, nothing mounted."""
    from harness.images import images_dir

    cache = tmp_path / "cache"
    shared_debs = images_dir().parent / "debs"
    shutil.copytree(shared_debs, cache / "debs")  # no downloads: the same files
    env = {**os.environ, "HARNESS_CACHE": str(cache)}
    argv = [sys.executable, "-m", "harness.cli", "image", "build", "minimal"]
    t0 = time.monotonic()
    subprocess.run(argv, env=env, capture_output=True, check=True, timeout=600)
    full = time.monotonic() - t0
    for i in range(1, 6):
        delay = full * i / 6
        proc = subprocess.Popen([*argv, "--force"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        if proc.returncode != 0:
            assert proc.returncode == 130, f"at {delay:.1f} s: {err}"
        assert [p.name for p in (cache / "images").iterdir() if p.name.startswith(".build")] \
            == [], f"at {delay:.1f} s"
        left = [pid for pid in os.listdir("/proc") if pid.isdigit()
                and str(cache) in cmdline(int(pid))]
        assert left == [], f"build processes left at {delay:.1f} s"
        assert str(cache) not in Path("/proc/self/mountinfo").read_text()


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


def test_boot_timeout_is_reported_with_the_logs_kept(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, isolated_state: Path) -> None:
    # a guest that is never resumed cannot become ready
    monkeypatch.setattr(Guest, "cont", lambda self: None)
    monkeypatch.setenv("HARNESS_RESULTS", str(tmp_path / "results"))
    cfg = config.parse('name = "slow"\nboot_timeout_s = 5\n[[guest]]\nname = "a"\n')
    with pytest.raises(BootTimeout, match=r"a: no readiness signal within 5 s") as err:
        Testbed.up(cfg)
    # the error names a copy of the console log that outlives the teardown
    copy = tmp_path / "results" / "slow" / "a-console.log"
    assert err.value.console_log == str(copy) and f"console log: {copy}" in str(err.value)
    assert copy.exists() and (tmp_path / "results/slow/a-qemu.argv").exists()
    assert leftovers(isolated_state) == []


def test_one_testbed_down_spares_its_namesake_prefix(tmp_path: Path) -> None:
    """'down tb' kills only tb's QEMU, never those of 'tb2' or 'tb-x'."""
    names = ("tb", "tb2", "tb-x")
    for n in names:
        spec = tmp_path / f"{n}.toml"
        spec.write_text(f'name = "{n}"\n[[guest]]\nname = "g"\nmemory = "256M"\n')
        harness("up", "--no-verify", str(spec))
    try:
        harness("down", "tb")
        for n in ("tb2", "tb-x"):
            r = harness("exec", "-t", n, "g", "--", "echo", "alive", check=False)
            assert r.returncode == 0 and r.stdout.strip() == "alive", (n, r.stderr)
    finally:
        for n in names[1:]:
            harness("down", n, check=False)


def test_gc_racing_up_never_breaks_it(tmp_path: Path, isolated_state: Path) -> None:
    """gc (from this state folder and from another one) run in a loop while 'up' makes
    its state folder, namespace and taps: every 'up' ends with a working testbed."""
    spec = tmp_path / "race.toml"
    spec.write_text(ONE.format(name="race"))
    other = tmp_path / "other-state"
    stop = threading.Event()
    runs = {"gc": 0}

    def hammer() -> None:
        while not stop.is_set():
            for root in (isolated_state, other):
                subprocess.run([sys.executable, "-m", "harness.cli", "gc"],
                               env={**os.environ, "HARNESS_STATE": str(root)},
                               capture_output=True, check=False, timeout=120)
                runs["gc"] += 1

    t = threading.Thread(target=hammer, daemon=True)
    t.start()
    try:
        for i in range(3):
            up = harness("up", str(spec), check=False)
            assert up.returncode == 0, f"run {i}: {up.stderr}"
            r = harness("exec", "-t", "race", "a", "--", "ip", "-o", "link", "show", "data0",
                        check=False)
            assert r.returncode == 0 and "data0" in r.stdout, f"run {i}: {r.stderr}"
            harness("down", "race")
    finally:
        stop.set()
        t.join(timeout=180)
    assert runs["gc"] >= 6, runs  # gc really ran alongside every 'up'
    assert leftovers(isolated_state) == []


def test_silent_guest_under_kvm_restarts_under_tcg(
        monkeypatch: pytest.MonkeyPatch, isolated_state: Path) -> None:
    """A KVM that passes the probes but whose guest prints nothing: the testbed starts
    once more under TCG with a warning, and the verdict is remembered. (The 'KVM' guest
    is a TCG QEMU that is never resumed: a silent guest, as a broken KVM gives.)"""
    from harness import guest as guest_mod
    from harness import host, qemu_cmd
    from harness import testbed as testbed_mod

    monkeypatch.setattr(host, "choose_accel",
                        lambda qemu, wanted, kernel=None: host.AccelChoice("kvm", "faked"))
    monkeypatch.setattr(host.choose_accel, "cache_clear", lambda: None, raising=False)
    remembered: list[host.AccelProbe] = []
    monkeypatch.setattr(host, "remember_linux_probe",
                        lambda qemu, kernel, probe: remembered.append(probe))
    real_argv = qemu_cmd.build_argv

    def argv_tcg(guest, boot, params):  # type: ignore[no-untyped-def]
        return real_argv(guest, boot, dataclasses.replace(params, accel="tcg"))

    monkeypatch.setattr(guest_mod, "build_argv", argv_tcg)
    real_cont = Guest.cont
    monkeypatch.setattr(Guest, "cont",
                        lambda self: None if self.state.meta.get("accel") == "kvm"
                        else real_cont(self))
    monkeypatch.setattr(testbed_mod, "KVM_SILENT_S", 2.0)
    warnings: list[str] = []

    class Record:
        def step(self, label: str, total: float | None = None) -> None: ...
        def advance(self, amount: float = 1) -> None: ...
        def warn(self, text: str) -> None:
            warnings.append(text)

    cfg = config.parse(ONE.format(name="kvmfb"))
    with Testbed.up(cfg, progress=Record()) as tb:
        assert tb.accel == "tcg" and tb.state.meta["accel"] == "tcg"
        assert tb.guest("a").run("echo ok", check=True).stdout.strip() == "ok"
    assert len(warnings) == 1 and "printed nothing" in warnings[0]
    assert "again under TCG" in warnings[0]
    assert [p.works for p in remembered] == [False]
    assert leftovers(isolated_state) == []


def test_ssh_port_taken_before_qemu_binds_is_chosen_again(
        monkeypatch: pytest.MonkeyPatch, isolated_state: Path) -> None:
    """free_port() answers, another process takes the port, QEMU cannot bind it: the
    guest is started again on another port."""
    from harness import testbed as testbed_mod

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        ports = iter([busy])
        real = testbed_mod.free_port
        monkeypatch.setattr(testbed_mod, "free_port", lambda: next(ports, None) or real())
        cfg = config.parse('name = "port"\n[[guest]]\nname = "a"\nmemory = "256M"\n')
        with Testbed.up(cfg, verify=False) as tb:
            g = tb.guest("a")
            assert g.ssh_port != busy
            assert g.run("echo ok", check=True).stdout.strip() == "ok"
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
