"""Exact reparameterisations for export (docs/architectures.md): folding decoder norms into unit rows, and
sign-splitting a signed code into 2F non-negative latents."""

from __future__ import annotations

import copy
import dataclasses

import torch

from vsae.archs.sae import SAE
from vsae.errors import VsaeError


def uses_selection(model: SAE) -> bool:
    """Top-k / batch-top-k *selection* at inference (not the threshold rule)."""
    cfg = model.cfg
    if not cfg.topk_family:
        return False
    threshold_rule = (cfg.sparsifier == "batchtopk" or cfg.inference == "threshold") and bool(
        (model.threshold >= 0).all()
    )
    return not threshold_rule


@torch.no_grad()
def fold_to_unit(model: SAE) -> SAE:
    """A copy with unit decoder rows and identical reconstructions; codes become n_j f_j."""
    norms = model.W_dec.norm(dim=1)
    small = (norms <= 1e-8).nonzero().flatten().tolist()
    if small:
        raise VsaeError(f"cannot fold: latents {small[:8]} have zero decoder norm")
    if uses_selection(model) and float(norms.max() / norms.min()) > 1 + 1e-6:
        raise VsaeError(
            "cannot fold a top-k selection model with non-uniform decoder norms: ranking would change"
        )
    return rescale_latents(model, norms)


@torch.no_grad()
def rescale_latents(model: SAE, scale: torch.Tensor) -> SAE:
    """A copy with latent j rescaled by scale_j through each tensor's fold rule: codes × scale,
    decoder rows ÷ scale, log-variances + 2 ln scale. Folding is this with scale = decoder norms."""
    out = copy.deepcopy(model)
    ops = {
        "same": lambda t: t,
        "col_mul": lambda t: t * scale,
        "mul": lambda t: t * scale,
        "row_div": lambda t: t / scale[:, None],
        "log": lambda t: t + 2 * torch.log(scale),
    }
    for name, (_, fold_rule) in model.tensor_rules().items():
        getattr(out, name).copy_(ops[fold_rule](getattr(model, name)))
    return out


def needs_sign_split(model: SAE) -> bool:
    cfg = model.cfg
    return (
        cfg.encoder == "linear"
        and (cfg.topk_mode == "abs" if cfg.topk_family else not cfg.relu_mu)
        and cfg.sparsifier in ("relu", "topk", "batchtopk")
    )


@torch.no_grad()
def sign_split(model: SAE) -> SAE:
    """A value-mode model over 2F latents, copies (u, −u), whose reconstruction equals the signed model's."""
    cfg = model.cfg
    new_cfg = dataclasses.replace(
        cfg,
        d_sae=2 * cfg.d_sae,
        topk_mode="value",
        relu_mu=True,
        var_flag=0,
        vsae_family=False,
        group_fractions=[],
        kl_coeff=None,
        log_var_init=None,
    )
    out = SAE(new_cfg)
    out.W_enc.copy_(torch.cat([model.W_enc, -model.W_enc], dim=1))
    out.b_enc.copy_(torch.cat([model.b_enc, -model.b_enc]))
    out.W_dec.copy_(torch.cat([model.W_dec, -model.W_dec]))
    out.b_dec.copy_(model.b_dec)
    if cfg.topk_family:
        out.threshold.copy_(torch.cat([model.threshold, model.threshold]))
    out.space = model.space
    return out
