"""Debian packages as build inputs: resolve versions, download and unpack .debs.

Uses the machine's own apt configuration (never a hard-coded mirror) through
apt-cache, apt-get download and dpkg-deb. Downloads are kept in a cache folder
keyed by file name (which carries name, version and architecture).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness import procs
from harness.errors import EnvironmentProblem, ImageError


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    depends: str = ""

    @property
    def pin(self) -> str:
        return f"{self.name}={self.version}"


def _run(argv: list[str], what: str, cwd: Path | None = None) -> str:
    try:
        res = procs.run(argv, cwd=cwd)
    except FileNotFoundError as exc:
        raise EnvironmentProblem(f"{argv[0]} is not installed; it is needed to {what} "
                                 "(run scripts/setup)") from exc
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or [""])[-1]
        raise ImageError(f"cannot {what}: {last}")
    return res.stdout


def resolve(names: list[str]) -> dict[str, Package]:
    """Candidate version of each package; a clear error names any that cannot be had."""
    res = subprocess.run(["apt-cache", "show", "--no-all-versions", *names],
                         capture_output=True, text=True, check=False)
    found: dict[str, Package] = {}
    for stanza in res.stdout.split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): ?(.*)$", stanza, re.M))
        if "Package" in fields and fields["Package"] not in found:
            found[fields["Package"]] = Package(fields["Package"], fields.get("Version", ""),
                                               fields.get("Depends", ""))
    missing = [n for n in names if n not in found]
    if missing:
        raise ImageError(f"package '{missing[0]}' cannot be had from apt "
                         "(run 'apt-get update'; check the package name in the image recipe)")
    return found


def kernel_package(meta: str) -> Package:
    """Follow a kernel meta package (linux-image-amd64) to the real image package."""
    pkg = resolve([meta])[meta]
    m = re.search(r"(linux-image-[0-9][^\s,(]*)", pkg.depends)
    real = m.group(1) if m else meta
    return resolve([real])[real]


def download(pkgs: list[Package], debs: Path) -> list[Path]:
    """Download exact versions into ``debs`` (cached); returns the .deb paths in order."""
    debs.mkdir(parents=True, exist_ok=True)

    def find(p: Package) -> Path | None:
        ver = p.version.replace(":", "%3a")
        hits = sorted(debs.glob(f"{p.name}_{ver}_*.deb"))
        return hits[0] if hits else None

    todo = [p for p in pkgs if find(p) is None]
    if todo:
        _run(["apt-get", "download", "-q", *[p.pin for p in todo]],
             f"download {', '.join(p.name for p in todo)}", cwd=debs)
    paths = []
    for p in pkgs:
        path = find(p)
        if path is None:
            raise ImageError(f"apt-get download did not produce a .deb for {p.pin}")
        paths.append(path)
    return paths


def extract(deb: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    _run(["dpkg-deb", "-x", str(deb), str(dest)], f"unpack {deb.name}")


def kernel_headers(kver: str) -> list[Package]:
    """The packages an out-of-tree module needs to build against kernel ``kver``.

    linux-headers-KVER plus the -common and linux-kbuild packages it depends on. Their
    symlinks are relative, but the flavour tree's Makefile includes the -common tree
    by an absolute /usr/src path: kernel.kbuild_tree() points it at the unpacked copy.
    """
    name = f"linux-headers-{kver}"
    hdr = resolve([name])[name]
    deps = re.findall(r"(linux-headers-[^\s,(]*-common|linux-kbuild-[^\s,(]*)", hdr.depends)
    if len(deps) != 2:
        raise ImageError(f"{name} does not depend on a -common and a linux-kbuild package "
                         f"as expected: {hdr.depends[:120]}")
    found = resolve(deps)
    return [hdr, *(found[d] for d in deps)]
