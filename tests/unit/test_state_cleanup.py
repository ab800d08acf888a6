"""State records and cleanup, with stand-in processes instead of QEMU."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from harness import cleanup, state
from harness.console import ConsoleLog
from harness.errors import StateError


def fake_qemu(tag: str) -> subprocess.Popen[bytes]:
    """A process whose command line looks like a QEMU of the testbed ``tag``."""
    return subprocess.Popen(["bash", "-c", f'exec -a "qemu-system-x86_64 {tag}" sleep 60'])


def test_create_refuses_duplicates(tmp_path: Path) -> None:
    st = state.create("tb", tmp_path)
    assert st.owner_alive()
    with pytest.raises(StateError, match="already up"):
        state.create("tb", tmp_path)
    st.meta["owner"] = {"pid": 999999999, "start_time": 1}
    st.save()
    with pytest.raises(StateError, match="harness gc"):
        state.create("tb", tmp_path)


def test_torn_resource_line_is_ignored(tmp_path: Path) -> None:
    st = state.create("tb", tmp_path)
    st.record(state.Resource("dir", "/nonexistent"))
    with open(st.resources_path, "a") as fh:
        fh.write('{"kind": "tap", "na')
    assert [r.kind for r in st.resources()] == ["dir"]


def test_teardown_kills_recorded_and_unrecorded_processes(tmp_path: Path) -> None:
    st = state.create("tb", tmp_path)
    recorded = fake_qemu(str(st.dir))
    unrecorded = fake_qemu(str(st.dir / "g2"))  # crashed before it was recorded
    bystander = fake_qemu("/some/other/testbed")
    st.record(state.Resource("process", str(recorded.pid), match=str(st.dir)))
    time.sleep(0.1)
    removed = cleanup.teardown(st)
    assert set(removed.processes) == {recorded.pid, unrecorded.pid}
    for p in (recorded, unrecorded):
        p.wait(5)
        assert not Path(f"/proc/{p.pid}").exists()
    assert bystander.poll() is None
    assert not st.dir.exists()
    bystander.kill()
    bystander.wait()


def test_gc_keeps_owned_and_detached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_STATE", str(tmp_path))
    mine = state.create("mine", tmp_path)
    gone = state.create("gone", tmp_path)
    gone.meta["owner"] = {"pid": 999999999, "start_time": 1}
    gone.save()
    kept = state.create("kept", tmp_path)
    kept.meta.update(detached=True, owner={"pid": 999999999, "start_time": 1})
    kept.save()
    removed = cleanup.gc()
    assert str(gone.dir) in removed.dirs
    assert mine.dir.exists() and kept.dir.exists()
    cleanup.gc(everything=True)
    assert not mine.dir.exists() and not kept.dir.exists()
    assert os.listdir(tmp_path) == []


def test_taps_of_a_running_qemu_are_recognised() -> None:
    cmd = ("qemu-system-x86_64 -netdev tap,id=d0,ifname=hbt0a1b2c3d4e,script=no,queues=4 "
           "-netdev tap,id=d1,ifname=other0 -netdev user,id=m")
    assert cleanup.taps_named(cmd) == {"hbt0a1b2c3d4e"}


def test_gc_spares_what_a_running_qemu_uses(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # a testbed of another state folder: its namespace and tap are unknown here
    monkeypatch.setenv("HARNESS_STATE", str(tmp_path))
    monkeypatch.setattr(cleanup, "taps_in_use", lambda: {"hbtbusy"})
    deleted: list[str] = []
    monkeypatch.setattr(cleanup.net, "list_netns", lambda prefix: ["hb-other", "hb-stale"])
    monkeypatch.setattr(cleanup.net, "list_links",
                        lambda prefix, ns="": {"hb-other": ["hbtbusy"], "hb-stale": ["hbtold"],
                                               "": ["hbtbusy", "hbtloose"]}[ns])
    monkeypatch.setattr(cleanup.net, "delete_netns", lambda ns: deleted.append(ns) or True)
    monkeypatch.setattr(cleanup.net, "delete_link",
                        lambda name, ns="": deleted.append(name) or True)
    removed = cleanup.gc(everything=True)
    assert deleted == ["hb-stale", "hbtloose"]
    assert removed.namespaces == ["hb-stale"] and removed.links == ["hbtloose"]


def test_console_log_ready_and_panic(tmp_path: Path) -> None:
    log = ConsoleLog(tmp_path / "c.log")
    assert log.poll() == "" and log.ready() is None
    (tmp_path / "c.log").write_text("booting\nHARNESS-READY host=g uptime=2.50\n")
    log.poll()
    assert log.ready() == 2.5 and log.panic() is None
    with open(tmp_path / "c.log", "a") as fh:
        fh.write("[ 9.1] Kernel panic - not syncing: sysrq triggered crash\r\n")
    log.poll()
    assert log.panic() == "Kernel panic - not syncing: sysrq triggered crash"
