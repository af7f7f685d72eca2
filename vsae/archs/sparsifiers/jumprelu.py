"""JumpReLU: f = z ⊙ H(site − θ) with the straight-through estimator for θ (jumprelu_ste.py) and an L0
penalty counted at the selection site (or its squared distance to a target L0)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vsae.archs.sparsifiers.base import Sparsifier
from vsae.archs.sparsifiers.jumprelu_ste import jumprelu, step


class JumpReLU(Sparsifier):
    def declare(self, sae) -> None:
        sae.threshold = nn.Parameter(torch.full((sae.cfg.d_sae,), sae.cfg.threshold_init))  # θ, learned

    def mask(self, sae, site, mu, pi_gate) -> Tensor:
        return site > sae.threshold

    def train_code(self, sae, z, site, mask) -> Tensor:
        return jumprelu(z, sae.threshold, sae.cfg.bandwidth, site)

    def infer(self, sae, site, values, mu, pi_gate) -> Tensor:
        return values * (site > sae.threshold)

    def penalty(self, sae, x, site, mu, pi_gate, norms, ctx, terms, raw) -> None:
        cfg = sae.cfg
        l0 = step(site, sae.threshold, cfg.bandwidth).sum(dim=-1).mean()
        raw["l0"] = l0.detach()
        penalty = (l0 / cfg.l0_target - 1).square() if cfg.l0_mode == "target" else l0
        terms["l0"] = cfg.l0_coeff * ctx.sparsity_scale * penalty

    def after_step(self, sae, ctx, stats) -> None:
        sae.threshold.clamp_(min=1e-6)
