"""The guest kernel: an uncompressed vmlinux, a chosen subset of its modules, and the
kbuild tree out-of-tree modules build against.

Debian ships an XZ-compressed bzImage; decompressing it under TCG costs seconds on
every boot. The kernel has CONFIG_PVH, so the ELF vmlinux found inside the bzImage
boots directly through QEMU's PVH entry. Modules are picked with their
dependencies (from modules.dep) and indexed with depmod for the guest's modprobe.

Kernel headers are Debian's packages unpacked into a private folder: nothing here
reads the host's /usr/src or /lib/modules.
"""

from __future__ import annotations

import lzma
import re
import shutil
import subprocess
from pathlib import Path

from harness.errors import EnvironmentProblem, ImageError

_XZ_MAGIC = b"\xfd7zXZ\x00"


def extract_vmlinux(bzimage: bytes) -> bytes:
    start = bzimage.find(_XZ_MAGIC)
    if start < 0:
        raise ImageError("the kernel image holds no XZ stream; cannot extract vmlinux")
    try:
        out = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(bzimage[start:])
    except lzma.LZMAError as exc:
        raise ImageError(f"cannot decompress the kernel image: {exc}") from exc
    if out[:4] != b"\x7fELF":
        raise ImageError("the kernel image's payload is not an ELF vmlinux")
    return out


def depmod(root: Path, version: str) -> None:
    try:
        res = subprocess.run(["depmod", "-b", str(root), version], capture_output=True,
                             text=True, check=False)
    except FileNotFoundError as exc:
        raise EnvironmentProblem("depmod is missing; install the kmod package "
                                 "(scripts/setup does)") from exc
    if res.returncode != 0:
        raise ImageError(f"depmod failed: {res.stderr.strip()[:200]}")


def _norm(name: str) -> str:
    return name.replace("-", "_")


def module_closure(modules_dep: str, wanted: list[str]) -> list[str]:
    """Relative paths of ``wanted`` modules and everything they depend on.

    Pure: works on the text of modules.dep. Unknown module names raise ImageError.
    """
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in modules_dep.splitlines():
        if ":" not in line:
            continue
        path, rest = line.split(":", 1)
        deps[path] = rest.split()
        by_name[_norm(Path(path).name.split(".ko")[0])] = path
    out: list[str] = []
    stack = []
    for w in wanted:
        if _norm(w) not in by_name:
            raise ImageError(f"kernel module '{w}' does not exist in this kernel; "
                             "fix the modules list of the image recipe")
        stack.append(by_name[_norm(w)])
    while stack:
        p = stack.pop()
        if p in out:
            continue
        out.append(p)
        stack.extend(deps.get(p, []))
    return sorted(out)


def install_modules(src_root: Path, version: str, wanted: list[str], dest_root: Path) -> list[str]:
    """Copy ``wanted`` modules (with dependencies) from an unpacked kernel to dest_root."""
    src = src_root / "lib/modules" / version
    if not (src / "modules.dep").exists():
        depmod(src_root, version)
    paths = module_closure((src / "modules.dep").read_text(), wanted)
    dst = dest_root / "lib/modules" / version
    for rel in paths:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, dst / rel)
    for meta in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        if (src / meta).exists():
            shutil.copy2(src / meta, dst / meta)
    depmod(dest_root, version)
    return paths


_INCLUDE = re.compile(
    r"^([ \t]*include[ \t]+)(\S*/)(linux-headers-[^/\s]+-common)(/Makefile)[ \t]*$", re.M)


def relocate_headers_makefile(text: str, src_dir: Path) -> str:
    """The flavour tree's Makefile with its include of the -common tree pointed at
    ``src_dir`` (the unpacked usr/src).

    Debian's linux-headers-KVER/Makefile is one line, ``include
    /usr/src/linux-headers-KVER-common/Makefile``: an absolute path that only exists
    where the headers are installed system-wide. Pure; an unexpected Makefile raises.
    """
    new, count = _INCLUDE.subn(lambda m: f"{m.group(1)}{src_dir / m.group(3)}{m.group(4)}",
                               text)
    if count != 1:
        raise ImageError("the kernel headers' Makefile does not include a "
                         "linux-headers-*-common tree as expected; cannot build modules "
                         f"against it (first line: {text.splitlines()[:1]})")
    return new


def kbuild_tree(unpacked: Path, version: str) -> Path:
    """The flavour headers folder inside ``unpacked`` (linux-headers, -common and
    linux-kbuild .debs extracted there), made to build from that folder alone."""
    src = unpacked / "usr/src"
    kdir = src / f"linux-headers-{version}"
    makefile = kdir / "Makefile"
    try:
        text = makefile.read_text()
    except OSError as exc:
        raise ImageError(f"linux-headers-{version} has no Makefile at {makefile}: "
                         f"{exc.strerror}") from exc
    makefile.write_text(relocate_headers_makefile(text, src.resolve()))
    return kdir
