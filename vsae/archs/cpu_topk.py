"""Exact per-row top-k on the CPU in about one pass over the scores (numba), where torch.topk copies every
row into (value, index) pairs and partially sorts them: the largest single cost of a top-k training step
after the encoder matmul (bench/RESULTS.md).

For each row: block maxima over B = 16 entries (block b holds entries b, b + nb, b + 2·nb, …, so the
maxima are an elementwise max of contiguous stretches, which vectorises), group maxima over those blocks
(2·kk groups), and a threshold t = the kk-th best group maximum, which lets through a few dozen entries:
only blocks whose maximum is ≥ t are scanned. Exact whatever t is: when at least kk entries are ≥ t, the kk
best of the row are among them; otherwise (a too-narrow row, NaN) every entry is a candidate. A stable sort
by value of the candidates, in index order, sends ties to the lower index. Rows run in parallel on torch's
thread count (the kernel releases the GIL).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

# imported on first use (0.4 s); without numba the torch.topk path serves and nothing else changes
HAVE_NUMBA = importlib.util.find_spec("numba") is not None


def applies(score: torch.Tensor, kk: int) -> bool:
    """The kernel serves a 2-D fp32/fp64 CPU matrix (its values come back without autograd: selection
    needs none)."""
    return (
        HAVE_NUMBA
        and score.device.type == "cpu"
        and score.dim() == 2
        and score.dtype in (torch.float32, torch.float64)
        and 0 < kk <= score.shape[1]
    )


def row_topk(score: torch.Tensor, kk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) of each row's kk highest entries, sorted by value, the lower index first among
    equal values (the stable-sort order): what torch.topk returns up to the order of ties."""
    a = score.detach().contiguous().numpy()
    n = a.shape[0]
    vals = np.empty((n, kk), dtype=a.dtype)
    idx = np.empty((n, kk), dtype=np.int64)
    threads = max(1, min(torch.get_num_threads(), n // 64))
    if threads == 1:
        _kernel()(a, kk, vals, idx, 0, n)
    else:
        step = -(-n // threads)
        parts = [(s, min(n, s + step)) for s in range(0, n, step)]
        list(_pool(threads, os.getpid()).map(lambda p: _kernel()(a, kk, vals, idx, *p), parts))
    return torch.from_numpy(vals), torch.from_numpy(idx)


@functools.cache
def _pool(threads: int, pid: int) -> ThreadPoolExecutor:
    """One pool per thread count and process (a forked child inherits a pool without its threads)."""
    return ThreadPoolExecutor(threads, thread_name_prefix="vsae-topk")


def _kernel():
    """The compiled kernel (archs/cpu_topk_numba.py): numba is imported on first use; the machine code is
    cached on disk, so only the first process on a machine compiles (≈ 9 s)."""
    from vsae.archs.cpu_topk_numba import rows_topk

    return rows_topk
