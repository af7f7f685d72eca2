"""The text around an example token with the latent's activation on every token of it: the stored rows of
the same context window are read back (one read per store chunk) and encoded again."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from vsae.archs.sae import SAE
from vsae.store.table import Table


@dataclass
class Context:
    """Token ids around the example, the latent's activation on each (None: a special token, never
    stored) and the index of the example token."""

    ids: list[int]
    acts: list[float | None]
    peak: int


@torch.no_grad()
def contexts(
    sae: SAE, table: Table, wanted: list[tuple[int, int]], width: int
) -> dict[tuple[int, int], Context]:
    """For each (row, latent) of `wanted`, the window tokens within `width` positions of the row's token."""
    latents = sorted({j for _, j in wanted})
    col = {j: i for i, j in enumerate(latents)}
    # A window's stored rows are contiguous, and at most a few special positions are skipped inside
    # a window, so rows within width + 4 of the example cover its context.
    near = {r for row, _ in wanted for r in range(row - width - 4, row + width + 5)}
    needed = sorted(r for r in near if 0 <= r < table.n_tokens)
    by_chunk: dict[int, list[int]] = defaultdict(list)
    for r in needed:
        by_chunk[r // table.chunk_tokens].append(r)
    where: dict[int, tuple[int, int]] = {}  # row → (window, position)
    acts: dict[int, torch.Tensor] = {}
    for chunk, rows in by_chunk.items():
        lo, hi = table.chunk_bounds(chunk)
        local = np.asarray(rows) - lo
        x = table.read(lo, hi)[torch.from_numpy(local)]
        f = sae.encode(x)[:, latents]
        pos = table.doc_pos(lo, hi)[local]
        for i, r in enumerate(rows):
            where[r] = (int(pos[i, 1]), int(pos[i, 2]))
            acts[r] = f[i]
    out = {}
    ctx = table.group["contexts"]
    for row, j in wanted:
        window, p = where[row]
        ids = np.asarray(ctx[window])
        lo, hi = max(0, p - width), min(len(ids), p + width + 1)
        values: list[float | None] = [None] * (hi - lo)
        for r in range(row - width - 4, row + width + 5):
            if r in where and where[r][0] == window and lo <= where[r][1] < hi:
                values[where[r][1] - lo] = float(acts[r][col[j]])
        out[(row, j)] = Context(ids=ids[lo:hi].tolist(), acts=values, peak=p - lo)
    return out
