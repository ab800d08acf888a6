"""Where the harness keeps things: source tree, image cache, testbed state.

Environment variables override the defaults so tests and CI can isolate runs:
HARNESS_CACHE (images, downloads), HARNESS_STATE (running testbeds), HARNESS_RESULTS
(logs kept from failed runs, benchmark results), HARNESS_RUN (host-wide claims on
namespace and tap names, shared by every state folder on the machine).
"""

from __future__ import annotations

import os
from pathlib import Path

from harness.errors import ImageError


def source_root() -> Path:
    """The project checkout holding images/ and guest/ (the package is installed editable)."""
    env = os.environ.get("HARNESS_SRC")
    root = Path(env) if env else Path(__file__).resolve().parents[1]
    if not (root / "images").is_dir() or not (root / "guest").is_dir():
        raise ImageError(f"cannot find the images/ and guest/ folders under {root}; "
                         "install the harness from its checkout (pip install -e .) "
                         "or set HARNESS_SRC")
    return root


def cache_root() -> Path:
    env = os.environ.get("HARNESS_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "harness"


def state_root() -> Path:
    env = os.environ.get("HARNESS_STATE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_STATE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local/state") / "harness"


def results_root() -> Path:
    """Where failure evidence and results go: HARNESS_RESULTS, else ./results."""
    return Path(os.environ.get("HARNESS_RESULTS") or "results").absolute()


def run_root() -> Path:
    """Host-wide runtime folder (tmpfs, gone at reboot like the namespaces it tracks)."""
    env = os.environ.get("HARNESS_RUN")
    if env:
        return Path(env)
    return Path("/run/harness") if os.geteuid() == 0 else state_root() / ".run"
