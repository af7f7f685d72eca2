"""Resampling dead latents (docs/architectures.md; standard and panneal): in place, by parameter name."""

from __future__ import annotations

import logging

import torch

from vsae.archs.sae import SAE

log = logging.getLogger("vsae.train")


@torch.no_grad()
def resample_dead(
    model: SAE,
    opt: torch.optim.Optimizer,
    tau: torch.Tensor,
    t_dead: int,
    pool: torch.Tensor,
    gen: torch.Generator,
) -> int:
    """Re-initialise dead latents towards poorly reconstructed pool tokens; returns how many."""
    dead = tau >= t_dead
    if not bool(dead.any()):
        return 0
    if bool(dead.all()):
        log.warning("resampling skipped: no latent is alive (alive-latent norms would be undefined)")
        return 0
    f = model.encode(pool)
    loss = (pool - model.decode(f)).square().sum(dim=-1)
    dead_idx = dead.nonzero().squeeze(1).cpu()
    m = min(len(dead_idx), len(pool))
    order = dead_idx[torch.randperm(len(dead_idx), generator=gen)[:m]]
    probs = loss.square().cpu().double()
    if float(probs.sum()) == 0:
        probs = torch.ones_like(probs)
    tokens = torch.multinomial(probs, m, replacement=False, generator=gen)
    v = pool[tokens.to(pool.device)]
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
    alive = ~dead
    dec_scale = 1.0 if model.cfg.decoder_norm == "unit" else float(model.W_dec[alive].norm(dim=1).mean())
    enc_scale = 0.2 * float(model.W_enc[:, alive].norm(dim=0).mean())
    j = order.to(model.W_dec.device)
    model.W_dec[j] = v * dec_scale
    model.W_enc[:, j] = (v * enc_scale).T
    model.b_enc[j] = 0.0
    names = dict(model.named_parameters())
    for name, axis in model.latent_axes().items():
        param = names.get(name)
        state = opt.state.get(param) if param is not None else None
        for key in ("exp_avg", "exp_avg_sq"):
            if state and key in state:
                state[key].index_fill_(axis, j, 0.0)
    tau[j] = 0
    return m
