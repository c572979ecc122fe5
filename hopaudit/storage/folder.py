"""One saved audit folder, held by a descriptor taken once, so a load sees one audit or none.

A concurrent ``save(overwrite=True)`` swaps a new folder in (``atomic.exchange``) and then
deletes the old one's files. A reader that opened ``root/audit.json`` and then ``root/x.npz``
by path could read the two from different audits. :class:`Folder` opens the folder once
(``O_DIRECTORY``); every later path goes through ``/proc/self/fd/N`` (Linux), which names that
directory inode whatever is renamed over ``root`` meanwhile, so all files come from one audit.
A file the old audit's cleanup deleted under the reader is then *missing*, and
:meth:`Folder.replaced` tells the caller to start again on the new folder rather than call an
intact audit damaged. Where ``/proc`` is absent, paths are the plain ones (no such guarantee).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from hopaudit.errors import FormatError

__all__ = ["Folder", "held_path", "hold_file", "read_whole"]

T = TypeVar("T")
#: Reads started again when a concurrent save replaced the folder under one.
ATTEMPTS = 8

_O_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_O_FILE = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


def held_path(fd: int) -> Path | None:
    """A path that opens the very file or folder the descriptor ``fd`` holds (even once its
    name is gone), or None where the system has no ``/proc/self/fd``."""
    path = Path(f"/proc/self/fd/{fd}")
    return path if os.path.exists(path) else None


def hold_file(path: Path) -> int:
    """A read-only descriptor of the regular file at ``path`` (its last component never a link,
    never blocking on a FIFO): the file a later reader opens through :func:`held_path`."""
    fd = os.open(path, _O_FILE)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FormatError(f"{path}: not a regular file (refused)")
    return fd


class Folder:
    """A saved audit's folder opened once: ``io`` is the path every read goes through (the held
    directory), ``root`` the name the user gave (for messages). Close it when done."""

    def __init__(self, root: Path) -> None:
        self.root = root
        try:
            self.fd = os.open(root, _O_DIR)
        except (FileNotFoundError, NotADirectoryError):
            raise FormatError(f"{root}: no such directory (expected a saved audit)") from None
        except OSError as exc:
            raise FormatError(f"{root}: cannot be opened ({exc.strerror})") from None
        self._stat = os.fstat(self.fd)
        self.io = held_path(self.fd) or root

    def replaced(self) -> bool:
        """Whether ``root`` now names another folder than the one held (a concurrent save)."""
        try:
            st = os.stat(self.root)
        except OSError:
            return True
        return (st.st_dev, st.st_ino) != (self._stat.st_dev, self._stat.st_ino)

    def shown(self, text: str) -> str:
        """``text`` with the held folder's path written as the user's (for messages)."""
        return text if self.io == self.root else text.replace(str(self.io), str(self.root))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Folder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_whole(root: Path, read: Callable[[Folder], T]) -> T:
    """``read(folder)`` on ``root`` held as one :class:`Folder`, started again (up to
    :data:`ATTEMPTS` times) when it failed because a concurrent save replaced the folder and
    deleted files under it; a FormatError names the user's path, never ``/proc``."""
    for attempt in range(ATTEMPTS):
        folder = Folder(root)
        try:
            return read(folder)
        except FormatError as exc:
            if attempt + 1 < ATTEMPTS and folder.replaced():
                continue
            raise FormatError(folder.shown(str(exc))) from None
        finally:
            folder.close()
    raise AssertionError("unreachable")
