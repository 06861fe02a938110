"""Probing the SQLite writers' lock files from a test, as another process would."""

from __future__ import annotations

import fcntl
import os

__all__ = ["file_lock_free"]


def file_lock_free(path: str) -> bool:
    """Whether an exclusive flock on ``path`` could be taken right now (it is released
    at once): False while a writer holds the lock file, or while a waiting writer holds
    the wait file shared."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True
