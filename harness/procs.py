"""Long-running child processes (builds: make, mmdebstrap, configure, ninja) that never
outlive an interrupted harness.

Each child starts in a process group of its own. When the harness stops waiting for
it for any reason (Ctrl-C, SIGTERM, an error while reading its output), the whole
group gets SIGTERM, so that tools with cleanup of their own (mmdebstrap unmounts
what it mounted in the new root) can run it, then SIGKILL after ``GRACE_S``. The
harness itself, not the terminal, decides when its children stop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

GRACE_S = 20.0  # mmdebstrap needs a few seconds to unmount and remove its root


def stop_group(proc: subprocess.Popen[str]) -> None:
    """SIGTERM the child's process group, then SIGKILL what is left after GRACE_S."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=GRACE_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run(argv: list[str], *, cwd: Path | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """subprocess.run(capture_output=True, text=True), but an interrupt stops the whole
    group of the child first. A missing program raises FileNotFoundError as usual."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate()
    except BaseException:
        stop_group(proc)
        raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


@contextlib.contextmanager
def lines(argv: list[str], *, cwd: Path | None = None,
          env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    """A child whose stdout and stderr are read line by line (``proc.stdout``); the
    caller reads, then ``proc.wait()``. Leaving the block early stops the group."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        yield proc
    except BaseException:
        stop_group(proc)
        raise
    finally:
        if proc.stdout is not None:
            proc.stdout.close()
        if proc.poll() is None:
            stop_group(proc)
