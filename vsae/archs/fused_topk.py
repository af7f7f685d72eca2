"""The fused top-k kernel: the selected entries of a deterministic top-k code without any N×F autograd.

u = x W + b is computed once without autograd, the selection is read from it as CSR, and the selected
values come back through `sparse.selected_linear`, whose backward reaches x, W and b through those entries
only. `SAE.loss_terms` calls this kernel in place of its dense encode-and-select when it applies (sparse
code, value-mode scores, no variational or matryoshka term); the loss itself — reconstruction, AuxK, the θ
statistic — is the one in `SAE.loss_terms`, so there is one top-k loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from vsae.archs import sparse
from vsae.archs.select import select_csr

if TYPE_CHECKING:
    from vsae.archs.sae import SAE


def applies(sae: SAE, x: Tensor) -> bool:
    cfg = sae.cfg
    return (
        cfg.sparsifier in ("topk", "batchtopk")
        and cfg.topk_mode == "value"
        and not cfg.samples
        and not cfg.vsae_family
        and not cfg.group_fractions
        and cfg.encoder == "linear"
        and x.dim() == 2
        and torch.is_grad_enabled()
        and cfg.k / cfg.d_sae <= sparse.DENSITY_LIMIT
    )


@dataclass
class SelectedCode:
    """The code as its selected entries: CSR (crow, cols, rows) of [N, F] and differentiable `vals`; `u` is
    the full encoder output (no autograd), the selection and AuxK scores."""

    u: Tensor
    crow: Tensor
    cols: Tensor
    rows: Tensor
    vals: Tensor
    xt: Tensor
    sae: SAE

    def values_at(self, crow: Tensor, cols: Tensor, rows: Tensor) -> Tensor:
        """Differentiable encoder outputs at other entries (AuxK's dead latents)."""
        with self.sae._scores_fp32():
            return sparse.selected_linear(self.xt, self.sae.W_enc, self.sae.b_enc, self.u, crow, cols, rows)

    def decode(self, w_dec: Tensor) -> Tensor:
        return sparse.csr_decode(self.vals, self.crow, self.cols, self.rows, w_dec)


def encode_selected(sae: SAE, xt: Tensor) -> SelectedCode:
    """Encoder output, top-k selection (value mode: u > 0 eligible, so f = u at the selected entries) and
    the selected values, for `applies(sae, x)`."""
    xt = xt.float()
    with sae._scores_fp32(), torch.no_grad():
        u = torch.addmm(sae.b_enc, xt.detach(), sae.W_enc)
    crow, cols, rows = select_csr(u, None, sae.cfg.k, True, per_batch=sae.cfg.sparsifier == "batchtopk")
    code = SelectedCode(u, crow, cols, rows, u.new_zeros(0), xt, sae)
    code.vals = code.values_at(crow, cols, rows)
    return code
