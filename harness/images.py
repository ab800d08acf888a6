"""Guest images: recipes in images/<flavor>/, built from Debian packages, cached by content.

An image is a folder in the cache named ``<flavor>-<hash>``, where the hash covers
every input: the recipe and its files, images/common, the guest/ sources, the
resolved package versions and this builder's own source. A build happens only
when no folder with that hash exists; it is written to a temporary folder and
renamed into place, so a crashed build never leaves a half image.

Flavors:
  minimal  busybox + dropbear initramfs, boots in seconds; most tests use it
  full     a Debian root file system (mmdebstrap) on an ext4 disk image, booted
           through a small initramfs that switches root to it
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
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import apt, apt_sources, kernel, procs
from harness.cpio import CpioWriter
from harness.errors import EnvironmentProblem, ImageError
from harness.paths import cache_root, source_root
from harness.progress import Progress, Silent
from harness.qemu_cmd import BootFiles

FLAVORS = ("minimal", "full")
LIBDIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "usr/lib")
RECIPE_KEYS = {"description", "kernel", "packages", "binaries", "modules", "cmdline",
               "rootfs_packages", "rootfs_size_mb", "rootfs_modules", "kmods"}
# what kbuild leaves in a module's folder: never an input of an image
KBUILD_OUTPUT = re.compile(r"(\.(o|ko|mod|mod\.c|cmd|symvers)|^modules\.order|^Module\.symvers)$")


@dataclass(frozen=True)
class Recipe:
    flavor: str
    folder: Path
    description: str
    kernel: str
    packages: tuple[str, ...]
    binaries: tuple[str, ...]
    modules: tuple[str, ...]
    cmdline: str
    rootfs_packages: tuple[str, ...] = ()
    rootfs_size_mb: int = 0
    rootfs_modules: tuple[str, ...] = ()
    kmods: tuple[str, ...] = ()  # the project's modules (guest/kmod/NAME), built per kernel


@dataclass(frozen=True)
class Image:
    flavor: str
    path: Path
    digest: str
    manifest: dict

    @property
    def boot(self) -> BootFiles:
        rootfs = self.path / "rootfs.img"
        return BootFiles(flavor=self.flavor, kernel=self.path / "vmlinux",
                         initrd=self.path / "initrd.cpio",
                         rootfs=rootfs if rootfs.exists() else None,
                         cmdline=self.manifest["cmdline"])

    @property
    def host_key(self) -> str:
        """The guest's SSH host public key line ("ssh-ed25519 AAAA...")."""
        return (self.path / "host_key.pub").read_text().strip()


def read_recipe(path: Path, allowed: set[str]) -> dict[str, Any]:
    """A recipe file's TOML; an unreadable file or an unknown key is an ImageError."""
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ImageError(f"cannot read recipe {path}: {exc}") from exc
    unknown = set(raw) - allowed
    if unknown:
        raise ImageError(f"{path}: unknown key '{sorted(unknown)[0]}'; "
                         f"allowed: {', '.join(sorted(allowed))}")
    return raw


def load_recipe(flavor: str, src: Path | None = None) -> Recipe:
    if flavor not in FLAVORS:
        raise ImageError(f"unknown image flavor '{flavor}'; use one of {', '.join(FLAVORS)}")
    folder = (src or source_root()) / "images" / flavor
    raw = read_recipe(folder / "recipe.toml", RECIPE_KEYS)
    return Recipe(
        flavor=flavor, folder=folder,
        description=raw.get("description", ""),
        kernel=raw.get("kernel", "linux-image-amd64"),
        packages=tuple(raw.get("packages", [])),
        binaries=tuple(raw.get("binaries", [])),
        modules=tuple(raw.get("modules", [])),
        cmdline=raw.get("cmdline", ""),
        rootfs_packages=tuple(raw.get("rootfs_packages", [])),
        rootfs_size_mb=int(raw.get("rootfs_size_mb", 0)),
        rootfs_modules=tuple(raw.get("rootfs_modules", [])),
        kmods=tuple(raw.get("kmods", [])),
    )


def _hash_tree(h: hashlib._Hash, root: Path, base: Path) -> None:
    for p in sorted(root.rglob("*")):
        if (p.is_file() and "build" not in p.relative_to(root).parts
                and not KBUILD_OUTPUT.search(p.name)):
            h.update(str(p.relative_to(base)).encode() + b"\0" + p.read_bytes() + b"\0")


def input_digest(recipe: Recipe, versions: dict[str, str], src: Path) -> str:
    """Content hash of everything an image is built from."""
    h = hashlib.sha256()
    for folder in (recipe.folder, src / "images/common", src / "guest"):
        _hash_tree(h, folder, src)
    for name in sorted(versions):
        h.update(f"{name}={versions[name]}\n".encode())
    for mod in (Path(__file__), Path(kernel.__file__)):
        h.update(mod.read_bytes())
    return h.hexdigest()[:16]


def _versions(recipe: Recipe) -> tuple[apt.Package, list[apt.Package], dict[str, str]]:
    kpkg = apt.kernel_package(recipe.kernel)
    names = list(recipe.packages) + list(recipe.rootfs_packages)
    pkgs = apt.resolve(names) if names else {}
    versions = {kpkg.name: kpkg.version, **{p.name: p.version for p in pkgs.values()}}
    if recipe.kmods:
        versions.update((p.name, p.version) for p in apt.kernel_headers(_kver(kpkg)))
    return kpkg, [pkgs[n] for n in recipe.packages], versions


def _kver(kpkg: apt.Package) -> str:
    return kpkg.name.removeprefix("linux-image-")


def images_dir() -> Path:
    return cache_root() / "images"


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """An image folder's manifest, or None when it is missing or damaged (a disk that
    filled up, an edit by hand): such a folder counts as not built."""
    try:
        m = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(m, dict) and all(isinstance(m.get(k), str)
                                     for k in ("flavor", "digest", "cmdline", "kernel"))
    return m if ok else None


def list_images() -> list[Image]:
    out = []
    root = images_dir()
    if root.is_dir():
        for d in sorted(root.iterdir()):
            m = read_manifest(d) if d.is_dir() and not d.name.startswith(".") else None
            if m is not None:
                out.append(Image(flavor=m["flavor"], path=d, digest=m["digest"], manifest=m))
    return out


def clean(keep_current: bool = False) -> list[Path]:
    """Remove cached images (and downloads); with keep_current, only stale ones."""
    current = set()
    if keep_current:
        for flavor in FLAVORS:
            with suppress(ImageError):
                current.add(_image_path(flavor))
    removed = []
    folders = sorted(images_dir().iterdir()) if images_dir().is_dir() else []
    for d in folders:  # damaged image folders (no readable manifest) go too
        if (d.is_dir() and not d.name.startswith(".") and d.name != "debs"
                and d not in current):
            shutil.rmtree(d)
            removed.append(d)
    if not keep_current and (cache_root() / "debs").exists():
        shutil.rmtree(cache_root() / "debs")
        removed.append(cache_root() / "debs")
    return removed


def _image_path(flavor: str) -> Path:
    recipe = load_recipe(flavor)
    _, _, versions = _versions(recipe)
    digest = input_digest(recipe, versions, source_root())
    return images_dir() / f"{flavor}-{digest}"


@contextmanager
def _lock(name: str) -> Iterator[None]:
    images_dir().mkdir(parents=True, exist_ok=True)
    with open(images_dir() / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def get(flavor: str, *, build: bool = True, force: bool = False,
        progress: Progress | None = None) -> Image:
    """The current image of ``flavor``, built first when missing (or when ``force``)."""
    progress = progress or Silent()
    src = source_root()
    recipe = load_recipe(flavor, src)
    progress.step(f"{flavor}: resolving package versions")
    kpkg, pkgs, versions = _versions(recipe)
    digest = input_digest(recipe, versions, src)
    dest = images_dir() / f"{flavor}-{digest}"
    with _lock(flavor):
        m = read_manifest(dest) if dest.exists() and not force else None
        if m is not None:
            return Image(flavor=flavor, path=dest, digest=digest, manifest=m)
        if dest.exists() and not force:
            progress.warn(f"image {dest.name} is damaged (no readable manifest); "
                          "building it again")
        if not build:
            raise ImageError(f"image '{flavor}' is not built for the current inputs; "
                             f"run 'harness image build {flavor}'")
        tmp = Path(tempfile.mkdtemp(prefix=f".build-{flavor}-", dir=images_dir()))
        try:
            manifest = _build(recipe, kpkg, pkgs, versions, src, tmp, progress)
            manifest.update(flavor=flavor, digest=digest, versions=versions,
                            built=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            if dest.exists():
                shutil.rmtree(dest)
            os.rename(tmp, dest)
        finally:
            unmount_below(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
    return Image(flavor=flavor, path=dest, digest=digest, manifest=manifest)


def unmount_below(folder: Path) -> None:
    """Unmount whatever is mounted at or below ``folder`` (deepest first), so removing
    it can never reach into /proc, /sys or /dev of the host: mmdebstrap mounts those in
    the root it builds and may be stopped before it unmounts them."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return
    top = str(folder.resolve())
    points = [ln.split()[4].encode().decode("unicode_escape") for ln in lines
              if len(ln.split()) > 4]
    for point in sorted((p for p in points if p == top or p.startswith(top + "/")),
                        key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


# --- building --------------------------------------------------------------------

def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise EnvironmentProblem(f"{name} is missing; install the {package} package "
                                 "(scripts/setup does)")
    return path


def _run(argv: list[str], what: str, cwd: Path | None = None) -> None:
    res = procs.run(argv, cwd=cwd)
    if res.returncode != 0:
        tail = (res.stderr.strip() or res.stdout.strip()).splitlines()[-3:]
        raise ImageError(f"{what} failed: {' | '.join(tail)}")


def _needed(elf: Path) -> list[str]:
    out = subprocess.run([_tool("readelf", "binutils"), "-d", str(elf)], capture_output=True,
                         text=True, check=False).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def _copy_with_libs(stage: Path, binaries: tuple[str, ...], root: Path) -> None:
    """Copy binaries from the unpacked packages, plus the shared libraries they need."""
    done: set[str] = set()
    queue: list[Path] = []
    for b in binaries:
        srcp = stage / b.lstrip("/")
        if not srcp.exists():
            raise ImageError(f"binary {b} is not in the recipe's packages; add its package")
        dst = root / b.lstrip("/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(srcp, dst)
        queue.append(srcp)
    libdir = root / "lib/x86_64-linux-gnu"
    libdir.mkdir(parents=True, exist_ok=True)
    while queue:
        for lib in _needed(queue.pop()):
            if lib in done:
                continue
            done.add(lib)
            found = next((stage / d / lib for d in LIBDIRS if (stage / d / lib).exists()), None)
            if found is None:
                raise ImageError(f"shared library {lib} is not in the recipe's packages; "
                                 "add the package that ships it")
            shutil.copy2(found.resolve(), libdir / lib)
            queue.append(found.resolve())
    loader = stage / "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    if done:
        (root / "lib64").mkdir(exist_ok=True)
        shutil.copy2(loader.resolve(), root / "lib64/ld-linux-x86-64.so.2")


def _host_key(root: Path, out: Path) -> None:
    """Pre-generate the guest's SSH host key so first boot does not wait for it."""
    keydir = root / "etc/dropbear"
    keydir.mkdir(parents=True, exist_ok=True)
    key = keydir / "dropbear_ed25519_host_key"
    _run([_tool("dropbearkey", "dropbear-bin"), "-t", "ed25519", "-f", str(key)],
         "generating the guest host key")
    pub = subprocess.run(["dropbearkey", "-y", "-f", str(key)], capture_output=True,
                         text=True, check=True).stdout
    line = next(ln for ln in pub.splitlines() if ln.startswith("ssh-"))
    (out / "host_key.pub").write_text(" ".join(line.split()[:2]) + "\n")


def _guest_programs(src: Path, root: Path, work: Path) -> None:
    _run(["make", "-s", "-C", str(src / "guest"), f"BUILD={work / 'guest-build'}", "install",
          f"DESTDIR={root}"], "building the guest programs (make -C guest)")


def _etc(root: Path, src: Path, modules: tuple[str, ...], kmods: tuple[str, ...]) -> None:
    etc = root / "etc"
    (etc / "harness").mkdir(parents=True, exist_ok=True)
    shutil.copy2(src / "images/common/rc", etc / "harness/rc")
    shutil.copy2(src / "images/common/inittab", etc / "inittab")
    (etc / "harness/modules").write_text("\n".join(modules) + "\n")
    (etc / "harness/kmods").write_text("".join(f"{m}\n" for m in kmods))
    # busybox acpid runs /etc/acpi/<event>/<code> for the power button
    button = etc / "acpi/PWRF/00000080"
    button.parent.mkdir(parents=True, exist_ok=True)
    button.write_text("#!/bin/sh\nexec busybox poweroff\n")
    button.chmod(0o755)


def _build_kmods(recipe: Recipe, kver: str, src: Path, work: Path,
                 progress: Progress) -> list[Path]:
    """Build the project's modules (guest/kmod/NAME) against Debian's headers for kver."""
    if not recipe.kmods:
        return []
    progress.step(f"{recipe.flavor}: building modules {', '.join(recipe.kmods)} for {kver}")
    headers = work / "headers"
    for deb in apt.download(apt.kernel_headers(kver), cache_root() / "debs"):
        apt.extract(deb, headers)
    kdir = kernel.kbuild_tree(headers, kver)
    built = []
    for name in recipe.kmods:
        folder = src / "guest/kmod" / name
        if not (folder / "Kbuild").exists():
            raise ImageError(f"image recipe {recipe.flavor}: kmods entry '{name}' has no "
                             f"guest/kmod/{name}/Kbuild")
        copy = work / "kmod" / name  # kbuild writes next to the sources: keep the tree clean
        shutil.copytree(folder, copy, ignore=lambda _dir, names: [
            n for n in names if KBUILD_OUTPUT.search(n)])
        _run(["make", "-s", "-C", str(kdir), f"M={copy}", "modules"],
             f"building kernel module {name} against linux-headers-{kver}")
        built += sorted(copy.glob("*.ko"))
    return built


def _install_kmods(kmods: list[Path], kver: str, root: Path) -> None:
    if not kmods:
        return
    extra = root / "lib/modules" / kver / "extra"
    extra.mkdir(parents=True, exist_ok=True)
    for ko in kmods:
        shutil.copy2(ko, extra / ko.name)
    kernel.depmod(root, kver)


def _busybox_tree(stage: Path, root: Path) -> None:
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "run", "tmp",
              "root", "etc", "var/log", "mnt"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(stage / "bin/busybox", root / "bin/busybox")
    listing = subprocess.run([str(stage / "bin/busybox"), "--list-full"], capture_output=True,
                             text=True, check=True).stdout.split()
    for applet in listing:
        link = root / applet
        if not link.exists() and not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")


def _write_cpio(root: Path, out: Path) -> None:
    with open(out, "wb") as fh:
        w = CpioWriter(fh)
        w.tree(root)
        w.chardev("dev/console", 5, 1)
        w.chardev("dev/null", 1, 3, 0o666)
        w.close()


def _build(recipe: Recipe, kpkg: apt.Package, pkgs: list[apt.Package],
           versions: dict[str, str], src: Path, out: Path, progress: Progress) -> dict:
    work = out / "work"
    stage, root = work / "stage", work / "root"
    progress.step(f"{recipe.flavor}: downloading {len(pkgs) + 1} packages")
    debs = apt.download([kpkg, *pkgs], cache_root() / "debs")
    progress.step(f"{recipe.flavor}: unpacking packages", total=len(debs))
    for deb in debs:
        apt.extract(deb, stage)
        progress.advance()
    kver = _kver(kpkg)
    bz = stage / "boot" / f"vmlinuz-{kver}"
    if not bz.exists():
        raise ImageError(f"{kpkg.name} has no /boot/vmlinuz-{kver}")
    progress.step(f"{recipe.flavor}: extracting vmlinux")
    (out / "vmlinux").write_bytes(kernel.extract_vmlinux(bz.read_bytes()))
    progress.step(f"{recipe.flavor}: assembling the initramfs")
    _busybox_tree(stage, root)
    kernel.install_modules(stage, kver, list(recipe.modules), root)
    kmods = _build_kmods(recipe, kver, src, work, progress)
    _install_kmods(kmods, kver, root)
    _copy_with_libs(stage, recipe.binaries, root)
    if recipe.flavor == "minimal":
        _etc(root, src, recipe.modules, recipe.kmods)
        (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (root / "etc/group").write_text("root:x:0:\n")
        (root / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
        if (root / "usr/lib/openssh/sftp-server").exists():
            (root / "usr/lib/sftp-server").symlink_to("/usr/lib/openssh/sftp-server")
        _host_key(root, out)
        _guest_programs(src, root, work)
        shutil.copy2(recipe.folder / "init", root / "init")
    else:
        shutil.copy2(recipe.folder / "init", root / "init")
        _build_rootfs(recipe, stage, kver, src, out, work, progress, kmods)
    _write_cpio(root, out / "initrd.cpio")
    shutil.rmtree(work)
    return {"kernel": kver, "cmdline": recipe.cmdline, "description": recipe.description}


def _build_rootfs(recipe: Recipe, stage: Path, kver: str, src: Path, out: Path, work: Path,
                  progress: Progress, kmods: list[Path]) -> None:
    """The 'full' flavor: a Debian system made by mmdebstrap, as an ext4 image."""
    mm = _tool("mmdebstrap", "mmdebstrap")
    mkfs = _tool("mkfs.ext4", "e2fsprogs")
    suite = apt_sources.codename()
    # the machine's own mirrors for this release, from apt's configuration, whatever
    # files they live in; third-party repositories stay out of the guest
    sources = work / "mirrors.sources"
    sources.write_text(apt_sources.render_deb822(apt_sources.release_sources(suite)))
    rootfs = work / "rootfs"
    progress.step(f"full: mmdebstrap {suite} with {len(recipe.rootfs_packages)} packages "
                  "(about a minute)")
    _run([mm, "--mode=root", "--variant=minbase", "--quiet",
          f"--include={','.join(recipe.rootfs_packages)}",
          "--dpkgopt=path-exclude=/usr/share/{doc,man,locale}/*",
          suite, str(rootfs), str(sources)], "mmdebstrap")
    progress.step("full: kernel modules, guest programs, host keys")
    kernel.install_modules(stage, kver, list(recipe.rootfs_modules), rootfs)
    _install_kmods(kmods, kver, rootfs)
    _etc(rootfs, src, recipe.rootfs_modules, recipe.kmods)
    shutil.copy2(stage / "bin/busybox", rootfs / "bin/busybox")
    _guest_programs(src, rootfs, work)
    for old in (rootfs / "etc/ssh").glob("ssh_host_*"):
        old.unlink()
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
          str(rootfs / "etc/ssh/ssh_host_ed25519_key")], "generating the guest host key")
    pub = (rootfs / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
    (out / "host_key.pub").write_text(" ".join(pub[:2]) + "\n")
    (rootfs / "etc/ssh/sshd_config.d").mkdir(parents=True, exist_ok=True)
    (rootfs / "etc/ssh/sshd_config.d/harness.conf").write_text(
        "HostKey /etc/ssh/ssh_host_ed25519_key\nPermitRootLogin prohibit-password\n")
    (rootfs / "usr/sbin/policy-rc.d").unlink(missing_ok=True)
    progress.step(f"full: writing the {recipe.rootfs_size_mb} MiB ext4 image")
    _run([mkfs, "-q", "-F", "-L", "harness-root", "-d", str(rootfs), str(out / "rootfs.img"),
          f"{recipe.rootfs_size_mb}M"], "mkfs.ext4")
