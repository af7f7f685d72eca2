"""One writer per table: a lock file naming the owner (pid, host); a lock whose process is gone on this
host is taken over, so a killed harvest never blocks the next one."""

from __future__ import annotations

import json
import os
import socket
import time

import fsspec

from vsae.errors import VsaeError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TableLock:
    """`with TableLock(store, table_path): ...` — refuses a second live writer with a clear error."""

    def __init__(self, store: str, table: str):
        self.fs, root = fsspec.core.url_to_fs(store)
        self.path = f"{root.rstrip('/')}/{table}.lock"
        self.table = table
        self.owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}

    def __enter__(self) -> TableLock:
        self.fs.makedirs(self.path.rsplit("/", 1)[0], exist_ok=True)
        for _ in range(2):
            if self._create():
                return self
            holder = self._read()
            stale = holder is None or (
                holder.get("host") == self.owner["host"] and not _alive(int(holder["pid"]))
            )
            if not stale:
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
                raise VsaeError(
                    f"table {self.table} is being written by pid {holder['pid']} on {holder['host']} since {since}; "
                    f"wait for it to finish (or delete {self.path} if that process is gone)"
                )
            self.fs.rm(self.path)
        raise VsaeError(f"could not take the lock {self.path}; another harvest is starting on the same table")

    def __exit__(self, *exc) -> None:
        holder = self._read()
        if holder and holder.get("pid") == self.owner["pid"] and holder.get("host") == self.owner["host"]:
            self.fs.rm(self.path)

    def _create(self) -> bool:
        data = json.dumps(self.owner).encode()
        if (
            getattr(self.fs, "protocol", None) in ("file", ("file", "local"))
            or self.fs.__class__.__name__ == "LocalFileSystem"
        ):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            return True
        if self.fs.exists(self.path):  # object stores have no exclusive create: best effort
            return False
        self.fs.pipe(self.path, data)
        return True

    def _read(self) -> dict | None:
        try:
            return json.loads(self.fs.cat(self.path))
        except (FileNotFoundError, ValueError):
            return None
