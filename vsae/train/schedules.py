"""Schedules as fractions of T (docs/architectures.md): clamped, never asserted, so 1-step runs work."""

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
        cls,
        total: int,
        lr_warmup_frac: float,
        lr_decay_frac: float,
        sparsity_frac: float,
        kl_frac: float,
        steps: dict[str, int | None] | None = None,
    ):
        """Step counts n(φ) from the fractions, or the counts in `steps` where given (clamped to T)."""
        steps = steps or {}

        def count(name: str, frac: float) -> int:
            given = steps.get(name)
            return n_steps(frac, total) if given is None else min(total, given)

        w = count("lr_warmup", lr_warmup_frac)
        return cls(
            total,
            w,
            max(w, total - count("lr_decay", lr_decay_frac)),
            count("sparsity_warmup", sparsity_frac),
            count("kl_warmup", kl_frac),
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
