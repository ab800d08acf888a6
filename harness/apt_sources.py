"""The machine's apt sources, read the way apt reads them.

Where the sources live comes from apt's own configuration (``apt-config``:
Dir::Etc::sourcelist and Dir::Etc::sourceparts), never from a file name guessed
here. Both formats are parsed: one-line (``*.list``, sources.list) and deb822
(``*.sources``), any number of files. The result feeds every use the harness has
for a mirror: mmdebstrap's sources for the ``full`` image and the deb-src entry
``apt-get source`` needs for the project's QEMU.

Parsing and rendering are pure (text in, entries out, entries in, text out); only
``source_files`` and ``machine_sources`` look at the machine. Nothing here writes
to apt's configuration.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

from harness.errors import EnvironmentProblem

# one-line option names -> deb822 field names (apt's sources.list(5))
_OPTION_FIELDS = {"arch": "Architectures", "lang": "Languages", "target": "Targets",
                  "signed-by": "Signed-By", "trusted": "Trusted", "pdiffs": "PDiffs",
                  "by-hash": "By-Hash", "allow-insecure": "Allow-Insecure",
                  "allow-weak": "Allow-Weak", "check-valid-until": "Check-Valid-Until",
                  "check-date": "Check-Date", "snapshot": "Snapshot"}
# options whose one-line values are comma-separated lists (space-separated in deb822)
_LIST_OPTIONS = {"arch", "lang", "target"}
_MAIN_FIELDS = {"types", "uris", "suites", "components", "enabled"}


@dataclass(frozen=True)
class SourceEntry:
    """One apt source: what kind, where, which suites and components, with options
    as deb822 fields (a multi-line value such as an inline Signed-By key is kept)."""

    types: tuple[str, ...]
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...] = ()
    options: tuple[tuple[str, str], ...] = ()
    origin: str = ""  # the file it came from, for messages


class SourcesError(EnvironmentProblem):
    """A sources file apt itself would reject, named with its line."""


# --- parsing ---------------------------------------------------------------------------

def parse_one_line(text: str, origin: str = "sources.list") -> list[SourceEntry]:
    """Entries of a one-line-format file (``deb [opts] URI SUITE [COMPONENT...]``)."""
    out = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        kind, _, rest = line.partition(" ")
        if kind not in ("deb", "deb-src"):
            raise SourcesError(f"{origin}:{lineno}: '{kind}' is not deb or deb-src")
        options: list[tuple[str, str]] = []
        rest = rest.strip()
        if rest.startswith("["):
            inner, sep, rest = rest[1:].partition("]")
            if not sep:
                raise SourcesError(f"{origin}:{lineno}: an option list opened with '[' "
                                   "is not closed")
            for opt in inner.split():
                name, eq, value = opt.partition("=")
                if not eq:
                    raise SourcesError(f"{origin}:{lineno}: option '{opt}' has no '='")
                name = name.rstrip("+-").lower()
                if name in _LIST_OPTIONS:
                    value = " ".join(v for v in value.split(",") if v)
                options.append((_OPTION_FIELDS.get(name, name.title()), value))
        words = rest.split()
        if len(words) < 2:
            raise SourcesError(f"{origin}:{lineno}: needs a URI and a suite after "
                               f"'{kind}'")
        out.append(SourceEntry(types=(kind,), uris=(words[0],), suites=(words[1],),
                               components=tuple(words[2:]), options=tuple(options),
                               origin=f"{origin}:{lineno}"))
    return out


def _stanzas(text: str) -> list[tuple[int, list[str]]]:
    """deb822 paragraphs as (first line number, lines), comment lines dropped."""
    out: list[tuple[int, list[str]]] = []
    current: list[str] = []
    start = 0
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.startswith("#"):
            continue
        if not line.strip():
            if current:
                out.append((start, current))
                current = []
            continue
        if not current:
            start = lineno
        current.append(line)
    if current:
        out.append((start, current))
    return out


def _words(fields: dict[str, tuple[str, str]], key: str) -> tuple[str, ...]:
    return tuple(fields.get(key, ("", ""))[1].split())


def parse_deb822(text: str, origin: str = "debian.sources") -> list[SourceEntry]:
    """Entries of a deb822 ``.sources`` file; stanzas with ``Enabled: no`` are skipped."""
    out = []
    for lineno, lines in _stanzas(text):
        fields: dict[str, tuple[str, str]] = {}  # lower name -> (name as written, value)
        last = ""
        for line in lines:
            if line[0] in " \t":
                if not last:
                    raise SourcesError(f"{origin}:{lineno}: a continuation line comes "
                                       "before any field")
                name, value = fields[last]
                more = "" if line.strip() == "." else line.strip()
                fields[last] = (name, f"{value}\n{more}")
                continue
            name, sep, value = line.partition(":")
            if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", name):
                raise SourcesError(f"{origin}:{lineno}: '{line.strip()[:40]}' is not a "
                                   "'Field: value' line")
            last = name.lower()
            fields[last] = (name, value.strip())
        if fields.get("enabled", ("", "yes"))[1].lower() in ("no", "false", "0"):
            continue

        types, uris, suites = (_words(fields, k) for k in ("types", "uris", "suites"))
        if not types or not uris or not suites:
            raise SourcesError(f"{origin}:{lineno}: a stanza needs Types, URIs and Suites")
        bad = [t for t in types if t not in ("deb", "deb-src")]
        if bad:
            raise SourcesError(f"{origin}:{lineno}: type '{bad[0]}' is not deb or deb-src")
        options = tuple((name, value) for key, (name, value) in fields.items()
                        if key not in _MAIN_FIELDS)
        out.append(SourceEntry(types=types, uris=uris, suites=suites,
                               components=_words(fields, "components"), options=options,
                               origin=f"{origin}:{lineno}"))
    return out


def parse_file(path: Path) -> list[SourceEntry]:
    """Entries of one sources file, by its extension as apt decides."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SourcesError(f"cannot read apt sources file {path}: {exc}") from exc
    if path.suffix == ".sources":
        return parse_deb822(text, str(path))
    return parse_one_line(text, str(path))


# --- choosing and rendering -------------------------------------------------------------

def release_entries(entries: list[SourceEntry], codename: str,
                    kind: str = "deb") -> list[SourceEntry]:
    """The entries of type ``kind`` for Debian release ``codename`` (its suites such as
    bookworm, bookworm-updates, bookworm-security), other suites and types dropped.
    Third-party repositories (other suite names) are left out of what guests see."""
    out = []
    for e in entries:
        if kind not in e.types:
            continue
        suites = tuple(s for s in e.suites
                       if s == codename or re.match(rf"{re.escape(codename)}[-/]", s))
        if suites:
            out.append(replace(e, types=(kind,), suites=suites))
    return out


def as_deb_src(entries: list[SourceEntry]) -> list[SourceEntry]:
    """The same mirrors offering source packages."""
    return [replace(e, types=("deb-src",)) for e in entries]


def render_deb822(entries: list[SourceEntry]) -> str:
    """A ``.sources`` file holding ``entries`` (multi-line values kept)."""
    stanzas = []
    for e in entries:
        lines = [f"Types: {' '.join(e.types)}", f"URIs: {' '.join(e.uris)}",
                 f"Suites: {' '.join(e.suites)}"]
        if e.components:
            lines.append(f"Components: {' '.join(e.components)}")
        for name, value in e.options:
            first, *more = value.split("\n")
            lines.append(f"{name}: {first}".rstrip())
            lines += [f" {ln}" if ln else " ." for ln in more]
        stanzas.append("\n".join(lines))
    return "\n\n".join(stanzas) + "\n"


# --- the machine --------------------------------------------------------------------------

def codename(os_release: Path = Path("/etc/os-release")) -> str:
    """The machine's Debian release name (VERSION_CODENAME), bookworm when unknown."""
    try:
        text = os_release.read_text()
    except OSError:
        return "bookworm"
    m = re.search(r"^VERSION_CODENAME=\"?(\w+)", text, re.M)
    return m.group(1) if m else "bookworm"


def _apt_config(names: list[str]) -> dict[str, str]:
    """Paths from apt's configuration (``apt-config shell``, /f and /d resolve Dir)."""
    argv = ["apt-config", "shell"]
    for i, name in enumerate(names):
        argv += [f"V{i}", name]
    try:
        res = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise EnvironmentProblem("apt-config is missing; the harness needs Debian's apt") \
            from exc
    values = {}
    for line in res.stdout.splitlines():
        var, _, quoted = line.partition("=")
        if var.startswith("V") and var[1:].isdigit():
            parts = shlex.split(quoted)
            values[names[int(var[1:])]] = parts[0] if parts else ""
    return values


def source_files() -> list[Path]:
    """Every file apt reads sources from: the sourcelist file, then the sourceparts
    folder's ``*.list`` and ``*.sources`` files in name order (others apt ignores)."""
    cfg = _apt_config(["Dir::Etc::sourcelist/f", "Dir::Etc::sourceparts/d"])
    files = []
    main = Path(cfg.get("Dir::Etc::sourcelist/f", "") or "/etc/apt/sources.list")
    if main.is_file():
        files.append(main)
    parts = Path(cfg.get("Dir::Etc::sourceparts/d", "") or "/etc/apt/sources.list.d")
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir()
                        if p.is_file() and p.suffix in (".list", ".sources"))
    return files


def sourceparts_dir() -> Path:
    cfg = _apt_config(["Dir::Etc::sourceparts/d"])
    return Path(cfg.get("Dir::Etc::sourceparts/d", "") or "/etc/apt/sources.list.d")


def lists_dir() -> Path:
    """Where apt keeps the package lists an ``apt-get update`` downloads."""
    cfg = _apt_config(["Dir::State::lists/d"])
    return Path(cfg.get("Dir::State::lists/d", "") or "/var/lib/apt/lists")


def machine_sources(skip: tuple[Path, ...] = ()) -> list[SourceEntry]:
    """Every entry of every sources file apt reads, in apt's order (``skip``: files the
    harness wrote itself)."""
    out = []
    for f in source_files():
        if f not in skip:
            out += parse_file(f)
    return out


def release_sources(codename: str, kind: str = "deb",
                    skip: tuple[Path, ...] = ()) -> list[SourceEntry]:
    """The machine's entries for Debian ``codename``; a clear error when there is none."""
    found = release_entries(machine_sources(skip), codename, "deb")
    if not found:
        files = ", ".join(str(f) for f in source_files()) or "none"
        raise EnvironmentProblem(f"apt has no 'deb' source for Debian {codename} (files: "
                                 f"{files}); add one (see sources.list(5))")
    return as_deb_src(found) if kind == "deb-src" else found
