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

from vsae.archs.cpu_topk import BLOCK

_jit = functools.partial(numba.njit, cache=True, nogil=True)


@_jit(fastmath=True)
def strided_max(row, nb, out):
    # out[b] = max(row[b], row[b + nb], …) over the whole stretches of nb entries
    out[:] = row[:nb]
    for s in range(nb, (row.shape[0] // nb) * nb, nb):
        for b in range(nb):
            out[b] = max(out[b], row[s + b])


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
