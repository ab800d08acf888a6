"""The patched-QEMU recipe (deb-src derivation, build keys, progress, selection); bench parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import config, host, qemu_build
from harness.errors import EnvironmentProblem, ImageError


def _recipe(tmp_path: Path, patches: dict[str, str], extra: str = "") -> qemu_build.QemuRecipe:
    folder = tmp_path / "images" / "qemu"
    (folder / "patches").mkdir(parents=True)
    (folder / "recipe.toml").write_text('source = "qemu"\nconfigure = ["--x"]\n' + extra)
    for name, text in patches.items():
        (folder / "patches" / name).write_text(text)
    (tmp_path / "guest").mkdir()
    return qemu_build.load_recipe(tmp_path)


def test_patched_files_are_read_from_the_diff() -> None:
    diff = ("From x\nSubject: [PATCH] y\n---\n"
            "--- a/target/i386/cpu.h\n+++ b/target/i386/cpu.h\n@@ -1 +1 @@\n-a\n+b\n"
            "--- /dev/null\n+++ b/target/i386/tcg/uintr_helper.c\n@@ -0,0 +1 @@\n+c\n")
    assert qemu_build.patched_files(diff) == {"target/i386/cpu.h",
                                              "target/i386/tcg/uintr_helper.c"}


def test_ninja_progress() -> None:
    assert qemu_build.ninja_progress("[12/345] Compiling C object x.o") == (12, 345)
    assert qemu_build.ninja_progress("ninja: Entering directory") is None


def test_build_key_covers_version_recipe_and_every_patch(tmp_path: Path) -> None:
    r = _recipe(tmp_path, {"0001-a.patch": "one", "0002-b.patch": "two"})
    assert [p.name for p in r.patches] == ["0001-a.patch", "0002-b.patch"]
    key = qemu_build.build_key("7.2+dfsg-7", r)
    assert key == qemu_build.build_key("7.2+dfsg-7", r)
    assert key != qemu_build.build_key("7.2+dfsg-8", r)
    (r.folder / "patches" / "0002-b.patch").write_text("two, changed")
    assert key != qemu_build.build_key("7.2+dfsg-7", r)


def test_cache_folder_mirrors_the_prefix_for_firmware(tmp_path: Path) -> None:
    r = _recipe(tmp_path, {}, extra="")
    r = qemu_build.QemuRecipe(**{**r.__dict__, "configure": (
        "--prefix=/usr", "--firmwarepath=/usr/share/qemu:/usr/share/seabios:/opt/fw")})
    # /opt/fw is outside the prefix: QEMU would not look for it next to the binary
    assert qemu_build.data_links(r) == {"share/qemu": "/usr/share/qemu",
                                        "share/seabios": "/usr/share/seabios"}


def test_recipe_with_unknown_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="unknown key 'targets'"):
        _recipe(tmp_path, {}, extra='targets = ["x"]\n')


def test_uintr_selects_the_project_qemu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HARNESS_QEMU", raising=False)
    monkeypatch.setattr(qemu_build, "current", lambda: None)
    spec = config.parse('[[network]]\nname = "d"\n'
                        '[[guest]]\nname = "a"\ncpu_features = ["rdrand", "uintr"]\n'
                        '[[guest]]\nname = "b"\n  [[guest.nic]]\n  network = "d"\n'
                        '  drop_when_full = true\n')
    needs = spec.needs_project_qemu()
    assert needs == ["CPU feature 'uintr'", "guest 'b' NIC 0 drop_when_full"]
    with pytest.raises(EnvironmentProblem, match=r"'uintr' needs the project's QEMU.*"
                                                 "harness qemu build"):
        host.qemu_binary(needs)
    build = qemu_build.QemuBuild(key="k", path=tmp_path, manifest={"binary": "qemu-x"})
    monkeypatch.setattr(qemu_build, "current", lambda: build)
    assert host.qemu_binary(needs) == str(tmp_path / "bin" / "qemu-x")
    plain = config.parse('[[guest]]\nname = "a"\ncpu_features = ["rdrand"]\n')
    assert plain.needs_project_qemu() == []
    assert host.qemu_binary(plain.needs_project_qemu()) != str(tmp_path / "bin" / "qemu-x")
    monkeypatch.setenv("HARNESS_QEMU", "/opt/q")
    assert host.qemu_binary(needs) == "/opt/q"


def test_bench_uintr_output_is_parsed() -> None:
    from harness.bench_uintr import parse

    text = ('noise\n{\n "iterations": 100, "vcpus": 2,\n'
            ' "senduipi": {"oneway_p50_ns": 900, "oneway_p99_ns": 2000,'
            ' "roundtrips_per_s": 5000},\n'
            ' "signal": {"error": "setup failed"},\n'
            ' "ratios": {"signal_over_senduipi_oneway_p50": null}\n}\n')
    res = parse(text)
    assert res.iterations == 100 and res.vcpus == 2
    assert [m.name for m in res.mechanisms] == ["senduipi", "signal"]
    assert res.mechanisms[0].roundtrips_s == 5000
    assert res.mechanisms[1].error == "setup failed"
    assert res.ratios == {"signal_over_senduipi_oneway_p50": None}


def test_source_version_is_remembered_until_apt_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "deb.debian.org_Sources").write_text("one")
    monkeypatch.setattr(qemu_build, "apt_state", lambda: (tmp_path / "sources.list", lists))
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    asked: list[str] = []
    answer = {"uri": "'http://x/pool/q/qemu_1%3a7.2%2bdfsg-7.dsc' qemu.dsc 1 SHA256:0"}

    def fake_cmd(argv: list[str], what: str, cwd: Path | None = None
                 ) -> subprocess.CompletedProcess[str]:
        asked.append(argv[0])
        return subprocess.CompletedProcess(argv, 0, answer["uri"], "")

    monkeypatch.setattr(qemu_build, "_cmd", fake_cmd)
    recipe = _recipe(tmp_path, {})
    assert qemu_build.source_version(recipe) == "1:7.2+dfsg-7"
    assert qemu_build.source_version(recipe) == "1:7.2+dfsg-7" and len(asked) == 1
    # an apt-get update rewrites the lists: apt is asked again
    answer["uri"] = "'http://x/pool/q/qemu_1%3a7.2%2bdfsg-8.dsc' qemu.dsc 1 SHA256:0"
    (lists / "deb.debian.org_Sources").write_text("two, longer")
    assert qemu_build.source_version(recipe) == "1:7.2+dfsg-8" and len(asked) == 2
    # no deb-src entry: nothing is remembered, so adding one is seen at once
    (lists / "other_Sources").write_text("x")
    answer["uri"] = ""
    assert qemu_build.source_version(recipe) is None
    assert qemu_build.source_version(recipe) is None and len(asked) == 4
