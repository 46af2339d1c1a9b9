"""A change counter shared by the worker processes of one ``permgate serve --workers N``.

A change made through one worker's admin API must bind every worker before the API
answers. The committing worker delivers the change to its own caches, then bumps this
counter; every worker reads it on each lookup (one 8-byte read from shared memory,
no system call) and, when it moved, catches up from the store's change log before
deciding the request. A worker that cannot catch up refuses the request (503): it
never decides with data it knows to be stale.

The counter lives in a small file that the parent creates and names to its workers
through the environment (:data:`ENV`); each worker maps it into memory. Bumps take
an exclusive ``flock`` on the file so concurrent bumps from several workers are
never lost; reads take no lock (an aligned 8-byte load is not torn).
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import tempfile
from typing import Final

from permgate.core.errors import ConfigError

__all__ = ["ENV", "ChangeEpoch", "create_file", "remove_file"]

# Set in each worker's environment by the parent; outside the PERMGATE_ config namespace.
ENV: Final = "_PERMGATE_CHANGE_EPOCH"
_SIZE: Final = 8


def create_file() -> str:
    """A new counter file holding zero; the caller removes it when the workers are gone.

    Raises :class:`ConfigError` (one line: where and why) when no file can be made.
    """
    # In memory where the system offers it (/dev/shm): the file is never written to disk.
    where = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    try:
        fd, path = tempfile.mkstemp(prefix="permgate-epoch-", dir=where)
    except OSError as exc:
        place = where or tempfile.gettempdir()
        raise ConfigError(
            [
                f"--workers: cannot create the workers' shared change counter in {place}: "
                f"{exc.strerror or exc}"
            ]
        ) from None
    try:
        os.write(fd, bytes(_SIZE))
    finally:
        os.close(fd)
    return path


def remove_file(path: str) -> None:
    """Remove a counter file (at the parent's exit); already gone is fine."""
    with contextlib.suppress(OSError):
        os.unlink(path)


class ChangeEpoch:
    """The counter in the file at ``path``, mapped into this process's memory."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR)
        try:
            self._map = mmap.mmap(self._fd, _SIZE)
        except BaseException:
            os.close(self._fd)
            raise
        self._view = memoryview(self._map).cast("Q")

    @classmethod
    def from_environment(cls) -> ChangeEpoch | None:
        """The counter the parent named in :data:`ENV`, or None outside a worker."""
        path = os.environ.get(ENV)
        if not path:
            return None
        try:
            return cls(path)
        except OSError as exc:
            raise ConfigError(
                [f"cannot open the workers' shared change counter {path}: {exc.strerror or exc}"]
            ) from None

    @property
    def value(self) -> int:
        """The current count (changes committed through any worker's admin API)."""
        return int(self._view[0])

    def bump(self) -> int:
        """Count one more committed change; returns the new count."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            value = int(self._view[0]) + 1
            self._view[0] = value
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        return value

    def close(self) -> None:
        """Unmap and close (the file itself belongs to the parent)."""
        self._view.release()
        self._map.close()
        os.close(self._fd)
