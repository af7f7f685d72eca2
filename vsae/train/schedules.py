"""Schedules as fractions of T (spec §3.3): clamped, never asserted, so 1-step runs work."""

from __future__ import annotations

from dataclasses import dataclass

from vsae.archs.steps import n_steps


@dataclass(frozen=True)
class Schedule:
    """LR, sparsity and KL multipliers derived once from T."""

    total: int
    warmup: int  # W
    decay_start: int  # t_decay
    sparsity_warmup: int  # S_s
    kl_warmup: int  # S_k

    @classmethod
    def derive(
        cls, total: int, lr_warmup_frac: float, lr_decay_frac: float, sparsity_frac: float, kl_frac: float
    ):
        w = n_steps(lr_warmup_frac, total)
        return cls(
            total,
            w,
            max(w, total - n_steps(lr_decay_frac, total)),
            n_steps(sparsity_frac, total),
            n_steps(kl_frac, total),
        )

    def lr(self, t: int) -> float:
        warm = min(1.0, (t + 1) / self.warmup) if self.warmup > 0 else 1.0
        decay = 1.0 if t < self.decay_start else (self.total - t) / (self.total - self.decay_start)
        return warm * decay

    def sparsity(self, t: int) -> float:
        return min(1.0, (t + 1) / self.sparsity_warmup) if self.sparsity_warmup > 0 else 1.0

    def kl(self, t: int) -> float:
        return min(1.0, (t + 1) / self.kl_warmup) if self.kl_warmup > 0 else 1.0

    def as_dict(self) -> dict:
        return {
            "W": self.warmup,
            "t_decay": self.decay_start,
            "S_s": self.sparsity_warmup,
            "S_k": self.kl_warmup,
        }
