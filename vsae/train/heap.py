"""Keep freed memory in the process heap during training.

glibc serves every large allocation (above a threshold that adapts up to 32 MiB) with a fresh mmap and
returns it to the system on free, so each step's [N, F] temporaries — the encoder output, the gradients —
arrive as untouched pages and pay a page fault per 4 KiB on first write. A step allocates the same sizes
every time, so raising the mmap and trim thresholds lets the next step reuse the last one's blocks: 4–8 %
of a CPU top-k step at N = 4096, F = 9216 (bench/RESULTS.md). Linux/glibc only; a no-op elsewhere.
The reuse is partial when the step's allocation pattern shifts (the CSR sizes vary by step), so the largest
temporary, the [N, F] encoder output, has its own reused buffer (archs/workspace.py).
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def reuse_freed_memory() -> bool:
    """Ask glibc to keep and reuse freed blocks of up to 1 GiB; True if it agreed."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
