"""Writing the user's files safely: temporary siblings, exclusive creation, atomic renames.

Every file or folder hopaudit writes goes first to a temporary sibling made by :mod:`tempfile`
in the target's own folder (created exclusively under a unique name, so a symlink planted at a
guessable name is never written through), is flushed to disk, then renamed over the target in
one step (``os.replace`` renames the link itself, never its target). A reader therefore sees the
old file or the new one, never a partial one; when two processes write the same target the
last complete one wins. On any failure, Ctrl-C included, the temporary is removed.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "exchange",
    "fsync_dir",
    "fsync_file",
    "lstat_regular",
    "remove_tree",
    "temporary_dir",
    "write_bytes",
    "write_text",
]


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush one file's data to disk (opened without following a symlink)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (a rename is durable once its folder is synced); no-op where
    folders cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def exchange(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``), so a
    folder is replaced with no moment where neither exists. False where the system or the file
    system cannot (the caller then renames in two steps)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    renameat2.argtypes += [ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), os.fspath(b))


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.tmp-"


def write_bytes(path: str | os.PathLike[str], data: bytes | bytearray | memoryview) -> Path:
    """Write ``data`` to ``path`` atomically: a new temporary sibling, fsync, rename over."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(target), dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)
    return target


def write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """:func:`write_bytes` of ``text`` encoded."""
    return write_bytes(path, text.encode(encoding))


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    """The process umask (mkstemp makes 0600 files; the result should get the usual mode).
    Read once: reading it means setting it, which would race with other threads' files."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def temporary_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """A fresh folder beside ``target`` (exclusive, unique name), removed unless the caller
    renamed it away before the block ends; yields its path."""
    target = Path(target)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
    finally:
        if os.path.lexists(tmp):
            remove_tree(tmp)


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Delete a folder this process created, never following a symlink found inside it (a link
    is removed as a link). Errors are ignored: cleanup must not hide the original failure."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except OSError:
        return
    if not stat.S_ISDIR(st.st_mode):
        with contextlib.suppress(OSError):
            os.unlink(path)
        return
    # shutil.rmtree refuses to start at a symlink and unlinks links found inside (fd-based).
    shutil.rmtree(path, ignore_errors=True)


def lstat_regular(root: Path, rel: str) -> os.stat_result | str:
    """``lstat`` of ``root/rel`` when every component is a real folder and the last a regular
    file; else a reason (a symlink, a FIFO, a device, missing) - nothing is opened or followed."""
    current = root
    parts = rel.split("/")
    for i, part in enumerate(parts):
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            return "missing"
        except OSError as exc:
            return f"cannot be read ({exc.strerror})"
        last = i == len(parts) - 1
        if stat.S_ISLNK(st.st_mode):
            return "a symbolic link (refused: a saved audit holds only regular files)"
        if not last and not stat.S_ISDIR(st.st_mode):
            return f"{'/'.join(parts[: i + 1])} is not a folder"
        if last and not stat.S_ISREG(st.st_mode):
            kind = (
                "a folder"
                if stat.S_ISDIR(st.st_mode)
                else "a FIFO"
                if stat.S_ISFIFO(st.st_mode)
                else "a device"
                if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "a socket"
                if stat.S_ISSOCK(st.st_mode)
                else "not a regular file"
            )
            return f"{kind} (refused: a saved audit holds only regular files)"
    return st
