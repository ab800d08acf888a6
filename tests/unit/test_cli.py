"""The CLI edge: options where users type them, one-line errors, signals, interrupts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import cli, interrupts, procs


def harness(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("argv", [["--json", "status"], ["status", "--json"],
                                  ["-v", "status", "--json"], ["status", "-v", "--json"]])
def test_global_options_before_or_after_the_command(argv: list[str], tmp_path: Path) -> None:
    r = harness(*argv, env={"HARNESS_STATE": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"testbeds": []}


def test_options_parse_the_same_in_both_places() -> None:
    p = cli.build_parser()
    before = p.parse_args(["--json", "--accel", "tcg", "doctor"])
    after = p.parse_args(["doctor", "--json", "--accel", "tcg"])
    assert (before.json, before.accel, before.verbose) == (after.json, after.accel,
                                                           after.verbose) == (True, "tcg", False)
    plain = p.parse_args(["doctor"])
    assert (plain.json, plain.accel, plain.verbose) == (False, None, False)


def test_bad_accel_is_a_usage_error() -> None:
    r = harness("status", "--accel", "fast")
    assert r.returncode == 2 and "invalid choice: 'fast'" in r.stderr
    assert "Traceback" not in r.stderr


def test_internal_error_is_one_line() -> None:
    """A bug in a command still ends in one line and exit 1; -v adds the traceback."""
    script = ("import sys\nfrom harness import cli\n"
              "cli.COMMANDS['status'] = lambda a, o: {}['missing']\n"
              "sys.exit(cli.main(sys.argv[1:]))\n")
    r = subprocess.run([sys.executable, "-c", script, "status"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip() == ("harness: internal error: KeyError: 'missing' (run with -v "
                                "for the traceback)")
    r = subprocess.run([sys.executable, "-c", script, "status", "-v"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and "Traceback" in r.stderr


def test_damaged_state_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "tb").mkdir()
    (tmp_path / "tb" / "testbed.json").write_text("[1, 2]")
    r = harness("exec", "a", "-t", "tb", "--", "true", env={"HARNESS_STATE": str(tmp_path)})
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0, r.stderr
    assert "testbed 'tb': its state folder" in r.stderr and "harness gc" in r.stderr


def test_sigint_ignored_by_the_parent_still_interrupts(tmp_path: Path) -> None:
    """A background job of a non-interactive shell starts with SIGINT ignored; the
    harness must still treat Ctrl-C as "clean up and leave" (exit 130)."""
    script = ("import signal, sys, time\n"
              "from harness import cli\n"
              "cli.COMMANDS['status'] = lambda a, o: (print('ready', flush=True), "
              "time.sleep(30))[1] or 0\n"
              "sys.exit(cli.main(['status']))\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert "interrupted" in err


def test_signals_during_a_cleanup_wait_for_its_end() -> None:
    done: list[str] = []
    with pytest.raises(KeyboardInterrupt), interrupts.held():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # Python runs the handler at the next bytecode: it only notes
        done.append("cleanup finished")
    assert done == ["cleanup finished"]
    # the previous handler is back
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_interrupted_child_group_is_stopped(tmp_path: Path) -> None:
    """A build step (here: sh with a grandchild) interrupted: the whole group goes."""
    marker = tmp_path / "pid"
    script = (f"sleep 300 & echo $! > {marker}; wait")
    proc = subprocess.Popen([sys.executable, "-c",
                             "import sys; from harness import procs\n"
                             f"procs.run(['sh', '-c', {script!r}])"],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while not marker.exists() or not marker.read_text().strip():
        assert time.monotonic() < deadline, "the child never started"
        time.sleep(0.05)
    grandchild = int(marker.read_text())
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=procs.GRACE_S + 10)
    deadline = time.monotonic() + 5
    while Path(f"/proc/{grandchild}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    stat = Path(f"/proc/{grandchild}/stat")
    assert not stat.exists() or ") Z" in stat.read_text()


@pytest.mark.parametrize("argv", [["up"], ["demo"], ["down", "x"], ["gc"],
                                  ["bench", "boot", "--runs", "1"]])
def test_not_root_is_said_at_once(argv: list[str], monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Before any image is built or accelerator probed: one line, exit 1."""
    from harness import host, images

    def must_not_run(*a: object, **kw: object) -> None:
        raise AssertionError("work started before the root check")

    monkeypatch.setattr(cli.os, "geteuid", lambda: 1000)
    monkeypatch.setattr("harness.testbed.os.geteuid", lambda: 1000)
    monkeypatch.setattr(images, "get", must_not_run)
    monkeypatch.setattr(host, "probe_accel", must_not_run)
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("harness: error:") and "must run as root (uid 1000)" in err
    assert "\n" not in err


def test_down_all_goes_past_a_broken_state_folder(tmp_path: Path) -> None:
    """'down --all' removes every testbed even when one state folder is damaged; the
    damaged one is reported and the exit status says so."""
    from harness import config, state

    cfg = config.parse('name = "good"\n[[guest]]\nname = "g"\n')
    good = state.create("good", tmp_path)
    good.meta.update(detached=True, config=config.to_dict(cfg))
    good.save()
    broken = state.create("broken", tmp_path)
    broken.meta_path.write_text("{not json")
    env = {"HARNESS_STATE": str(tmp_path), "HARNESS_RUN": str(tmp_path / ".run")}
    r = harness("--json", "down", "--all", env=env)
    assert r.returncode == 1, r.stderr
    rows = {row["testbed"]: row["result"] for row in json.loads(r.stdout)["removed"]}
    assert rows["good"] == "removed" and rows["broken"].startswith("broken:")
    assert not good.dir.exists() and not broken.dir.exists()


def test_damaged_image_folder_is_not_an_image(tmp_path: Path) -> None:
    images_dir = tmp_path / "images"
    (images_dir / "minimal-0123456789abcdef").mkdir(parents=True)
    (images_dir / "minimal-0123456789abcdef" / "manifest.json").write_text('{"flavor": ')
    r = harness("--json", "image", "list", env={"HARNESS_CACHE": str(tmp_path)})
    assert r.returncode == 0 and json.loads(r.stdout)["images"] == [], r.stderr
    r = harness("--json", "image", "clean", env={"HARNESS_CACHE": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert not (images_dir / "minimal-0123456789abcdef").exists()
