"""The hyper-parameters of one SAE: a dataclass whose fields are cfg.json keys and CLI help."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields

from vsae.errors import VsaeError
from vsae.validation import check_types

RENAMED = {"variational": "vsae_family"}  # cfg.json keys of earlier versions


def upgrade_keys(data: dict) -> dict:
    """A cfg.json `model` block (or a resume recipe's `model.` keys) of any earlier version, in today's
    names: `variational` is `vsae_family`; JumpReLU's L0 coefficient, once `l1_coeff`, is `l0_coeff`;
    the derived `is_variational`/`samples` flags are dropped."""
    data = {RENAMED.get(k, k): v for k, v in data.items() if k not in ("is_variational", "samples")}
    if data.get("sparsifier") == "jumprelu" and "l0_coeff" not in data and "l1_coeff" in data:
        data["l0_coeff"], data["l1_coeff"] = data["l1_coeff"], 0.0
    return data


@dataclass
class SAEConfig:
    """Architecture and loss hyper-parameters (the `model` block of cfg.json); training space (docs/architectures.md)."""

    architecture: str = "topk"
    """Registry name of the architecture."""
    d_in: int = 0
    """Width D of the activations."""
    d_sae: int = 0
    """Number of latents F."""
    encoder: str = "linear"
    """Encoder path: linear (u = x̃W_enc + b_enc) or gated (gate and magnitude paths)."""
    sparsifier: str = "topk"
    """Sparsifier S: relu, topk, batchtopk, jumprelu or gate."""
    k: int = 32
    """Active latents per token for the top-k family (batchtopk: the per-token average)."""
    topk_mode: str = "value"
    """Top-k scores: value (z, only z > 0 eligible) or abs (|z|, selected values keep their sign)."""
    relu_mu: bool = True
    """Apply ReLU to the posterior mean μ (before any noise)."""
    apply_b_dec_to_input: bool = True
    """Centre the input: x̃ = x − b_dec."""
    b_dec_init: str = "zeros"
    """Initial b_dec: zeros or geometric_median of the first batch."""
    decoder_norm: str = "unit"
    """Decoder-norm policy: unit (rows kept at norm 1) or free (norm-weighted penalties)."""
    init_dec_norm: float = 1.0
    """Initial norm of every decoder row (1.0 under unit, 0.1 under free)."""
    inference: str = "topk"
    """Inference rule of the top-k family: topk (exact selection) or threshold (learned θ)."""
    sparsity_penalty: str = "l1"
    """Penalty of the relu sparsifier: l1 (λ Σ n_j|μ_j|) or lp_p (p-annealed Σ (n_j f_j)^p, panneal)."""
    resampling: bool = False
    """Dead latents may be resampled (standard and panneal, never a vsae_*)."""
    l1_coeff: float = 0.0
    """λ of the L1 penalty (relu, gate) or the initial α of panneal's Lp penalty."""
    l0_coeff: float = 0.0
    """JumpReLU: coefficient of its L0 penalty (or of the squared distance to l0_target)."""
    """λ of the L1 penalty (relu and gate sparsifiers; α₀ for panneal)."""
    aux_coeff: float = 1.0
    """α_aux of the gated models' frozen-decoder auxiliary reconstruction."""
    auxk_coeff: float = 1 / 32
    """Coefficient of the AuxK dead-latent loss (top-k family)."""
    aux_k: int = 0
    """Dead latents AuxK selects per token (0: ⌊D/2⌋)."""
    threshold_init: float = 0.001
    """JumpReLU θ₀."""
    bandwidth: float = 0.001
    """JumpReLU straight-through bandwidth h."""
    l0_mode: str = "target"
    """JumpReLU sparsity penalty: target ((L̄0/L0_target − 1)²) or plain (L̄0)."""
    l0_target: float = 32.0
    """JumpReLU target L0."""
    group_fractions: list[float] = field(default_factory=list)
    """Matryoshka group sizes as fractions of F (empty: not a matryoshka model)."""
    group_weights: list[float] = field(default_factory=list)
    """Matryoshka group-loss weights (empty: 1/G each)."""
    p_start: float = 1.0
    """panneal: initial exponent p."""
    p_end: float = 0.2
    """panneal: final exponent p."""
    anneal_start_frac: float = 0.25
    """panneal: fraction of T where p starts to move."""
    anneal_end_frac: float = 0.9
    """panneal: fraction of T where p reaches p_end."""
    n_p_updates: int = 10
    """panneal: number of p values m (≥ 2)."""
    p_queue_len: int = 10
    """panneal: penalties remembered for the α continuity rescale."""
    threshold_start_frac: float = 0.1
    """Top-k family: fraction of T after which the inference threshold θ is learned (EMA)."""
    threshold_beta: float = 0.999
    """Top-k family: upper bound on the θ EMA decay (the run caps it at 1 − 20/T)."""
    vsae_family: bool = False
    """A vsae_* model: Gaussian posterior with a KL to the prior (an L2 penalty at var_flag 0)."""
    var_flag: int = 0
    """1: learned log-variance head and sampling (a VAE); 0: deterministic SAE with an L2 penalty β/2."""
    prior: str = "iso"
    """KL prior: iso (N(0, I)), equicorr (N(0, R), R = (1−ρ)I + ρ11ᵀ) or permean."""
    corr_rate: float = 0.5
    """ρ of the equicorrelated prior."""
    prior_std: float = 1.0
    """s of the per-latent-mean prior."""
    kl_scope: str = "all"
    """Latents the KL charges: all or selected (the training active mask M; for relu, μ > 0)."""
    selection_site: str = "mean"
    """Where selection, gating and the JumpReLU step look: mean (μ, f = M(μ) ⊙ z) or sample (z, unstable)."""
    noise_budget: float = 0.04
    """δ: decoded noise power the default β aims at, as a fraction of the activations' variance."""
    noise_unit: float = 1.0
    """The variance E‖x − x̄‖² in training space that δ is measured in (derived from the store)."""
    kl_coeff: float | None = None
    """β; None resolves to 2δ/n_dec at construction."""
    log_var_init: float | None = None
    """Initial log-variance bias; None resolves to ln(β/(β+2))."""
    logvar_min: float = -20.0
    """Lower clamp of the log-variance (same in sampling and KL)."""
    logvar_max: float = 2.0
    """Upper clamp of the log-variance."""
    kl_coeff_source: str = "auto"
    """Where β came from: auto (derived from δ) or user."""
    n_dec: int = 0
    """Latents whose sample reaches the decoder per token (derived)."""

    @property
    def samples(self) -> bool:
        """var_flag = 1 in the vsae family: a learned log-variance head, and training samples the code."""
        return self.vsae_family and self.var_flag == 1

    @property
    def topk_family(self) -> bool:
        return self.sparsifier in ("topk", "batchtopk")

    @property
    def resolved_aux_k(self) -> int:
        return self.aux_k or max(1, self.d_in // 2)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["samples"] = self.samples
        return out

    @classmethod
    def from_dict(cls, data: dict) -> SAEConfig:
        data = upgrade_keys(data)
        # a cfg.json written before the site rule existed was trained with selection on the sample
        data.setdefault("selection_site", "sample")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise VsaeError(f"unknown model keys in cfg.json: {sorted(unknown)}")
        return cls(**data)


def field_help(cls) -> dict[str, str]:
    """Field name → its one-line docstring (read from the source, so help and code never drift)."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    out = {}
    for stmt, nxt in zip(body, body[1:], strict=False):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
        ):
            out[stmt.target.id] = str(nxt.value.value).strip()
    return out


def validate(cfg: SAEConfig) -> None:
    """Reject configurations the math does not define, with one line that names the bad value."""
    choices = {
        "encoder": ("linear", "gated"),
        "sparsifier": ("relu", "topk", "batchtopk", "jumprelu", "gate"),
        "topk_mode": ("value", "abs"),
        "b_dec_init": ("zeros", "geometric_median"),
        "decoder_norm": ("unit", "free"),
        "inference": ("topk", "threshold"),
        "l0_mode": ("target", "plain"),
        "prior": ("iso", "equicorr", "permean"),
        "kl_scope": ("all", "selected"),
        "sparsity_penalty": ("l1", "lp_p"),
        "selection_site": ("mean", "sample"),
    }
    check_types(cfg)
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise VsaeError(f"{name}={getattr(cfg, name)!r} is not one of {', '.join(allowed)}")
    if cfg.d_in < 1 or cfg.d_sae < 1:
        raise VsaeError(f"d_in and d_sae must be positive (got {cfg.d_in}, {cfg.d_sae})")
    if cfg.topk_family and not 1 <= cfg.k < cfg.d_sae:
        raise VsaeError(f"k={cfg.k} must be at least 1 and below the dictionary size {cfg.d_sae}")
    if cfg.topk_family and cfg.decoder_norm == "free":
        raise VsaeError(
            f"{cfg.architecture} cannot use decoder_norm=free: top-k selection breaks the rescaling symmetry (docs/architectures.md)"
        )
    if cfg.var_flag not in (0, 1):
        raise VsaeError(f"var_flag must be 0 or 1 (got {cfg.var_flag})")
    if cfg.var_flag and not cfg.vsae_family:
        raise VsaeError(f"var_flag applies to the vsae_* architectures only, not {cfg.architecture}")
    if cfg.sparsifier == "jumprelu" and cfg.l1_coeff:
        raise VsaeError(
            f"jumprelu has no L1 penalty: its L0 coefficient is l0_coeff (got l1_coeff={cfg.l1_coeff})"
        )
    for name in (
        "l1_coeff",
        "l0_coeff",
        "aux_coeff",
        "auxk_coeff",
        "noise_budget",
        "bandwidth",
        "threshold_init",
    ):
        if getattr(cfg, name) < 0:
            raise VsaeError(f"{name} must be non-negative (got {getattr(cfg, name)})")
    if cfg.kl_coeff is not None and cfg.kl_coeff < 0:
        raise VsaeError(f"kl_coeff must be non-negative (got {cfg.kl_coeff})")
    if cfg.prior == "equicorr":
        rho, f = cfg.corr_rate, cfg.d_sae
        if rho >= 1 or (f > 1 and rho <= -1 / (f - 1)):
            raise VsaeError(f"corr_rate={rho} is outside the valid range (-1/(F-1), 1) for F={f}")
        if cfg.kl_scope != "all":
            raise VsaeError("the equicorrelated prior is joint over all latents: kl_scope must be 'all'")
    if cfg.vsae_family and cfg.var_flag and cfg.log_var_init is not None:
        if not cfg.logvar_min <= cfg.log_var_init <= cfg.logvar_max:
            raise VsaeError(
                f"log_var_init={cfg.log_var_init:.4g} lies outside [{cfg.logvar_min}, {cfg.logvar_max}]"
            )
    if cfg.group_fractions:
        if abs(sum(cfg.group_fractions) - 1) > 1e-6:
            raise VsaeError(f"group_fractions must sum to 1 (got {sum(cfg.group_fractions):.6g})")
        if any(math.floor(p * cfg.d_sae) < 1 for p in cfg.group_fractions):
            raise VsaeError(f"every matryoshka group needs at least one latent at d_sae={cfg.d_sae}")
        if cfg.group_weights and len(cfg.group_weights) != len(cfg.group_fractions):
            raise VsaeError("group_weights must have one entry per group fraction")
    if cfg.sparsity_penalty == "lp_p" and cfg.sparsifier != "relu":
        raise VsaeError("sparsity_penalty=lp_p needs the relu sparsifier")
    if cfg.resampling and cfg.vsae_family:
        raise VsaeError("resampling is not defined for the vsae_* architectures (docs/architectures.md)")
    if cfg.n_p_updates < 2 or cfg.p_end <= 0:
        raise VsaeError("panneal needs n_p_updates >= 2 and p_end > 0")
