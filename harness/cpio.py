"""Write initramfs archives in the cpio 'newc' format, in pure Python.

Entries are always owned by root and carry fixed timestamps, so the same tree
gives the same bytes, and no root privilege or cpio binary is needed to make
device nodes.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

_MAGIC = b"070701"


class CpioWriter:
    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._ino = 1
        self._closed = False

    def _entry(self, name: str, mode: int, data: bytes = b"",
               rdev: tuple[int, int] = (0, 0)) -> None:
        name_b = name.lstrip("/").encode() + b"\0"
        fields = [self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_b), 0]
        self._ino += 1
        head = _MAGIC + b"".join(f"{v:08x}".encode() for v in fields)
        self._out.write(head + name_b)
        self._out.write(b"\0" * (-(len(head) + len(name_b)) % 4))
        self._out.write(data)
        self._out.write(b"\0" * (-len(data) % 4))

    def directory(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | perm)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def tree(self, root: Path) -> None:
        """Add every entry below ``root`` (sorted, parents first)."""
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            base = Path(dirpath)
            rel = base.relative_to(root)
            if str(rel) != ".":
                self.directory(str(rel), stat.S_IMODE(base.stat().st_mode))
            for fn in sorted(filenames) + sorted(d for d in dirnames if (base / d).is_symlink()):
                p = base / fn
                name = str(rel / fn)
                st = p.lstat()
                if stat.S_ISLNK(st.st_mode):
                    self.symlink(name, os.readlink(p))
                elif stat.S_ISREG(st.st_mode):
                    self.file(name, p.read_bytes(), stat.S_IMODE(st.st_mode))
            dirnames[:] = [d for d in dirnames if not (base / d).is_symlink()]

    def close(self) -> None:
        if not self._closed:
            self._entry("TRAILER!!!", 0)
            self._closed = True
