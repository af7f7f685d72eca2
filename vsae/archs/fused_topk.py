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

from vsae.archs import sparse, workspace
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
    x: Tensor
    shift: Tensor | None
    sae: SAE

    def values_at(self, crow: Tensor, cols: Tensor, rows: Tensor) -> Tensor:
        """Differentiable encoder outputs at other entries (AuxK's dead latents)."""
        sae = self.sae
        with sae._scores_fp32():
            return sparse.selected_linear(self.x, sae.W_enc, sae.b_enc, self.u, crow, cols, rows, self.shift)

    def decode(self, w_dec: Tensor) -> Tensor:
        return sparse.csr_decode(self.vals, self.crow, self.cols, self.rows, w_dec)


def encode_selected(sae: SAE, x: Tensor) -> SelectedCode:
    """Encoder output of the raw input x (centred here by b_dec where the architecture does), top-k
    selection (value mode: u > 0 eligible, so f = u at the selected entries) and the selected values, for
    `applies(sae, x)`."""
    x = x.float()
    shift = sae.b_dec if sae.cfg.apply_b_dec_to_input else None
    dtype = torch.promote_types(x.dtype, sae.W_enc.dtype)
    out = workspace.scratch((x.shape[0], sae.cfg.d_sae), dtype, x.device)
    with sae._scores_fp32(), torch.no_grad():
        xt = x if shift is None else x - shift
        u = torch.addmm(sae.b_enc, xt, sae.W_enc, out=out)
    crow, cols, rows = select_csr(u, None, sae.cfg.k, True, per_batch=sae.cfg.sparsifier == "batchtopk")
    code = SelectedCode(u, crow, cols, rows, u.new_zeros(0), x, shift, sae)
    code.vals = code.values_at(crow, cols, rows)
    return code
