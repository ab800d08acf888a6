"""The README's two commands are what CI and the nightly job run; the Vagrantfile and
the nightly workflow are checked by their own tools."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    """The commands of the README's "The two commands" block, comments stripped."""
    text = (ROOT / "README.md").read_text()
    m = re.search(r"## The two commands.*?```sh\n(.*?)```", text, re.S)
    assert m, "README.md has no '## The two commands' section with a sh block"
    return [ln.split("#", 1)[0].strip() for ln in m.group(1).splitlines()
            if ln.split("#", 1)[0].strip()]


def test_readme_has_two_commands_that_exist() -> None:
    cmds = readme_commands()
    assert len(cmds) == 2, cmds
    for cmd in cmds:
        prog = ROOT / cmd.split()[0]
        assert prog.is_file() and prog.stat().st_mode & 0o111, f"{cmd}: not an executable file"


def test_ci_runs_the_readme_test_command() -> None:
    _, test_cmd = readme_commands()
    code = [ln.strip() for ln in (ROOT / ".ci/run").read_text().splitlines()
            if ln.strip() and not ln.strip().startswith("#")]
    assert any(ln.startswith(test_cmd) for ln in code), code


def test_nightly_runs_both_readme_commands_and_keeps_results() -> None:
    path = ROOT / ".github/workflows/nightly.yml"
    wf = yaml.safe_load(path.read_text())
    triggers = wf[True] if True in wf else wf["on"]  # YAML 1.1 reads 'on' as true
    assert triggers["schedule"][0]["cron"]
    job = wf["jobs"]["suite"]
    assert job["container"]["image"] == "debian:12"
    runs = [s.get("run", "") for s in job["steps"]]
    for cmd in readme_commands():
        assert any(r.startswith(cmd) for r in runs), f"nightly does not run {cmd!r}"
    assert any(s.get("uses", "").startswith("actions/upload-artifact") for s in job["steps"])
    # the schema GitHub's workflow files follow, vendored in check-jsonschema
    checker = Path(sys.executable).parent / "check-jsonschema"
    res = subprocess.run([str(checker), "--builtin-schema", "vendor.github-workflows",
                          str(path)], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_vagrantfile_validates_without_a_provider(tmp_path: Path) -> None:
    vagrant = shutil.which("vagrant")
    if vagrant is None:
        pytest.fail("vagrant is not installed; scripts/setup installs it")
    # --ignore-provider: a machine without VirtualBox or libvirt can still check the file
    res = subprocess.run([vagrant, "validate", "--ignore-provider"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    text = (ROOT / "Vagrantfile").read_text()
    assert ":libvirt" in text and ":virtualbox" in text and "scripts/setup" in text


def test_vagrant_validate_catches_a_broken_vagrantfile(tmp_path: Path) -> None:
    """The check above can fail: the same command rejects a Vagrantfile with an error."""
    vagrant = shutil.which("vagrant")
    if vagrant is None:
        pytest.fail("vagrant is not installed; scripts/setup installs it")
    broken = (ROOT / "Vagrantfile").read_text().replace('config.vm.box = "debian/bookworm64"',
                                                       "config.vm.box = nil")
    (tmp_path / "Vagrantfile").write_text(broken)
    res = subprocess.run([vagrant, "validate", "--ignore-provider"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode != 0, res.stdout
