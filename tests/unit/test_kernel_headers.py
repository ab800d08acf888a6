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
