"""The state directory of each testbed: what it owns, written before it is created.

Layout: ``<state root>/<testbed>/`` holds ``testbed.json`` (owner, guests, ports,
paths), ``resources.jsonl`` (one line per process, tap, netns or folder, appended
*before* the resource is made, so a crash can never leave an unrecorded one), and
the per-guest sockets and console logs.

This module only reads and writes those files; removing the resources is
cleanup.py's job.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import StateError
from harness.paths import state_root


@dataclass(frozen=True)
class Resource:
    kind: str  # "process" | "netns" | "tap" | "dir"
    name: str  # pid for processes, interface/namespace name, or path
    netns: str = ""  # for taps: the namespace the tap may have moved to
    match: str = ""  # for processes: a string its command line must contain


def proc_start_time(pid: int) -> int | None:
    """Kernel start time of a process (jiffies since boot), to tell reused pids apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def process_alive(pid: int, start_time: int | None) -> bool:
    now = proc_start_time(pid)
    return now is not None and (start_time is None or now == start_time)


@dataclass
class TestbedState:
    __test__ = False

    dir: Path
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def meta_path(self) -> Path:
        return self.dir / "testbed.json"

    @property
    def resources_path(self) -> Path:
        return self.dir / "resources.jsonl"

    def save(self) -> None:
        tmp = self.meta_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.meta, indent=2, default=str) + "\n")
        os.replace(tmp, self.meta_path)

    def record(self, res: Resource) -> None:
        with open(self.resources_path, "a") as fh:
            fh.write(json.dumps(asdict(res)) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def resources(self) -> list[Resource]:
        try:
            lines = self.resources_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for ln in lines:
            try:
                out.append(Resource(**json.loads(ln)))
            except (ValueError, TypeError):
                continue  # a torn last line after a crash
        return out

    def owner_alive(self) -> bool:
        owner = self.meta.get("owner", {})
        pid = owner.get("pid")
        return bool(pid) and process_alive(int(pid), owner.get("start_time"))

    @property
    def detached(self) -> bool:
        return bool(self.meta.get("detached"))


CREATING = ".creating-"  # marks a state folder still being made (hidden, then renamed)


def create(name: str, root: Path | None = None) -> TestbedState:
    """Make the state folder of a new testbed; refuse when one of that name exists.

    The folder appears whole: it is made hidden, its testbed.json (with the owner's
    pid and start time) written, then renamed into place. So no reader, gc included,
    ever sees a testbed folder without its owner recorded.
    """
    root = root or state_root()
    root.mkdir(parents=True, exist_ok=True)
    d = root / name
    pid = os.getpid()
    st = TestbedState(dir=d, meta={
        "name": name, "created": time.time(), "detached": False,
        "owner": {"pid": pid, "start_time": proc_start_time(pid)}, "guests": {},
    })
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}{CREATING}{pid}-", dir=root))
    try:
        (tmp / "testbed.json").write_text(json.dumps(st.meta, indent=2, default=str) + "\n")
        os.rename(tmp, d)  # atomic; refused when a non-empty folder of that name exists
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not d.exists():
            raise
        existing = load(d)
        if existing.detached or existing.owner_alive():
            raise StateError(f"testbed '{name}' is already up; use it, or remove it with "
                             f"'harness down {name}'") from None
        raise StateError(f"testbed '{name}' was left behind by a harness that died; "
                         "run 'harness gc' to remove it") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return st


REMOVING = ".removing-"  # a torn-down folder, renamed out of sight before its removal


def unfinished(root: Path | None = None) -> list[Path]:
    """Hidden folders of creations or removals whose process died half-way."""
    root = root or state_root()
    if not root.is_dir():
        return []
    out = []
    for d in sorted(root.iterdir()):
        for mark in (CREATING, REMOVING):
            if d.name.startswith(".") and mark in d.name:
                pid = d.name.split(mark, 1)[1].split("-", 1)[0]
                if not (pid.isdigit() and process_alive(int(pid), None)):
                    out.append(d)
    return out


def load(d: Path) -> TestbedState:
    try:
        meta = json.loads((d / "testbed.json").read_text())
    except (OSError, ValueError):
        meta = {}
    # a damaged file reads as no metadata: the testbed shows as broken, gc removes it
    return TestbedState(dir=d, meta=meta if isinstance(meta, dict) else {})


def find(name: str, root: Path | None = None) -> TestbedState:
    root = root or state_root()
    d = root / name
    if not (d / "testbed.json").exists():
        names = [s.name for s in all_states(root)]
        hint = f"running: {', '.join(names)}" if names else "none is up ('harness up SPEC')"
        raise StateError(f"no testbed named '{name}'; {hint}")
    return load(d)


def all_states(root: Path | None = None) -> list[TestbedState]:
    root = root or state_root()
    if not root.is_dir():
        return []
    return [load(d) for d in sorted(root.iterdir())
            if d.is_dir() and not d.name.startswith(".")]
