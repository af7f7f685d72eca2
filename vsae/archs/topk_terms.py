"""The top-k family's extra loss pieces, written once on the selected entries (CSR: crow, cols, rows) so
that the dense step and the fused top-k kernel (archs/fused_topk.py) share them: AuxK and the statistic the
inference threshold θ follows."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from vsae.archs import sparse
from vsae.archs.select import select_csr

# (crow, cols, rows) → the differentiable values of those entries (the sampled z, or the encoder output)
ValuesAt = Callable[[Tensor, Tensor, Tensor], Tensor]


def auxk(
    x: Tensor,
    x_hat: Tensor,
    score: Tensor,
    positive: bool,
    values_at: ValuesAt,
    w_dec: Tensor,
    dead: Tensor | None,
    k_aux: int,
    raw: dict,
) -> Tensor:
    """AuxK: the k_aux dead latents ranked highest by `score` reconstruct the detached residual x − x̂ with
    their values (no b_dec), normalised by the residual's variance; exactly 0 with none dead."""
    if dead is None or not bool(dead.any()):
        raw["auxk"] = torch.zeros((), device=x.device)
        return raw["auxk"]
    e = (x - x_hat).detach()
    dead_idx = dead.nonzero().squeeze(1)  # ascending, so the lower index still wins a tie
    k = min(k_aux, len(dead_idx))
    crow, cols, rows = select_csr(score[:, dead_idx], None, k, positive, per_batch=False)
    cols = dead_idx[cols]
    e_hat = sparse.csr_decode(values_at(crow, cols, rows), crow, cols, rows, w_dec)
    denom = (e - e.mean(dim=0)).square().sum().clamp_min(1e-12)
    aux = (e - e_hat).square().sum() / denom
    raw["auxk"] = aux.detach()
    return aux


def threshold_stat(per_batch: bool, vals: Tensor, rows: Tensor, n: int) -> dict:
    """What the θ EMA follows, from the selection scores `vals` of the selected entries (row `rows`):
    topk — the mean over rows holding a positive score of each row's smallest selected score; batchtopk —
    the smallest positive selected score. None when no selected score is positive."""
    positive = vals > 0
    if not bool(positive.any()):
        return {"theta_stat": None}
    if per_batch:
        return {"theta_stat": vals[positive].min()}
    row_min = torch.full((n,), torch.inf, device=vals.device).scatter_reduce(0, rows, vals, "amin")
    has_positive = torch.zeros(n, dtype=torch.bool, device=vals.device).index_fill_(0, rows[positive], True)
    return {"theta_stat": row_min[has_positive].mean()}
