"""Host-wide claims on the names a testbed makes outside its state folder.

Network namespaces and taps live in the kernel, visible to every harness on the
machine whatever its state folder (another user, a test session, CI). Before a
testbed creates one, it writes a claim here: the name, the owning process (pid and
kernel start time, so a reused pid is told apart) and the state folder. ``gc`` and
the test suite's leak check then know whose a namespace is while it is being made,
before any QEMU uses it.

A claim is a small JSON file under ``run_root()/claims``; writes are atomic
(rename). This module only reads and writes claims; it removes no network object.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.paths import run_root
from harness.state import proc_start_time, process_alive


@dataclass(frozen=True)
class Claim:
    name: str       # namespace or interface name
    pid: int        # the process that claimed it
    start_time: int | None
    state_dir: str  # the testbed state folder it belongs to

    def live(self) -> bool:
        """The claiming process still runs (it is creating or using the object)."""
        return process_alive(self.pid, self.start_time)

    def belongs_to(self, state_dir: Path | str) -> bool:
        """The claim's testbed lives in ``state_dir`` or below it."""
        mine = Path(self.state_dir)
        root = Path(state_dir)
        return mine == root or root in mine.parents


def _dir() -> Path:
    return run_root() / "claims"


def _path(name: str) -> Path:
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"not a claimable name: {name!r}")
    return _dir() / f"{name}.json"


def claim(name: str, state_dir: Path, pid: int | None = None) -> Claim:
    """Record that the testbed in ``state_dir`` (this process) is making ``name``."""
    pid = pid or os.getpid()
    c = Claim(name=name, pid=pid, start_time=proc_start_time(pid), state_dir=str(state_dir))
    path = _path(name)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    tmp = path.with_suffix(f".{pid}.tmp")
    tmp.write_text(json.dumps(asdict(c)))
    os.replace(tmp, path)
    return c


def release(name: str) -> None:
    with contextlib.suppress(FileNotFoundError, ValueError):
        _path(name).unlink()


def owner(name: str) -> Claim | None:
    """The claim on ``name``, or None (never claimed, released, or unreadable)."""
    try:
        raw = json.loads(_path(name).read_text())
        return Claim(name=str(raw["name"]), pid=int(raw["pid"]),
                     start_time=raw.get("start_time"), state_dir=str(raw["state_dir"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def all_claims() -> list[Claim]:
    d = _dir()
    if not d.is_dir():
        return []
    found = (owner(p.stem) for p in sorted(d.glob("*.json")))
    return [c for c in found if c is not None]
