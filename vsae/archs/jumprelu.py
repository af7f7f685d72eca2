"""JumpReLU with the straight-through estimator of spec §5.6 (rectangle kernel, bandwidth h)."""

from __future__ import annotations

import torch


def _rect(v: torch.Tensor) -> torch.Tensor:
    return (v.abs() <= 0.5).to(v.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, theta, h):
        ctx.save_for_backward(u, theta)
        ctx.h = h
        return u * (u > theta).to(u.dtype)

    @staticmethod
    def backward(ctx, grad):
        u, theta = ctx.saved_tensors
        h = ctx.h
        grad_u = grad * (u > theta).to(u.dtype)
        grad_theta = (grad * -(theta / h) * _rect((u - theta) / h)).reshape(-1, u.shape[-1]).sum(0)
        return grad_u, grad_theta, None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, theta, h):
        ctx.save_for_backward(u, theta)
        ctx.h = h
        return (u > theta).to(u.dtype)

    @staticmethod
    def backward(ctx, grad):
        u, theta = ctx.saved_tensors
        h = ctx.h
        grad_theta = (grad * -(1.0 / h) * _rect((u - theta) / h)).reshape(-1, u.shape[-1]).sum(0)
        return torch.zeros_like(u), grad_theta, None


def jumprelu(u: torch.Tensor, theta: torch.Tensor, h: float) -> torch.Tensor:
    """f = u ⊙ H(u − θ); ∂f/∂u = H(u − θ), ∂f/∂θ = −(θ/h) rect((u − θ)/h)."""
    return _JumpReLU.apply(u, theta, h)


def step(u: torch.Tensor, theta: torch.Tensor, h: float) -> torch.Tensor:
    """H(u − θ) with ∂/∂θ = −(1/h) rect((u − θ)/h) and no gradient to u (the L0 count)."""
    return _Step.apply(u, theta, h)
