"""Gated: the gate path decides (π_gate > 0), the magnitude path gives the values; L1 on ReLU(π_gate) and
an auxiliary reconstruction from the gate path through the frozen decoder."""

from __future__ import annotations

import torch
from torch import Tensor

from vsae.archs.sparsifiers.base import Sparsifier


class Gate(Sparsifier):
    def mask(self, sae, site, mu, pi_gate) -> Tensor:
        return pi_gate > 0

    def penalty(self, sae, x, site, mu, pi_gate, norms, ctx, terms, raw) -> None:
        cfg = sae.cfg
        l1 = (norms * torch.relu(pi_gate)).sum(dim=-1).mean()
        raw["l1"] = raw["l1_gate"] = l1.detach()
        terms["l1"] = cfg.l1_coeff * ctx.sparsity_scale * l1
        frozen = torch.relu(pi_gate) @ sae.W_dec.detach() + sae.b_dec.detach()
        aux = (x - frozen).square().sum(dim=-1).mean()
        raw["aux_gate"] = aux.detach()
        terms["aux_gate"] = cfg.aux_coeff * aux
