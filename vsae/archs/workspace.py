"""One reusable CPU buffer per shape for the training step's largest temporary: the [N, F] encoder output
of the fused top-k step (150 MB at N = 4096, F = 9216).

glibc serves a request that size partly from recycled and partly from fresh pages, and each fresh 4 KiB
page faults on first touch (≈ 5 µs in a VM); a freshly allocated encoder output cost 0–200 ms of a 400 ms
step, varying from step to step (bench/RESULTS.md). Writing it into the same buffer every step removes
those faults. A buffer is valid until the next request of the same shape on the same thread: callers use it
within one step and keep nothing that aliases it. On a GPU the caching allocator already recycles blocks,
so no buffer is kept there.
"""

from __future__ import annotations

import threading

import torch

_local = threading.local()


def scratch(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    """This thread's buffer of `shape` and `dtype` (uninitialised contents), or None off the CPU."""
    if device.type != "cpu":
        return None
    buffers = _buffers()
    key = (tuple(shape), dtype)
    if key not in buffers:
        buffers[key] = torch.empty(shape, dtype=dtype)
    return buffers[key]


def release() -> None:
    """Free this thread's buffers (the end of a training run)."""
    _buffers().clear()


def _buffers() -> dict:
    if not hasattr(_local, "buffers"):
        _local.buffers = {}
    return _local.buffers
