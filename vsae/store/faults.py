"""Failpoints for crash tests: VSAE_FAILPOINT="name:n[:action]" makes the n-th pass through `name`
kill the process (action kill, the default), raise ENOSPC (action enospc) or send SIGINT as a user's
Ctrl-C would (action sigint). Unset in normal use."""

from __future__ import annotations

import errno
import os
import signal

_hits: dict[str, int] = {}


def failpoint(name: str) -> None:
    spec = os.environ.get("VSAE_FAILPOINT")
    if not spec:
        return
    parts = spec.split(":")
    if parts[0] != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] != int(parts[1]):
        return
    action = parts[2] if len(parts) > 2 else "kill"
    if action == "enospc":
        raise OSError(errno.ENOSPC, "No space left on device (simulated)")
    if action == "sigint":
        # raise() runs the C-level handler in this (the main) thread; the interpreter then raises
        # KeyboardInterrupt on entering the next Python function. os.kill could land on a helper thread and
        # surface later, even inside a finaliser that swallows it.
        signal.raise_signal(signal.SIGINT)
        _python_call()
        return
    os.kill(os.getpid(), signal.SIGKILL)


def _python_call() -> None:
    """Entering a Python function is where pending signal handlers run."""
