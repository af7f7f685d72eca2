"""The training step of a deterministic top-k SAE (topk, batchtopk) on the selected entries only.

Same math as `SAE.loss_terms` (docs/architectures.md) — an invariant test holds the two equal — but the
encoder output u = x W + b is computed once without autograd, the selection is read from it as CSR, and
every later tensor is [nnz] or [N, d]: no N×F mask, code, ReLU, or zero-filled gradient is built. Used when
the code is sparse (k/F ≤ DENSITY_LIMIT), the scores are the values (topk_mode value) and there is no
variational or matryoshka term.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from vsae.archs import sparse
from vsae.archs.select import select_csr

if TYPE_CHECKING:
    from vsae.archs.sae import SAE, StepContext


def applies(sae: SAE, x: Tensor) -> bool:
    cfg = sae.cfg
    return (
        cfg.sparsifier in ("topk", "batchtopk")
        and cfg.topk_mode == "value"
        and not cfg.is_variational
        and not cfg.variational
        and not cfg.group_fractions
        and cfg.encoder == "linear"
        and x.dim() == 2
        and torch.is_grad_enabled()
        and cfg.k / cfg.d_sae <= sparse.DENSITY_LIMIT
    )


def loss_terms(sae: SAE, x: Tensor, ctx: StepContext, terms: dict) -> dict:
    """`SAE.loss_terms` for `applies(sae, x)`; `terms` holds every term key at zero."""
    cfg = sae.cfg
    xt = sae._centre(x).float()
    with sae._scores_fp32(), torch.no_grad():
        u = torch.addmm(sae.b_enc, xt.detach(), sae.W_enc)
    # value mode: only u > 0 is eligible, so selecting on u equals selecting on ReLU(u), and f = u there
    crow, cols, rows = select_csr(u, None, cfg.k, True, per_batch=cfg.sparsifier == "batchtopk")
    with sae._scores_fp32():
        vals = sparse.selected_linear(xt, sae.W_enc, sae.b_enc, u, crow, cols, rows)
    x_hat = sparse.csr_decode(vals, crow, cols, rows, sae.W_dec) + sae.b_dec
    raw: dict[str, Tensor] = {}
    terms["rec"] = sae._reconstruction(x, x_hat, None, raw)
    terms["auxk"] = cfg.auxk_coeff * _auxk(sae, x, xt, x_hat, u, ctx.dead, raw)
    fired = torch.zeros(cfg.d_sae, dtype=torch.bool, device=x.device)
    fired[cols] = True
    return {
        "loss": sum(terms.values()),
        "terms": terms,
        "raw": raw,
        "x_hat": x_hat.detach(),
        "fired": fired,
        "stats": _threshold_stat(cfg.sparsifier, vals.detach(), rows, crow),
        "l0_train": torch.tensor(cols.numel() / x.shape[0]),
    }


def _auxk(
    sae: SAE, x: Tensor, xt: Tensor, x_hat: Tensor, u: Tensor, dead: Tensor | None, raw: dict
) -> Tensor:
    """AuxK on the dead latents' entries of u; exactly 0 with none dead."""
    if dead is None or not bool(dead.any()):
        raw["auxk"] = torch.zeros((), device=x.device)
        return raw["auxk"]
    e = (x - x_hat).detach()
    k_aux = min(sae.cfg.resolved_aux_k, int(dead.sum()))
    crow, cols, rows = select_csr(u, dead.expand_as(u), k_aux, True, per_batch=False)
    with sae._scores_fp32():
        vals = sparse.selected_linear(xt, sae.W_enc, sae.b_enc, u, crow, cols, rows)
    e_hat = sparse.csr_decode(vals, crow, cols, rows, sae.W_dec)
    denom = (e - e.mean(dim=0)).square().sum().clamp_min(1e-12)
    aux = (e - e_hat).square().sum() / denom
    raw["auxk"] = aux.detach()
    return aux


def _threshold_stat(sparsifier: str, vals: Tensor, rows: Tensor, crow: Tensor) -> dict:
    """The θ statistic: mean over rows of the smallest selected score (topk), or the smallest overall."""
    if vals.numel() == 0:
        return {"theta_stat": None}
    if sparsifier == "batchtopk":
        return {"theta_stat": vals.min()}
    n = crow.numel() - 1
    row_min = torch.full((n,), torch.inf, device=vals.device).scatter_reduce(0, rows, vals, "amin")
    return {"theta_stat": row_min[crow[1:] > crow[:-1]].mean()}
