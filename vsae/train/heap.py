"""Keep freed memory in the process heap during training.

glibc serves every large allocation (above a threshold that adapts up to 32 MiB) with a fresh mmap and
returns it to the system on free, so each step's [N, F] temporaries — the encoder output, the gradients —
arrive as untouched pages and pay a page fault per 4 KiB on first write (≈ 5 µs each in a VM). A step
allocates the same sizes every time, so serving blocks of up to 1 GiB from the heap and never trimming it
lets the next step reuse the last one's pages: 4–8 % of a CPU top-k step at N = 4096, F = 9216, and 15–20 %
of a vsae_topk step, whose ~20 [N, F] temporaries free more than 1 GiB at once — under a 1 GiB trim threshold
glibc gave that back to the system every step and faulted it in again (bench/RESULTS.md). The heap then
stays at the step's peak, which the process reached anyway. Linux/glibc only; a no-op elsewhere. The reuse
is partial when the step's allocation pattern shifts (the CSR sizes vary by step), so the largest temporary
of the fused top-k step, its [N, F] encoder output, has its own reused buffer (archs/workspace.py).
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
NEVER = -1  # as a size_t, the largest threshold: the heap's top is never given back


def reuse_freed_memory() -> bool:
    """Ask glibc to serve blocks of up to 1 GiB from the heap and never trim it; True if it agreed."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(M_TRIM_THRESHOLD, NEVER))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
