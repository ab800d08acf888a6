"""Kernel modules build from the unpacked header packages alone, never /usr/src."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import kernel
from harness.errors import ImageError

DEBIAN_MAKEFILE = "include /usr/src/linux-headers-6.1.0-57-common/Makefile\n"


def test_include_points_at_the_unpacked_common_tree() -> None:
    out = kernel.relocate_headers_makefile(DEBIAN_MAKEFILE, Path("/work/h/usr/src"))
    assert out == "include /work/h/usr/src/linux-headers-6.1.0-57-common/Makefile\n"
    assert "/usr/src/linux-headers" not in out.replace("/work/h/usr/src/", "")


def test_relocation_keeps_other_lines() -> None:
    text = "# generated\nMAKEFLAGS += -rR\n" + DEBIAN_MAKEFILE
    out = kernel.relocate_headers_makefile(text, Path("/x/usr/src"))
    assert out.splitlines()[:2] == ["# generated", "MAKEFLAGS += -rR"]
    assert out.splitlines()[2] == "include /x/usr/src/linux-headers-6.1.0-57-common/Makefile"


@pytest.mark.parametrize("text", ["", "obj-m := x.o\n",
                                  DEBIAN_MAKEFILE + DEBIAN_MAKEFILE])
def test_unexpected_makefile_is_an_error(text: str) -> None:
    with pytest.raises(ImageError, match="-common tree as expected"):
        kernel.relocate_headers_makefile(text, Path("/x"))


def test_kbuild_tree_rewrites_in_place(tmp_path: Path) -> None:
    flavour = tmp_path / "usr/src/linux-headers-6.1.0-57-amd64"
    flavour.mkdir(parents=True)
    (flavour / "Makefile").write_text(DEBIAN_MAKEFILE)
    kdir = kernel.kbuild_tree(tmp_path, "6.1.0-57-amd64")
    assert kdir == flavour
    assert (flavour / "Makefile").read_text() == \
        f"include {tmp_path.resolve()}/usr/src/linux-headers-6.1.0-57-common/Makefile\n"


def test_kbuild_tree_without_headers_names_the_version(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"linux-headers-6\.1\.0-9-amd64 has no Makefile"):
        kernel.kbuild_tree(tmp_path, "6.1.0-9-amd64")


def test_module_builds_with_the_hosts_kernel_trees_hidden(tmp_path: Path) -> None:
    """The uintr module builds from Debian's header packages unpacked here, with the
    host's /usr/src and /lib/modules hidden (empty tmpfs over both, in a mount
    namespace of the build's own): nothing of the host's kernel trees is read."""
    import shutil
    import subprocess

    from harness import apt, images
    from harness.paths import cache_root, source_root

    kver = images._kver(apt.kernel_package(images.load_recipe("minimal").kernel))
    for deb in apt.download(apt.kernel_headers(kver), cache_root() / "debs"):
        apt.extract(deb, tmp_path / "headers")
    kdir = kernel.kbuild_tree(tmp_path / "headers", kver)
    mod = tmp_path / "uintr"
    shutil.copytree(source_root() / "guest/kmod/uintr", mod,
                    ignore=lambda _d, names: [n for n in names
                                              if images.KBUILD_OUTPUT.search(n)])
    hide = " && ".join(f"mount -t tmpfs none {d}" for d in ("/usr/src", "/lib/modules")
                       if Path(d).is_dir())
    script = f"{hide or 'true'} && make -s -C {kdir} M={mod} modules"
    res = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                          script], capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (mod / "uintr.ko").exists()
