"""ReLU: f = z with μ = ReLU(u); an L1 penalty on the decoder-norm-weighted mean, or panneal's annealed Lp."""

from __future__ import annotations

from torch import Tensor

from vsae.archs.sparsifiers.base import Sparsifier


class ReLU(Sparsifier):
    def mask(self, sae, site, mu, pi_gate) -> Tensor:
        return mu > 0  # whatever the site: the ReLU is on μ

    def train_code(self, sae, z, site, mask) -> Tensor:
        return z  # the dense code (the encoder's ReLU already shaped μ)

    def support(self, sae, f, mask) -> Tensor:
        if sae.cfg.relu_mu and not sae.cfg.samples:
            return mask  # f = μ = ReLU(u): non-zero exactly where μ > 0
        return f.detach() != 0  # with noise, M = μ > 0 is not f's support

    def infer(self, sae, site, values, mu, pi_gate) -> Tensor:
        return values

    def deterministic(self, mu, mask) -> Tensor:
        return mu

    def penalty(self, sae, x, site, mu, pi_gate, norms, ctx, terms, raw) -> None:
        p_state = sae.p_state
        if p_state is not None:  # panneal: Lp with annealed p and α
            if p_state.total is None:
                p_state.start(ctx.total_steps)
            lp = p_state.penalty(mu, norms, p_state.p)
            raw["lp"] = lp.detach()
            terms["lp"] = p_state.alpha * ctx.sparsity_scale * lp
            return
        weighted = mu if sae.cfg.relu_mu else mu.abs()  # μ ≥ 0 after the ReLU: |μ| = μ, one pass fewer
        if sae.cfg.decoder_norm == "free":
            weighted = norms * weighted
        l1 = weighted.sum(dim=-1).mean()
        raw["l1"] = l1.detach()
        terms["l1"] = sae.cfg.l1_coeff * ctx.sparsity_scale * l1

    def after_step(self, sae, ctx, stats) -> None:
        if sae.p_state is not None:
            sae.p_state.after_step(ctx, stats.get("p_pair"))
