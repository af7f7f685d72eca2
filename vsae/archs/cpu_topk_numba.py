"""The numba kernel behind archs/cpu_topk.py (the algorithm is described there). Imported only on first use,
so processes that never select on the CPU do not import numba.

The functions live at module level: numba's on-disk cache matches a function by its module and qualified
name, and a kernel built inside a function (a closure over other jitted functions) never matched, so every
process compiled it again (8 s) and added two cache files.
"""

from __future__ import annotations

import functools

import numba
import numpy as np

# Entries per block. A constant of this file: numba freezes globals into its cached machine code and would not
# notice a change made in another file; as a run-time argument instead the kernel ran 2× slower (62 vs 31 ms
# for [4096, 9216], one thread), as LLVM no longer unrolls the block loop.
BLOCK = 16

_jit = functools.partial(numba.njit, cache=True, nogil=True)


@_jit
def kth_largest(a, k, work):
    # the k-th largest entry of a (k ≥ 1) by quickselect on a copy in work: no allocation, no full sort. Any
    # value serves the caller's exactness (it only sets how many candidates pass), NaN included
    n = a.shape[0]
    work[:n] = a
    lo, hi, target = 0, n - 1, k - 1  # target: the position in descending order
    while lo < hi:
        pivot = work[(lo + hi) // 2]
        i, j = lo, hi
        while i <= j:
            while work[i] > pivot:
                i += 1
            while work[j] < pivot:
                j -= 1
            if i <= j:
                work[i], work[j] = work[j], work[i]
                i += 1
                j -= 1
        if target <= j:
            hi = j
        elif target >= i:
            lo = i
        else:
            break
    return work[target]


@_jit
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


@_jit
def rows_topk(score, kk, vals, idx, start, stop):
    f = score.shape[1]
    nb = f // BLOCK
    ng = 2 * kk
    bm = np.empty(max(nb, 1), score.dtype)
    gm = np.empty(ng, score.dtype)
    gw = np.empty(ng, score.dtype)
    cv = np.empty(f, score.dtype)
    ci = np.empty(f, np.int64)
    for r in range(start, stop):
        row = score[r]
        c = 0
        if nb >= ng:
            # block maxima bm[b] = max(row[b], row[b + nb], …, row[b + (B − 1)·nb]), then group maxima over
            # the blocks b ≡ g (mod ng). Written inline: LLVM vectorises the first loop only where it can see
            # that bm is private; through a function call it ran 6× slower (bench/RESULTS.md)
            for b in range(nb):
                bm[b] = score[r, b]
            for s in range(1, BLOCK):
                for b in range(nb):
                    bm[b] = max(bm[b], score[r, s * nb + b])
            gm[:] = bm[:ng]
            for s in range(ng, nb, ng):
                for g in range(min(ng, nb - s)):
                    gm[g] = max(gm[g], bm[s + g])
            t = kth_largest(gm, kk, gw)
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
