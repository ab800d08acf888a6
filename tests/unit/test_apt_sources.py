"""apt sources as apt reads them: apt-config's files, one-line and deb822, several files."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import apt_sources
from harness.apt_sources import SourceEntry, SourcesError
from harness.errors import EnvironmentProblem

DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb deb-src
URIs: http://example.invalid/debian
Suites: bookworm
Components: main contrib

Enabled: no
Types: deb
URIs: http://disabled.invalid/debian
Suites: bookworm

Types: deb
URIs: https://deb.nodesource.com/node_20.x
Suites: nodistro
Components: main
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 mQINBFxyz
 -----END PGP PUBLIC KEY BLOCK-----
"""

ONE_LINE = """\
# the security mirror
deb [arch=amd64,i386 signed-by=/k/d.gpg] http://security.debian.org/debian-security \
bookworm-security main
deb-src http://deb.debian.org/debian bookworm main
deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main   # third party
"""


def test_deb822_stanzas_fields_and_disabled() -> None:
    entries = apt_sources.parse_deb822(DEB822, "x.sources")
    assert [e.uris[0] for e in entries] == ["http://deb.debian.org/debian",
                                            "http://example.invalid/debian",
                                            "https://deb.nodesource.com/node_20.x"]
    first = entries[0]
    assert first.types == ("deb",) and first.suites == ("bookworm", "bookworm-updates")
    assert first.components == ("main",)
    assert first.options == (("Signed-By", "/usr/share/keyrings/debian-archive-keyring.gpg"),)
    assert entries[1].types == ("deb", "deb-src")
    assert first.origin == "x.sources:1"


def test_deb822_multi_line_value_survives_a_round_trip() -> None:
    key_entry = apt_sources.parse_deb822(DEB822)[2]
    key = dict(key_entry.options)["Signed-By"]
    assert key.splitlines() == ["", "-----BEGIN PGP PUBLIC KEY BLOCK-----", "",
                                "mQINBFxyz", "-----END PGP PUBLIC KEY BLOCK-----"]
    again = apt_sources.parse_deb822(apt_sources.render_deb822([key_entry]))
    assert again == [SourceEntry(**{**vars(key_entry), "origin": again[0].origin})]


def test_one_line_format_with_options() -> None:
    entries = apt_sources.parse_one_line(ONE_LINE, "s.list")
    assert len(entries) == 3
    sec = entries[0]
    assert sec.types == ("deb",) and sec.suites == ("bookworm-security",)
    assert sec.uris == ("http://security.debian.org/debian-security",)
    assert dict(sec.options) == {"Architectures": "amd64 i386",
                                 "Signed-By": "/k/d.gpg"}
    assert entries[1].types == ("deb-src",) and entries[2].origin == "s.list:4"


@pytest.mark.parametrize(("text", "message"), [
    ("deb http://x\n", "s.list:1: needs a URI and a suite"),
    ("rpm http://x bookworm main\n", "s.list:1: 'rpm' is not deb or deb-src"),
    ("deb [arch=amd64 http://x bookworm\n", "s.list:1: an option list opened"),
    ("deb [arch] http://x bookworm\n", "s.list:1: option 'arch' has no '='"),
])
def test_one_line_errors_name_file_and_line(text: str, message: str) -> None:
    with pytest.raises(SourcesError, match=message):
        apt_sources.parse_one_line(text, "s.list")


@pytest.mark.parametrize(("text", "message"), [
    ("Types: deb\nURIs: http://x\n", "needs Types, URIs and Suites"),
    (" continued\nTypes: deb\n", "continuation line comes before any field"),
    ("Types deb\n", "is not a 'Field: value' line"),
    ("Types: rpm\nURIs: http://x\nSuites: b\n", "type 'rpm' is not deb or deb-src"),
])
def test_deb822_errors_name_file_and_line(text: str, message: str) -> None:
    with pytest.raises(SourcesError, match=message):
        apt_sources.parse_deb822(text, "d.sources")


def test_release_entries_keep_only_the_release_and_type() -> None:
    entries = (apt_sources.parse_deb822(DEB822, "a.sources")
               + apt_sources.parse_one_line(ONE_LINE, "b.list"))
    deb = apt_sources.release_entries(entries, "bookworm")
    assert [(e.uris[0], e.suites) for e in deb] == [
        ("http://deb.debian.org/debian", ("bookworm", "bookworm-updates")),
        ("http://example.invalid/debian", ("bookworm",)),
        ("http://security.debian.org/debian-security", ("bookworm-security",)),
    ]
    assert all(e.types == ("deb",) for e in deb)
    src = apt_sources.as_deb_src(deb)
    assert all(e.types == ("deb-src",) for e in src)
    assert apt_sources.release_entries(entries, "trixie") == []


def _fake_apt(monkeypatch: pytest.MonkeyPatch, etc: Path) -> None:
    monkeypatch.setattr(apt_sources, "_apt_config", lambda names: {
        "Dir::Etc::sourcelist/f": str(etc / "sources.list"),
        "Dir::Etc::sourceparts/d": str(etc / "sources.list.d") + "/",
        "Dir::State::lists/d": str(etc / "lists") + "/"})


def test_machine_sources_reads_every_file_apt_reads(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    parts = tmp_path / "sources.list.d"
    parts.mkdir()
    (tmp_path / "sources.list").write_text("deb http://main.invalid/debian bookworm main\n")
    (parts / "0000mirror.sources").write_text(DEB822)
    (parts / "zz-security.list").write_text(ONE_LINE)
    (parts / "nodesource.sources.disabled").write_text("Types: deb\nURIs: http://n\n"
                                                       "Suites: bookworm\n")
    (parts / "README").write_text("not a sources file\n")
    _fake_apt(monkeypatch, tmp_path)
    files = apt_sources.source_files()
    assert [f.name for f in files] == ["sources.list", "0000mirror.sources",
                                       "zz-security.list"]
    found = apt_sources.release_sources("bookworm")
    assert [e.uris[0] for e in found] == [
        "http://main.invalid/debian", "http://deb.debian.org/debian",
        "http://example.invalid/debian", "http://security.debian.org/debian-security"]
    skipped = apt_sources.release_sources("bookworm", skip=(parts / "0000mirror.sources",))
    assert len(skipped) == 2


def test_no_release_source_is_a_clear_error(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sources.list").write_text("deb http://x.invalid/debian trixie main\n")
    _fake_apt(monkeypatch, tmp_path)
    with pytest.raises(EnvironmentProblem, match="no 'deb' source for Debian bookworm"):
        apt_sources.release_sources("bookworm")


def test_the_real_apt_config_answers() -> None:
    """apt-config on this machine names the files apt really reads."""
    files = apt_sources.source_files()
    assert files, "apt-config named no sources file"
    assert all(f.is_file() for f in files)
    assert apt_sources.release_sources(apt_sources.codename())


def test_codename_from_os_release(tmp_path: Path) -> None:
    f = tmp_path / "os-release"
    f.write_text('NAME="Debian GNU/Linux"\nVERSION_CODENAME=bookworm\n')
    assert apt_sources.codename(f) == "bookworm"
    f.write_text('VERSION_CODENAME="trixie"\n')
    assert apt_sources.codename(f) == "trixie"
    assert apt_sources.codename(tmp_path / "missing") == "bookworm"
