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


@pytest.fixture(autouse=True)
def private_claims(tmp_path_factory: pytest.TempPathFactory,
                   monkeypatch: pytest.MonkeyPatch) -> Path:
    """Claims of these tests go to a folder of their own, never the machine's."""
    run = tmp_path_factory.mktemp("run")
    monkeypatch.setenv("HARNESS_RUN", str(run))
    return run


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


def test_testbed_folder_match_is_by_whole_path_component(tmp_path: Path) -> None:
    """Removing testbed 'tb' never touches the QEMUs of 'tb2' or 'tb-x'."""
    st = state.create("tb", tmp_path)
    own = fake_qemu(f"path={st.dir}/a/console.sock")
    others = [fake_qemu(f"path={tmp_path / n}/a/console.sock") for n in ("tb2", "tb-x")]
    st.record(state.Resource("process", str(own.pid), match=str(st.dir / "a")))
    time.sleep(0.1)
    assert cleanup.processes_matching(str(st.dir)) == [own.pid]
    removed = cleanup.teardown(st)
    assert removed.processes == [own.pid]
    assert all(p.poll() is None for p in others)
    for p in others:
        p.kill()
        p.wait()
    own.wait()


@pytest.mark.parametrize(("cmdline", "folder", "named"), [
    ("qemu -chardev socket,path=/s/tb/a/qmp.sock", "/s/tb", True),
    ("qemu -chardev socket,path=/s/tb2/a/qmp.sock", "/s/tb", False),
    ("qemu -chardev socket,path=/s/tb-x/a/qmp.sock", "/s/tb", False),
    ("qemu logfile=/s/tb/a/console.log,logappend=on", "/s/tb/a", True),
    ("qemu logfile=/s/tb/ab/console.log", "/s/tb/a", False),
    ("qemu -drive file=/s/tb", "/s/tb/", True),
    ("qemu /x/s/tb/a", "/s/tb", False),
])
def test_names_path(cmdline: str, folder: str, named: bool) -> None:
    assert cleanup.names_path(cmdline, folder) is named


def test_state_folder_appears_whole(tmp_path: Path) -> None:
    """A reader never sees a testbed folder without its owner (gc would take it for
    abandoned): the folder is made hidden and renamed once testbed.json is written."""
    seen_empty: list[str] = []
    stop = time.monotonic() + 1.0
    pid = os.fork()
    if pid == 0:  # the child creates and removes testbeds as fast as it can
        import shutil
        try:
            while time.monotonic() < stop:
                st = state.create("race", tmp_path)
                gone = tmp_path / ".race-removed"
                os.rename(st.dir, gone)  # removal made atomic for the reader, too
                shutil.rmtree(gone)
        finally:
            os._exit(0)
    while time.monotonic() < stop + 0.1:
        for st in state.all_states(tmp_path):
            if not st.meta.get("owner") and st.dir.exists():
                seen_empty.append(st.name)
    os.waitpid(pid, 0)
    assert seen_empty == []
    assert state.unfinished(tmp_path) == []


def test_unfinished_creation_of_a_dead_process_is_collected(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    monkeypatch.setenv("HARNESS_STATE", str(tmp_path))
    dead = tmp_path / f".tb{state.CREATING}999999999-x"
    dead.mkdir()
    alive = tmp_path / f".tb2{state.CREATING}{os.getpid()}-y"
    alive.mkdir()
    assert state.unfinished(tmp_path) == [dead]
    removed = cleanup.gc()
    assert str(dead) in removed.dirs and alive.exists()


def test_gc_spares_a_namespace_a_live_harness_is_creating(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another state folder's 'up', between creating its namespace and starting QEMU:
    only its claim tells gc the namespace is not a leftover."""
    from harness import claims

    monkeypatch.setenv("HARNESS_STATE", str(tmp_path / "mine"))
    monkeypatch.setattr(cleanup, "taps_in_use", lambda: set())
    monkeypatch.setattr(cleanup.net, "list_netns", lambda prefix: ["hb-making", "hb-dead"])
    monkeypatch.setattr(cleanup.net, "list_links", lambda prefix, ns="": [])
    deleted: list[str] = []
    monkeypatch.setattr(cleanup.net, "delete_netns", lambda ns: deleted.append(ns) or True)
    claims.claim("hb-making", tmp_path / "other" / "making")  # this (live) process
    claims.claim("hb-dead", tmp_path / "other" / "dead", pid=999999999)
    cleanup.gc()
    assert deleted == ["hb-dead"]
    assert claims.owner("hb-making") is not None and claims.owner("hb-dead") is None
