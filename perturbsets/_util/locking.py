"""Advisory locks on folders, so two processes never write the same run or set at once.

The lock is an OS file lock (``flock`` on POSIX, ``msvcrt.locking`` on Windows) on a hidden
file in the folder: the OS releases it when the holder exits, even on a kill, so a crashed
writer never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Iterator

__all__ = ["FolderLockedError", "folder_lock"]

LOCK_NAME = ".perturbsets.lock"

# The folders this process holds, by resolved path: thread id and nesting depth. An OS lock
# belongs to an open file, so a second take by the same thread would conflict with the first;
# it is counted here instead.
_held: dict[Path, tuple[int, int]] = {}
_held_guard = threading.Lock()


class FolderLockedError(RuntimeError):
    """Another process (or another thread of this one) holds the folder's lock."""


def _acquire(fd: int, blocking: bool) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_LOCK if blocking else msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        return True
    except BlockingIOError:
        return False


def _enter_nested(key: Path) -> bool:
    """Count one more take of ``key`` if this thread holds it already."""
    me = threading.get_ident()
    with _held_guard:
        holder = _held.get(key)
        if holder is None or holder[0] != me:
            return False
        _held[key] = (me, holder[1] + 1)
        return True


def _leave(key: Path) -> None:
    with _held_guard:
        owner, depth = _held[key]
        if depth > 1:
            _held[key] = (owner, depth - 1)
        else:
            del _held[key]


def _unwritable(folder: Path, what: str, err: OSError) -> OSError:
    return OSError(f"cannot write to the {what} {folder} ({err.strerror or err}); choose a folder you can create and write to")


def _create(folder: Path, what: str) -> Path:
    """Create ``folder`` if missing; its resolved path."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _unwritable(folder, what, err) from err
    return folder.resolve()


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, *, blocking: bool = True, what: str = "folder") -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (created if missing) for the ``with`` block.

    ``blocking=False`` raises :class:`FolderLockedError` at once when another process holds
    it; ``blocking=True`` waits for it. A thread that holds the lock may take it again
    (a run that calls another writer of its own folder); the lock is released when the
    outermost ``with`` ends. A folder that cannot be created or written raises ``OSError``
    naming it.
    """
    folder = Path(folder)
    key = _create(folder, what)
    if _enter_nested(key):
        try:
            yield folder
        finally:
            _leave(key)
        return
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise _unwritable(folder, what, err) from err
    try:
        if not _acquire(fd, blocking):
            raise FolderLockedError(
                f"another process is writing to the {what} {folder}; wait for it to finish or choose another folder"
            )
        with _held_guard:
            _held[key] = (threading.get_ident(), 1)
        try:
            yield folder
        finally:
            _leave(key)
    finally:
        os.close(fd)  # closing the descriptor releases the lock
