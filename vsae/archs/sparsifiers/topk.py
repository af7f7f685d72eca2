"""Top-k and batch top-k: the k highest scores per token (or k·N over the batch) at the selection site,
ties to the lower index; inference by the same selection or by the learned threshold θ, whose EMA is
updated after each step from the statistic of archs/topk_terms.py. AuxK is added by `SAE.loss_terms`."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from vsae.archs.select import batch_topk_mask, scores, topk_mask
from vsae.archs.sparsifiers.base import Sparsifier
from vsae.archs.steps import n_steps


class TopK(Sparsifier):
    def __init__(self, per_batch: bool):
        self.per_batch = per_batch

    def declare(self, sae) -> None:
        sae.register_buffer("threshold", torch.full((sae.cfg.d_sae,), -1.0))  # θ, −1 until first set

    def mask(self, sae, site, mu, pi_gate) -> Tensor:
        score, positive = scores(site, sae.cfg.topk_mode)
        pick = batch_topk_mask if self.per_batch else topk_mask
        return pick(score, None, sae.cfg.k, positive)

    def infer(self, sae, site, values, mu, pi_gate) -> Tensor:
        cfg = sae.cfg
        wants_threshold = self.per_batch or cfg.inference == "threshold"
        if wants_threshold and bool((sae.threshold >= 0).all()):
            score, _ = scores(site, cfg.topk_mode)
            return values * (score > sae.threshold)
        if wants_threshold and self.per_batch and not sae._fallback_warned:
            warnings.warn(
                "threshold unset: inference falls back to batch top-k over this call's tokens", stacklevel=3
            )
            sae._fallback_warned = True
        return values * self.mask(sae, site, mu, pi_gate)

    def after_step(self, sae, ctx, stats) -> None:
        stat = stats.get("theta_stat")
        if stat is None or ctx.step < n_steps(sae.cfg.threshold_start_frac, ctx.total_steps):
            return
        if bool((sae.threshold < 0).any()):
            sae.threshold.fill_(float(stat))
        else:
            b = sae.threshold_decay(ctx.total_steps)
            sae.threshold.mul_(b).add_((1 - b) * torch.as_tensor(stat))
