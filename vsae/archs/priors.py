"""Per-token KL divergences (docs/architectures.md, The variational part) in the expm1 form (no cancellation, never clamped).

Inputs are unit-equivalent: mu_t = n_j μ_j and ell_t = ℓ_j + 2 ln n_j (ell_t None for var_flag = 0).
Each function returns the per-token KL [N]; the loss takes the mean over tokens.
"""

from __future__ import annotations

import math

import torch


def _logvar_part(y: torch.Tensor) -> torch.Tensor:
    return torch.expm1(y) - y


def kl_iso(mu_t: torch.Tensor, ell_t: torch.Tensor | None, scope: torch.Tensor | None) -> torch.Tensor:
    """N(0, I): ½ Σ_j (μ̃² + expm1(ℓ̃) − ℓ̃); var_flag = 0: ½ Σ_j μ̃²."""
    per = mu_t.square()
    if ell_t is not None:
        per = per + _logvar_part(ell_t)
    if scope is not None:
        per = per * scope.to(per.dtype)
    return 0.5 * per.sum(dim=-1)


def equicorr_constants(f: int, rho: float) -> dict[str, float]:
    """γ, κ and the fp64 constants C (var_flag 1) and C₀ (var_flag 0) of the equicorrelated prior."""
    if f == 1:
        return {"gamma": 0.0, "log_kappa": 0.0, "kappa_m1": 0.0, "C": 0.0, "C0": 0.0, "one_m_rho": 1.0}
    gamma = rho / (1 + (f - 1) * rho)
    kappa_m1 = (f - 1) * rho * rho / ((1 - rho) * (1 + (f - 1) * rho))
    log_kappa = math.log1p(kappa_m1)
    logdet = (f - 1) * math.log1p(-rho) + math.log1p((f - 1) * rho)
    return {
        "gamma": gamma,
        "log_kappa": log_kappa,
        "kappa_m1": kappa_m1,
        "C": f * log_kappa + logdet,
        "C0": f * kappa_m1 + logdet,
        "one_m_rho": 1 - rho,
    }


def kl_equicorr(mu_t: torch.Tensor, ell_t: torch.Tensor | None, rho: float) -> torch.Tensor:
    """N(0, R), R = (1−ρ)I + ρ11ᵀ, via Sherman–Morrison in O(F) per token (no F×F matrix)."""
    c = equicorr_constants(mu_t.shape[-1], rho)
    a = mu_t.sum(dim=-1)
    b = mu_t.square().sum(dim=-1)
    quad = (b - c["gamma"] * a.square()) / c["one_m_rho"]
    if ell_t is None:
        return 0.5 * (quad + c["C0"])
    var_part = _logvar_part(ell_t + c["log_kappa"]).sum(dim=-1)
    return 0.5 * (quad + var_part + c["C"])


def kl_permean(
    mu_t: torch.Tensor,
    ell_t: torch.Tensor | None,
    prior_mean: torch.Tensor,
    s: float,
    scope: torch.Tensor | None,
) -> torch.Tensor:
    """N(m_j, s²) per latent; with m = 0, s = 1 it equals kl_iso."""
    log_s2 = 2 * math.log(s)
    per = (mu_t - prior_mean).square() / (s * s)
    if ell_t is None:
        per = per + (1 / (s * s) - 1 + log_s2)
    else:
        per = per + _logvar_part(ell_t - log_s2)
    if scope is not None:
        per = per * scope.to(per.dtype)
    return 0.5 * per.sum(dim=-1)
