"""The architecture registry: a name → config overrides on SAEConfig and training defaults (docs/architectures.md).

Adding an architecture is one entry here (plus a module only if it needs a new piece of math);
`vsae_X` entries are derived from `X` by the construction rule of docs/architectures.md (The registry).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from vsae.archs.config import SAEConfig, validate
from vsae.errors import VsaeError


def _topk_lr(d_sae: int) -> float:
    return 2e-4 / math.sqrt(d_sae / 2**14)


@dataclass(frozen=True)
class ArchSpec:
    """One registry entry."""

    name: str
    summary: str
    model: dict
    train: dict = field(default_factory=dict)
    lr: object = None  # a number, a function of d_sae, or None to inherit (root default 5e-5)
    base: str | None = None
    n_dec: str | None = None  # vsae_*: "F", "k", "l0_target" or "32"


# Calibration (bench/RESULTS.md): on SmolLM2-135M layer 3 at F = 4608, λ = 0.16 gives L0 ≈ 30
# for standard and vsae_iso at lr 5e-5 over 2.4M tokens (0.04, the provisional value, gives L0 ≈ 200); gated
# and vsae_gated λ = 0.15 give held-out L0 34 at lr 5e-4 over 1M tokens ("The L1 and JumpReLU families at
# 1M tokens"; the provisional 0.04 gave ≈ 280), and panneal's α₀ = 0.04 gives L0 36 in the same regime (the
# provisional 0.015 gave ≈ 345). standard_april at its own lr 5e-5 over the same 1M tokens: λ = 2.5 gives
# held-out L0 34 (2 → 54, 3 → 22; at lr 5e-4 most of its latents die). Its L1 is weighted by decoder norms that
# start at 0.1 and barely move in such a run, hence the large λ; it reconstructs poorly in that budget (FVE
# < 0) and is meant for long runs, where the recipe value 5/√D (0.21 at D = 576) applies ("standard_april at
# its own learning rate").
CALIBRATED_L1 = 0.15
CALIBRATED_APRIL_L1 = 2.5
CALIBRATED_GATED_L1 = 0.15
CALIBRATED_PANNEAL_ALPHA = 0.04
_TOPK = {"sparsifier": "topk", "b_dec_init": "geometric_median"}
_BATCH = {"sparsifier": "batchtopk", "b_dec_init": "geometric_median", "inference": "threshold"}
_SPECS = [
    ArchSpec(
        "standard",
        "ReLU SAE with L1, unit decoder (Bricken et al. 2023)",
        {"sparsifier": "relu", "l1_coeff": CALIBRATED_L1, "resampling": True},
    ),
    ArchSpec(
        "standard_april",
        "Anthropic April 2024: free decoder, norm-weighted L1, no input centring",
        {
            "sparsifier": "relu",
            "l1_coeff": CALIBRATED_APRIL_L1,
            "apply_b_dec_to_input": False,
            "decoder_norm": "free",
            "init_dec_norm": 0.1,
        },
    ),
    ArchSpec(
        "gated",
        "Gated SAE (Rajamanoharan et al. 2024a)",
        {"encoder": "gated", "sparsifier": "gate", "l1_coeff": CALIBRATED_GATED_L1, "aux_coeff": 1.0},
        {"betas": (0.0, 0.999)},
    ),
    ArchSpec("topk", "TopK SAE with AuxK (Gao et al. 2024)", _TOPK, lr=_topk_lr),
    ArchSpec("batchtopk", "BatchTopK SAE, threshold inference (Bussmann et al. 2024)", _BATCH, lr=_topk_lr),
    ArchSpec(
        "jumprelu",
        "JumpReLU SAE with an L0 target (Rajamanoharan et al. 2024b)",
        {"sparsifier": "jumprelu", "apply_b_dec_to_input": False, "l0_coeff": 1.0, "relu_mu": False},
        {"betas": (0.0, 0.999)},
        lr=7e-5,
    ),
    ArchSpec(
        "matryoshka",
        "Matryoshka BatchTopK (Bussmann et al. 2025)",
        _BATCH | {"group_fractions": [1 / 16, 1 / 16, 1 / 8, 1 / 4, 1 / 2]},
        lr=_topk_lr,
    ),
    ArchSpec(
        "panneal",
        "ReLU SAE with p-annealing of an Lp penalty (Karvonen et al. 2024)",
        {
            "sparsifier": "relu",
            "l1_coeff": CALIBRATED_PANNEAL_ALPHA,
            "sparsity_penalty": "lp_p",
            "resampling": True,
        },
    ),
    ArchSpec("vsae_iso", "VSAE, isotropic prior, sparse ReLU mean + L1", {}, base="standard", n_dec="F"),
    ArchSpec(
        "vsae_topk",
        "VSAE, top-k on |μ| with the noise on the selected entries (signed codes)",
        {"topk_mode": "abs", "relu_mu": False, "kl_scope": "selected"},
        base="topk",
        n_dec="k",
    ),
    ArchSpec(
        "vsae_gated",
        "VSAE, Gated with a Gaussian magnitude",
        {"kl_scope": "selected"},
        base="gated",
        n_dec="32",
    ),
    ArchSpec(
        "vsae_jumprelu",
        "VSAE, JumpReLU gate on μ with the noise on the open entries",
        {"relu_mu": False, "kl_scope": "selected"},
        base="jumprelu",
        n_dec="l0_target",
    ),
    ArchSpec(
        "vsae_multi",
        "VSAE, equicorrelated prior (closed form, O(F))",
        {"prior": "equicorr"},
        base="vsae_iso",
        n_dec="F",
    ),
    # Value mode, unlike vsae_topk: abs-mode batch top-k starts far slower (SmolLM2 layer 3, F = 4608: training
    # FVE −0.02 after 50 steps and 0.67 after 150, against 0.64 and 0.86 in value mode; bench/RESULTS.md).
    ArchSpec(
        "vsae_batchtopk",
        "VSAE, batch top-k on μ with the noise on the selected entries",
        {"kl_scope": "selected"},
        base="batchtopk",
        n_dec="k",
    ),
]
ARCHS: dict[str, ArchSpec] = {s.name: s for s in _SPECS}


def _chain(name: str) -> list[ArchSpec]:
    spec = ARCHS[name]
    return (_chain(spec.base) if spec.base else []) + [spec]


def check_arch(name: str) -> ArchSpec:
    if name not in ARCHS:
        raise VsaeError(f"unknown architecture {name!r}; valid: {', '.join(ARCHS)}")
    return ARCHS[name]


def model_defaults(name: str) -> dict:
    """The SAEConfig overrides of `name`, inherited along its base chain (vsae_X from X)."""
    out: dict = {}
    for spec in _chain(name):
        out |= spec.model
    if any(s.n_dec for s in _chain(name)):
        out["vsae_family"] = True
        out["resampling"] = False  # never inherited by vsae_X
        out.setdefault("var_flag", 1)
    return out


def train_defaults(name: str, d_sae: int) -> dict:
    """Training-config overrides (lr, betas) of `name` for a dictionary of d_sae latents."""
    out: dict = {"lr": 5e-5}
    for spec in _chain(name):
        out |= spec.train
        if spec.lr is not None:
            out["lr"] = spec.lr(d_sae) if callable(spec.lr) else spec.lr
    return out


DERIVED_KEYS = ("architecture", "d_in", "d_sae", "n_dec", "kl_coeff_source", "noise_unit", "vsae_family")


def settable_keys() -> list[str]:
    """The SAEConfig fields a user may set (--set, sweep files): all but those the registry derives."""
    return [f.name for f in dataclasses.fields(SAEConfig) if f.name not in DERIVED_KEYS]


def build_config(
    name: str, d_in: int, d_sae: int, overrides: dict | None = None, noise_unit: float = 1.0
) -> SAEConfig:
    """Registry defaults + user overrides, with the VSAE scale (β, log_var_init) resolved for a store
    whose training-space variance is `noise_unit` (1.0 = E‖x‖², the value without a store)."""
    check_arch(name)
    overrides = dict(overrides or {})
    valid = set(settable_keys())
    unknown = set(overrides) - valid
    if unknown:
        raise VsaeError(f"unknown hyper-parameter(s) {sorted(unknown)}; valid: {', '.join(sorted(valid))}")
    values = model_defaults(name) | overrides
    if values.get("decoder_norm") == "free" and "init_dec_norm" not in overrides:
        values["init_dec_norm"] = 0.1
    if overrides.get("var_flag") and not values.get("vsae_family"):
        raise VsaeError(f"var_flag applies to the vsae_* architectures only, not {name}")
    cfg = SAEConfig(architecture=name, d_in=d_in, d_sae=d_sae, noise_unit=noise_unit, **values)
    if cfg.vsae_family:
        _resolve_vsae_scale(cfg, name)
    validate(cfg)
    return cfg


def _resolve_vsae_scale(cfg: SAEConfig, name: str) -> None:
    """β = 2δv/n_dec (v = noise_unit) and log_var_init = ln(β/(β+2)) unless given.

    At the σ optimum each decoded latent adds ≈ β/2 of noise power, so n_dec of them add ≈ δv: the sampled
    code's FVE sits ≈ δ below the mean code's whatever the activations' mean (measured: with δ in units of
    E‖x‖², SmolLM2's large mean made a 0.05 budget cost 0.077 FVE)."""
    rule = next(s.n_dec for s in reversed(_chain(name)) if s.n_dec)
    cfg.n_dec = {"F": cfg.d_sae, "k": cfg.k, "l0_target": int(cfg.l0_target), "32": 32}[rule]
    if cfg.kl_coeff is None:
        cfg.kl_coeff = 2 * cfg.noise_budget * cfg.noise_unit / cfg.n_dec
        cfg.kl_coeff_source = "auto"
    else:
        cfg.kl_coeff_source = "user"
    if cfg.log_var_init is None and cfg.kl_coeff > 0:
        cfg.log_var_init = math.log(cfg.kl_coeff / (cfg.kl_coeff + 2))
    elif cfg.log_var_init is None:
        cfg.log_var_init = cfg.logvar_min


def predicted_noise_power(cfg: SAEConfig) -> float:
    b = cfg.kl_coeff or 0.0
    return cfg.n_dec * b / (b + 2)
