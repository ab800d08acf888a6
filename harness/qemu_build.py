"""The project's QEMU: Debian's qemu source + images/qemu/patches, built and cached.

Owns everything between the recipe (images/qemu/recipe.toml) and a binary in the
cache: the deb-src entry (derived from the machine's own apt sources when missing),
the build dependencies, ``apt-get source``, applying the patch series, configure and
ninja for qemu-system-x86_64 only. A build lands in ``<cache>/qemu/<key>/`` where the
key hashes the source version, the recipe and every patch, so a changed input means a
new folder and an unchanged one is never rebuilt. The source and build folders under
``<cache>/qemu/work/`` keep stable paths so ccache makes rebuilds after a patch change
cheap.

It must not decide when the binary is used: host.py does that.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness import apt_sources, procs
from harness.errors import EnvironmentProblem, ImageError
from harness.images import read_recipe
from harness.paths import cache_root, source_root
from harness.progress import Progress, Silent

RECIPE_KEYS = {"description", "source", "binary", "build_deps", "configure"}
_NINJA_STEP = re.compile(r"^\[(\d+)/(\d+)\]")


@dataclass(frozen=True)
class QemuRecipe:
    folder: Path
    description: str
    source: str
    binary: str
    build_deps: tuple[str, ...]
    configure: tuple[str, ...]

    @property
    def patches(self) -> list[Path]:
        return sorted((self.folder / "patches").glob("*.patch"))


@dataclass(frozen=True)
class QemuBuild:
    key: str
    path: Path  # the cache folder
    manifest: dict[str, object]

    @property
    def binary(self) -> Path:
        return self.path / "bin" / str(self.manifest.get("binary", "qemu-system-x86_64"))


def load_recipe(src: Path | None = None) -> QemuRecipe:
    folder = (src or source_root()) / "images" / "qemu"
    raw = read_recipe(folder / "recipe.toml", RECIPE_KEYS)
    return QemuRecipe(folder=folder, description=raw.get("description", ""),
                      source=raw.get("source", "qemu"),
                      binary=raw.get("binary", "qemu-system-x86_64"),
                      build_deps=tuple(raw.get("build_deps", [])),
                      configure=tuple(raw.get("configure", [])))


def build_key(version: str, recipe: QemuRecipe) -> str:
    """Content hash of every input of a build (pure apart from reading the files)."""
    h = hashlib.sha256(f"{recipe.source}={version}\n".encode())
    h.update((recipe.folder / "recipe.toml").read_bytes())
    for p in recipe.patches:
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def ninja_progress(line: str) -> tuple[int, int] | None:
    """(done, total) from a ninja status line such as ``[12/345] Compiling ...``."""
    m = _NINJA_STEP.match(line)
    return (int(m.group(1)), int(m.group(2))) if m else None


# --- apt: source version, deb-src entry, build dependencies -------------------------

def _cmd(argv: list[str], what: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return procs.run(argv, cwd=cwd)
    except FileNotFoundError as exc:
        raise EnvironmentProblem(f"{argv[0]} is not installed; it is needed to {what}") from exc


def apt_state() -> tuple[Path, ...]:
    """What decides apt's answers: every sources file and the package lists."""
    return (*apt_sources.source_files(), apt_sources.lists_dir())


def deb_src_file() -> Path:
    """The deb-src entry the harness adds when the machine has none."""
    return apt_sources.sourceparts_dir() / "harness-deb-src.sources"


def apt_fingerprint(paths: tuple[Path, ...]) -> str:
    """A hash of what decides apt's answer: the sources and the downloaded lists (name,
    size and mtime of each file), so an ``apt-get update`` or a new entry changes it."""
    h = hashlib.sha256()
    for top in paths:
        files = sorted(f for f in top.iterdir() if f.is_file()) if top.is_dir() else [top]
        for f in files:
            try:
                st = f.stat()
            except OSError:
                continue
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def source_version(recipe: QemuRecipe) -> str | None:
    """Version of the source package apt would fetch, or None without a deb-src entry.

    Asking apt takes about half a second, and every ``up`` that needs the project's
    QEMU asks; the answer is remembered in the cache next to the apt state it came
    from and asked again once that state changes. A missing answer is never kept.
    """
    memo = qemu_dir() / "source-version.json"
    key = f"{recipe.source} {apt_fingerprint(apt_state())}"
    try:
        saved = json.loads(memo.read_text())
        if saved.get("key") == key:
            return str(saved["version"])
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    res = _cmd(["apt-get", "source", "--print-uris", "-q", recipe.source],
               "find the QEMU source package")
    m = re.search(rf"'\S+/{re.escape(recipe.source)}_([^_/']+)\.dsc'", res.stdout)
    version = urllib.parse.unquote(m.group(1)) if m else None  # the URI escapes '+'
    if version:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "version": version}))
        tmp.replace(memo)
    return version


def ensure_deb_src(recipe: QemuRecipe, progress: Progress) -> str:
    """The source version, adding a deb-src entry from the machine's own sources if needed."""
    version = source_version(recipe)
    if version:
        return version
    if os.geteuid() != 0:
        raise EnvironmentProblem("apt has no deb-src entry for the QEMU source; run "
                                 "'harness qemu build' as root so it can add one")
    deb_src = deb_src_file()
    entries = apt_sources.release_sources(apt_sources.codename(), "deb-src", skip=(deb_src,))
    progress.step(f"adding a deb-src entry ({deb_src}) and updating apt")
    deb_src.write_text("# written by harness qemu build: source packages from the "
                       "machine's own mirrors\n" + apt_sources.render_deb822(entries))
    res = _cmd(["apt-get", "update", "-q"], "update apt's package lists")
    if res.returncode != 0:
        raise EnvironmentProblem(f"apt-get update failed: {_last_line(res)}")
    version = source_version(recipe)
    if not version:
        raise ImageError(f"apt cannot find the source package '{recipe.source}' even with "
                         f"a deb-src entry ({deb_src}); check the machine's apt sources")
    return version


def missing_build_deps(recipe: QemuRecipe) -> list[str]:
    missing = []
    for pkg in recipe.build_deps:
        res = _cmd(["dpkg-query", "-W", "-f", "${Status}", pkg], "check build dependencies")
        if "install ok installed" not in res.stdout:
            missing.append(pkg)
    return missing


def ensure_build_deps(recipe: QemuRecipe, progress: Progress) -> None:
    missing = missing_build_deps(recipe)
    if not missing:
        return
    if os.geteuid() != 0:
        raise EnvironmentProblem(f"QEMU build dependencies missing: {' '.join(missing)}; "
                                 "install them (apt-get install) or run as root")
    progress.step(f"installing build dependencies: {' '.join(missing)}")
    res = _cmd(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
               "install build dependencies")
    if res.returncode != 0:
        raise EnvironmentProblem(f"cannot install the QEMU build dependencies "
                                 f"({' '.join(missing)}): {_last_line(res)}")


def _last_line(res: subprocess.CompletedProcess[str]) -> str:
    return ((res.stderr.strip() or res.stdout.strip()).splitlines() or ["no output"])[-1]


# --- the cache -----------------------------------------------------------------------

def qemu_dir() -> Path:
    return cache_root() / "qemu"


def find(key: str) -> QemuBuild | None:
    path = qemu_dir() / key
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    build = QemuBuild(key=key, path=path, manifest=manifest)
    return build if build.binary.is_file() else None


def list_builds() -> list[QemuBuild]:
    if not qemu_dir().is_dir():
        return []
    found = (find(p.name) for p in sorted(qemu_dir().iterdir()) if p.name != "work")
    return [b for b in found if b is not None]


def current() -> QemuBuild | None:
    """The build for today's inputs, if it exists (no building, no apt changes)."""
    recipe = load_recipe()
    version = source_version(recipe)
    return find(build_key(version, recipe)) if version else None


@contextmanager
def _lock() -> Iterator[None]:
    qemu_dir().mkdir(parents=True, exist_ok=True)
    with open(qemu_dir() / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --- building ------------------------------------------------------------------------

def build(*, force: bool = False, progress: Progress | None = None) -> QemuBuild:
    """The patched QEMU for the current inputs, built first when missing (or ``force``)."""
    progress = progress or Silent()
    recipe = load_recipe()
    progress.step("QEMU: finding the source package")
    version = ensure_deb_src(recipe, progress)
    key = build_key(version, recipe)
    with _lock():
        done = find(key)
        if done and not force:
            _link_data(recipe, done.path)
            return done
        ensure_build_deps(recipe, progress)
        started = time.monotonic()
        work = qemu_dir() / "work"
        srcdir = _prepare_source(recipe, version, key, work, progress)
        built = _compile(recipe, srcdir, work / "build", version, progress)
        dest = qemu_dir() / key
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=qemu_dir()))
        try:
            (tmp / "bin").mkdir()
            shutil.copy2(built, tmp / "bin" / recipe.binary)
            _link_data(recipe, tmp)
            manifest = {"key": key, "source": recipe.source, "version": version,
                        "binary": recipe.binary, "patches": [p.name for p in recipe.patches],
                        "configure": list(recipe.configure),
                        "build_s": round(time.monotonic() - started, 1),
                        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            if dest.exists():
                shutil.rmtree(dest)
            os.rename(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    result = find(key)
    if result is None:
        raise ImageError(f"the QEMU build in {dest} has no binary")
    return result


def data_links(recipe: QemuRecipe) -> dict[str, str]:
    """Links a cache folder needs, relative path -> Debian's directory.

    QEMU finds its data and firmware relative to its own binary (<bin>/../share/qemu
    for prefix /usr), so the folder mirrors the prefix with links to Debian's copies.
    """
    opts = dict(o.removeprefix("--").split("=", 1) for o in recipe.configure if "=" in o)
    prefix = opts.get("prefix", "/usr").rstrip("/")
    dirs = [f"{prefix}/share/qemu", *opts.get("firmwarepath", "").split(":")]
    return {d.removeprefix(prefix + "/"): d for d in dirs if d.startswith(prefix + "/")}


def _link_data(recipe: QemuRecipe, folder: Path) -> None:
    for rel, target in data_links(recipe).items():
        link = folder / rel
        if not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(target)


def _stamp(folder: Path) -> Path:
    return folder / ".harness-key"


def patched_files(patch_text: str) -> set[str]:
    """Paths a unified diff changes (its ``+++ b/...`` lines), relative to the tree."""
    return {m.split("/", 1)[1] for m in re.findall(r"^\+\+\+ (\S+)", patch_text, re.M)
            if "/" in m}


def _fetch_pristine(recipe: QemuRecipe, version: str, work: Path, progress: Progress) -> Path:
    """work/pristine: Debian's source with Debian's own patches, fetched once per version."""
    pristine = work / "pristine"
    if _stamp(pristine).exists() and _stamp(pristine).read_text() == version:
        return pristine
    dl = work / "download"
    dl.mkdir(parents=True, exist_ok=True)
    for old in dl.iterdir():  # unpacked trees from earlier runs; the tarballs stay cached
        if old.is_dir():
            shutil.rmtree(old)
    progress.step(f"QEMU: fetching and unpacking source {recipe.source} {version}")
    # no =version pin: the URI names the version without its epoch, and apt fetches
    # the same candidate that source_version() saw (checked below)
    res = _cmd(["apt-get", "source", "-q", recipe.source], "fetch the QEMU source", cwd=dl)
    unpacked = [p for p in dl.iterdir() if p.is_dir()]
    if res.returncode != 0 or len(unpacked) != 1:
        raise ImageError(f"apt-get source {recipe.source} failed: {_last_line(res)}")
    if not (dl / f"{recipe.source}_{version}.dsc").exists():
        raise ImageError(f"apt-get source fetched another version than {version} (apt lists "
                         "changed meanwhile?); run 'harness qemu build' again")
    if pristine.exists():
        shutil.rmtree(pristine)
    os.rename(unpacked[0], pristine)
    _stamp(pristine).write_text(version)
    return pristine


def _prepare_source(recipe: QemuRecipe, version: str, key: str, work: Path,
                    progress: Progress) -> Path:
    """work/src: a copy of the pristine tree (timestamps kept) with our series applied.

    Only files the old or the new series touch get a fresh timestamp, so ninja in the
    kept build folder recompiles just what the patches changed.
    """
    srcdir = work / "src"
    if _stamp(srcdir).exists() and _stamp(srcdir).read_text() == key:
        return srcdir
    pristine = _fetch_pristine(recipe, version, work, progress)
    record = work / "src-patched-files"
    old = set(record.read_text().split()) if record.exists() else set()
    new = {f for patch in recipe.patches for f in patched_files(patch.read_text(errors="replace"))}
    if srcdir.exists():
        shutil.rmtree(srcdir)
    progress.step("QEMU: copying the source tree")
    shutil.copytree(pristine, srcdir, symlinks=True)
    _stamp(srcdir).unlink()
    progress.step(f"QEMU: applying {len(recipe.patches)} patch(es)", total=len(recipe.patches))
    for patch in recipe.patches:
        res = _cmd(["patch", "-p1", "--batch", "--forward", "--quiet", "-i", str(patch)],
                   "apply the QEMU patches", cwd=srcdir)
        if res.returncode != 0:
            raise ImageError(f"patch {patch.name} does not apply to {recipe.source} "
                             f"{version}: {_last_line(res)}")
        progress.advance()
    now = time.time()
    for rel in sorted(old | new):  # files reverted to pristine must look changed too
        if (srcdir / rel).exists():
            os.utime(srcdir / rel, (now, now))
    record.write_text("\n".join(sorted(new)) + "\n")
    _stamp(srcdir).write_text(key)
    return srcdir


def _compile(recipe: QemuRecipe, srcdir: Path, builddir: Path, version: str,
             progress: Progress) -> Path:
    env = dict(os.environ)
    # Debian's meson, not a copy in the tree; ccache (found by meson) keeps its cache here
    env["PATH"] = "/usr/bin:/bin:" + env.get("PATH", "")
    env["CCACHE_DIR"] = str(cache_root() / "ccache")
    env["CCACHE_BASEDIR"] = str(qemu_dir() / "work")
    # configured once per source version and configure line; a patch change is a
    # plain incremental ninja run (meson re-runs itself if a build file changed)
    config_key = hashlib.sha256("\n".join([version, str(srcdir), *recipe.configure])
                                .encode()).hexdigest()[:16]
    if not (_stamp(builddir).exists() and _stamp(builddir).read_text() == config_key):
        if builddir.exists():
            shutil.rmtree(builddir)
        builddir.mkdir(parents=True)
        progress.step("QEMU: configure")
        res = procs.run([str(srcdir / "configure"), *recipe.configure], cwd=builddir, env=env)
        if res.returncode != 0:
            (builddir / "configure.log").write_text(res.stdout + res.stderr)
            raise ImageError(f"QEMU configure failed: {_last_line(res)} "
                             f"(full output: {builddir / 'configure.log'})")
        _stamp(builddir).write_text(config_key)
    progress.step(f"QEMU: compiling {recipe.binary}")
    log_path = builddir / "ninja.log.txt"
    with open(log_path, "w") as log, procs.lines(["ninja", recipe.binary], cwd=builddir,
                                                  env=env) as proc:
        seen_total, done_before = 0, 0
        for line in proc.stdout or ():
            log.write(line)
            step = ninja_progress(line)
            if step is None:
                continue
            done, total = step
            if total != seen_total:
                progress.step(f"QEMU: compiling {recipe.binary}", total=total)
                seen_total, done_before = total, 0
            progress.advance(done - done_before)
            done_before = done
        code = proc.wait()
    if code != 0:
        errors = [ln.strip() for ln in log_path.read_text().splitlines() if "error" in ln]
        raise ImageError(f"compiling QEMU failed: {(errors or ['see log'])[0][:200]} "
                         f"(full log: {log_path})")
    return builddir / recipe.binary


def clean(keep_current: bool = False) -> list[Path]:
    """Remove cached builds (all, or all but the current one) and the work folder."""
    keep = current() if keep_current else None
    removed = []
    for b in list_builds():
        if keep is None or b.key != keep.key:
            shutil.rmtree(b.path)
            removed.append(b.path)
    work = qemu_dir() / "work"
    if not keep_current and work.exists():
        shutil.rmtree(work)
        removed.append(work)
    return removed
