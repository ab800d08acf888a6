"""The Vagrantfile and the nightly workflow are checked by their own tools."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_vagrantfile_validates() -> None:
    vagrant = shutil.which("vagrant")
    if vagrant is None:
        pytest.fail("vagrant is not installed; scripts/setup installs it")
    res = subprocess.run([vagrant, "validate"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    text = (ROOT / "Vagrantfile").read_text()
    assert ":libvirt" in text and ":virtualbox" in text and "scripts/setup" in text


def test_nightly_workflow_lints_and_runs_the_suite() -> None:
    path = ROOT / ".github/workflows/nightly.yml"
    wf = yaml.safe_load(path.read_text())
    triggers = wf[True] if True in wf else wf["on"]  # YAML 1.1 reads 'on' as true
    assert triggers["schedule"][0]["cron"]
    steps = wf["jobs"]["suite"]["steps"]
    runs = " ".join(s.get("run", "") for s in steps)
    assert "make test" in runs and "bench boot" in runs
    assert any(s.get("uses", "").startswith("actions/upload-artifact") for s in steps)
    # the schema GitHub's workflow files follow, vendored in check-jsonschema
    checker = Path(sys.executable).parent / "check-jsonschema"
    res = subprocess.run([str(checker), "--builtin-schema", "vendor.github-workflows",
                          str(path)], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci/run").read_text()
    assert "make test" in readme and "make test" in ci
    assert "make demo" in readme
