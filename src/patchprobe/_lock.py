"""An exclusive lock file shared by processes on one or many machines (O_EXCL create, holder recorded).

The file holds `{"host", "pid", "since"}` of its holder. A lock whose holder process is gone on this
host is stale and taken over; a lock held from another host is trusted (its process cannot be
checked from here), so a crash there needs the file removed by hand, which `describe()` says.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path


class FileLock:
    """An O_EXCL lock file at `path`. Use `acquire()`/`release()`, or `with FileLock(path).hold(): ...`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._mine = False

    def acquire(self) -> bool:
        """Take the lock; False when another live process holds it. A stale lock (dead holder on this host) is taken over."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._stale():
                    return False
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(holder, handle)
            self._mine = True
            return True
        return False

    def holder(self) -> dict | None:
        """The recorded holder {"host", "pid", "since"}, or None when the file is absent or still being written."""
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def _stale(self) -> bool:
        holder = self.holder()
        if holder is None:
            # absent (released meanwhile: retry) or being written right now (not stale)
            return not self.path.exists()
        if holder.get("host") != socket.gethostname():
            return False  # another machine's worker: trust it
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, KeyError, ValueError, TypeError):
            return False
        return False

    def release(self) -> None:
        """Remove the lock file if this object took it."""
        if self._mine:
            self.path.unlink(missing_ok=True)
            self._mine = False

    def held(self) -> bool:
        """True when some live process (this one included) holds the lock."""
        return self.path.exists() and not self._stale()

    def describe(self) -> str:
        """Who holds the lock, for error messages."""
        holder = self.holder() or {}
        since = holder.get("since")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "unknown time"
        return (f"held by pid {holder.get('pid', '?')} on host {holder.get('host', '?')} since {when} "
                f"(lock file {self.path}; remove it only if that process is dead)")
