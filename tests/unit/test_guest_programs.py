"""The guest programs build with the project's flags and pass their host-side tests."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_guest_programs_build_and_pass_host_tests(tmp_path: Path) -> None:
    res = subprocess.run(["make", "-s", "-C", str(ROOT / "guest"), f"BUILD={tmp_path}", "all",
                          "check"], capture_output=True, text=True, timeout=600, check=False)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    # the stack's unit test and the UDP tools' loopback test each close with a tally
    tallies = re.findall(r"^(\d+) passed, (\d+) failed$", out, re.M)
    assert len(tallies) == 2, out[-2000:]
    assert all(int(p) > 0 and int(f) == 0 for p, f in tallies)
