"""Advisory locks on folders, so two processes never write the same run or set at once.

The lock is an OS file lock (``flock`` on POSIX, ``msvcrt.locking`` on Windows) on a hidden
file in the folder: the OS releases it when the holder exits, even on a kill, so a crashed
writer never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

__all__ = ["FolderLockedError", "folder_lock"]

LOCK_NAME = ".perturbsets.lock"


class FolderLockedError(RuntimeError):
    """Another process holds the folder's lock."""


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


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, *, blocking: bool = True, what: str = "folder") -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (created if missing) for the ``with`` block.

    ``blocking=False`` raises :class:`FolderLockedError` at once when another process holds
    it; ``blocking=True`` waits for it. The lock is per open file, so a process must not
    nest two locks on the same folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _acquire(fd, blocking):
            raise FolderLockedError(
                f"another process is writing to the {what} {folder}; wait for it to finish or choose another folder"
            )
        yield folder
    finally:
        os.close(fd)  # closing the descriptor releases the lock
