"""Reconstruction metrics shared by training logs and held-out evaluation (docs/architectures.md)."""

from __future__ import annotations

import torch


class Accumulator:
    """fp64 running sums over batches, so held-out numbers do not depend on the batch size."""

    def __init__(self):
        self.n = 0
        self.sums: dict[str, float] = {}

    def add(self, name: str, value: torch.Tensor | float) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + float(value)

    def update(self, x: torch.Tensor, x_hat: torch.Tensor, f: torch.Tensor) -> None:
        x, x_hat = x.double(), x_hat.double()
        self.n += x.shape[0]
        self.add("sq_err", (x - x_hat).square().sum())
        self.sums.setdefault("x_sum_vec", torch.zeros(x.shape[1], dtype=torch.float64))
        self.sums["x_sum_vec"] = self.sums["x_sum_vec"] + x.sum(0)
        self.add("x_sq", x.square().sum())
        self.add("xhat_sq", x_hat.square().sum())
        self.add("x_dot_xhat", (x * x_hat).sum())
        self.add("cos", (torch.nn.functional.cosine_similarity(x, x_hat, dim=-1, eps=1e-12)).sum())
        self.add("l0", (f != 0).sum())
        self.add("l1", f.abs().double().sum())

    def result(self) -> dict:
        n, s = self.n, self.sums
        mean = s["x_sum_vec"] / n
        total_var = s["x_sq"] - n * float(mean.square().sum())
        return {
            "mse": s["sq_err"] / n,
            "fve": 1 - s["sq_err"] / total_var,
            "l0": s["l0"] / n,
            "l1": s["l1"] / n,
            "cos_sim": s["cos"] / n,
            "rel_recon_bias": s["xhat_sq"] / s["x_dot_xhat"],
        }


def fve(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """1 − Σ‖x − x̂‖² / Σ‖x − x̄‖² (penalises a constant bias, unlike a residual-variance form)."""
    x, x_hat = x.double(), x_hat.double()
    return float(1 - (x - x_hat).square().sum() / (x - x.mean(0)).square().sum())
