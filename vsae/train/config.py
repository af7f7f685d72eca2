"""Options of `vsae train` shared by every SAE of a sweep (each field's docstring is its CLI help)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainConfig:
    """Optimiser, schedules and data options (the `training` block of cfg.json)."""

    lr: float | None = None
    """Base learning rate (default: the architecture's, e.g. topk 2e-4/sqrt(F/2^14))."""
    betas: tuple[float, float] | None = None
    """Adam betas (default: the architecture's)."""
    eps: float = 1e-8
    """Adam epsilon."""
    grad_clip_norm: float | None = 1.0
    """Clip the global gradient norm (None disables)."""
    lr_warmup_frac: float = 0.02
    """Fraction of steps of linear LR warm-up."""
    lr_decay_frac: float = 0.2
    """Final fraction of steps with linear LR decay to zero."""
    sparsity_warmup_frac: float = 0.05
    """Fraction of steps over which sparsity penalties ramp up."""
    kl_warmup_frac: float = 0.1
    """Fraction of steps over which the KL term ramps up."""
    dead_after_tokens: int = 10_000_000
    """A latent is dead after this many tokens without firing (capped at 10% of the run)."""
    resample_at_fracs: list[float] = field(default_factory=list)
    """Fractions of T at which dead latents are resampled (standard, panneal; empty: off)."""
    resample_pool_tokens: int = 262_144
    """Training tokens drawn to choose resampling directions."""
    batch_size: int = 4096
    """Tokens per step."""
    steps: int | None = None
    """Training steps T (default: one pass over the training split)."""
    tokens: int | None = None
    """Training tokens (alternative to --steps)."""
    seed: int = 0
    """Seed of initialisation, noise and data order."""
    log_every: int = 25
    """Steps between metrics.jsonl records."""
    save_every: int = 0
    """Steps between intermediate checkpoints (0: only at the end)."""
    device: str = "cpu"
    """Device to train on (cpu, cuda, cuda:1, ...)."""
    compute_dtype: str = "float32"
    """float32, or bfloat16 autocast inside the matmuls (parameters and Adam stay fp32; selection scores fp32)."""
    buffer_chunks: int = 8
    """Store chunks mixed together when shuffling tokens."""
    extra: dict = field(default_factory=dict)
    """Architecture-specific training defaults resolved per SAE (lr, betas)."""
