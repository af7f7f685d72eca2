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

BLOCK = 16


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


@functools.cache
def _kernel():
    """Compiled on first use (a few seconds, then cached on disk by numba)."""
    import numba

    jit = functools.partial(numba.njit, cache=True, nogil=True)

    @jit(fastmath=True)
    def strided_max(row, nb, out):
        # out[b] = max(row[b], row[b + nb], …) over the whole stretches of nb entries
        out[:] = row[:nb]
        for s in range(nb, (row.shape[0] // nb) * nb, nb):
            for b in range(nb):
                out[b] = max(out[b], row[s + b])

    @jit
    def candidates(row, t, bm, nb, cv, ci):
        # the entries ≥ t: those in blocks whose maximum is ≥ t, then the tail past B·nb (the caller sorts
        # them back into index order)
        c = 0
        for b in range(nb):
            if bm[b] >= t:
                for j in range(b, BLOCK * nb, nb):
                    if row[j] >= t:
                        cv[c] = row[j]
                        ci[c] = j
                        c += 1
        for j in range(BLOCK * nb, row.shape[0]):
            if row[j] >= t:
                cv[c] = row[j]
                ci[c] = j
                c += 1
        return c

    @jit
    def rows_topk(score, kk, vals, idx, start, stop):
        f = score.shape[1]
        nb = f // BLOCK
        ng = 2 * kk
        bm = np.empty(max(nb, 1), score.dtype)
        gm = np.empty(ng, score.dtype)
        cv = np.empty(f, score.dtype)
        ci = np.empty(f, np.int64)
        for r in range(start, stop):
            row = score[r]
            c = 0
            if nb >= ng:
                strided_max(row, nb, bm)
                strided_max(bm, ng, gm)
                for g in range((nb // ng) * ng, nb):  # blocks past the last whole stretch of groups
                    gm[g % ng] = max(gm[g % ng], bm[g])
                t = np.sort(gm)[ng - kk]
                c = candidates(row, t, bm, nb, cv, ci)
            if c < kk:  # too narrow for the prefilter, or NaN: every entry is a candidate
                cv[:f] = row
                ci[:f] = np.arange(f)
                c = f
            order = np.argsort(ci[:c])
            v, i = cv[:c][order], ci[:c][order]
            best = np.argsort(-v, kind="mergesort")[:kk]  # stable: the lower index first among equal values
            vals[r] = v[best]
            idx[r] = i[best]

    return rows_topk
