"""The guest programs build with the project's flags and pass their host-side tests."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUN_FUZZ = ROOT / "guest" / "libos" / "tests" / "run_fuzz.sh"


def test_guest_programs_build_and_pass_host_tests(tmp_path: Path) -> None:
    res = subprocess.run(["make", "-s", "-C", str(ROOT / "guest"), f"BUILD={tmp_path}", "all",
                          "check"], capture_output=True, text=True, timeout=600, check=False)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    # the stack's unit test, the driver's fake-device test and the UDP tools' loopback
    # test each close with a tally
    tallies = re.findall(r"^(\d+) passed, (\d+) failed$", out, re.M)
    assert len(tallies) == 3, out[-2000:]
    assert all(int(p) > 0 and int(f) == 0 for p, f in tallies)
    # both fuzzers ran for their time (a crash would have failed make above)
    for name in ("fuzz_stack", "fuzz_rx"):
        runs = re.search(rf"^{name}: (\d+) runs in \d+ s \(libFuzzer seed \d+\), no crash$",
                         out, re.M)
        assert runs and int(runs.group(1)) > 0, (name, out[-2000:])


CRASHER = """
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
	if (n && d[0] == 'X')
		abort();
	return 0;
}
"""


def test_fuzz_runner_fails_on_a_crash_and_names_the_input(tmp_path: Path) -> None:
    """What make check runs for each fuzzer exits non-zero when the target crashes."""
    clang = shutil.which("clang")
    assert clang, "clang is missing: apt-get install clang libclang-rt-14-dev (scripts/setup)"
    (tmp_path / "crasher.c").write_text(CRASHER)
    subprocess.run([clang, "-fsanitize=fuzzer", "-o", str(tmp_path / "crasher"),
                    str(tmp_path / "crasher.c")], check=True, timeout=120)
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    (seeds / "crashes").write_bytes(b"X")
    work = tmp_path / "work"
    res = subprocess.run(["sh", str(RUN_FUZZ), str(tmp_path / "crasher"), str(seeds), "5",
                          str(work)], capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode != 0, res.stdout
    crash = re.search(r"the failing input is (\S+);", res.stdout)
    assert crash and Path(crash.group(1)).read_bytes() == b"X", res.stdout[-2000:]
