"""Options of `vsae train` shared by every SAE of a sweep (each field's docstring is its CLI help)."""

from __future__ import annotations

from dataclasses import dataclass, field

from vsae.errors import VsaeError
from vsae.validation import check_types


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
    lr_warmup_steps: int | None = None
    """LR warm-up in steps (replaces lr_warmup_frac; recipes from the peers count steps)."""
    lr_decay_steps: int | None = None
    """Final steps of linear LR decay (replaces lr_decay_frac)."""
    sparsity_warmup_steps: int | None = None
    """Steps over which sparsity penalties ramp up (replaces sparsity_warmup_frac)."""
    kl_warmup_steps: int | None = None
    """Steps over which the KL term ramps up (replaces kl_warmup_frac)."""
    normalization: str = "expected_norm"
    """Training space: expected_norm (x / c, c = sqrt(E‖x‖²)) or none (raw activations, c = 1)."""
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

    def validate(self) -> None:
        """One line naming the first bad option (types, ranges, device), before anything is written."""
        check_types(self)
        if self.lr is not None and self.lr <= 0:
            raise VsaeError(f"--lr must be positive (got {self.lr})")
        if self.betas is not None and (len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas)):
            raise VsaeError(f"betas must be two numbers in [0, 1) (got {self.betas})")
        if self.eps <= 0:
            raise VsaeError(f"eps must be positive (got {self.eps})")
        if self.grad_clip_norm is not None and self.grad_clip_norm <= 0:
            raise VsaeError(
                f"--grad-clip-norm must be positive, or none to disable clipping (got {self.grad_clip_norm})"
            )
        fracs = ["lr_warmup_frac", "lr_decay_frac", "sparsity_warmup_frac", "kl_warmup_frac"]
        for name in fracs:
            if not 0 <= getattr(self, name) <= 1:
                raise VsaeError(f"{name} must lie in [0, 1] (got {getattr(self, name)})")
        for name in ("lr_warmup_steps", "lr_decay_steps", "sparsity_warmup_steps", "kl_warmup_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise VsaeError(f"--{name.replace('_', '-')} must be 0 or more (got {getattr(self, name)})")
        if self.normalization not in ("expected_norm", "none"):
            raise VsaeError(f"--normalization must be expected_norm or none (got {self.normalization!r})")
        if any(not 0 <= f <= 1 for f in self.resample_at_fracs):
            raise VsaeError(f"--resample-at fractions must lie in [0, 1] (got {self.resample_at_fracs})")
        positive = ["batch_size", "log_every", "buffer_chunks", "dead_after_tokens", "resample_pool_tokens"]
        for name in positive + [n for n in ("steps", "tokens") if getattr(self, n) is not None]:
            if getattr(self, name) < 1:
                raise VsaeError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if self.save_every < 0:
            raise VsaeError(f"--save-every must be 0 (off) or positive (got {self.save_every})")
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise VsaeError(f"--compute-dtype must be float32 or bfloat16 (got {self.compute_dtype!r})")
        _check_device(self.device)

    def schedule_counts(self) -> dict[str, int | None]:
        """Step-count forms given in place of fractions (None: use the fraction)."""
        names = ("lr_warmup", "lr_decay", "sparsity_warmup", "kl_warmup")
        return {n: getattr(self, f"{n}_steps") for n in names}


def clip_norm(value) -> float | None:
    """--grad-clip-norm / sweep grad_clip_norm: a positive number, or none (clipping off)."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise VsaeError(f"--grad-clip-norm takes a positive number or none (got {value!r})") from exc


def _check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise VsaeError(f"--device {device!r} is not a device (cpu, cuda, cuda:1, mps)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise VsaeError(f"--device {device}: no CUDA device is available here; use --device cpu")
