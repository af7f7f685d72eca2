"""JumpReLU with the straight-through estimator (rectangle kernel, bandwidth h; docs/architectures.md, Sparsifiers)."""

from __future__ import annotations

import torch


def _rect(v: torch.Tensor) -> torch.Tensor:
    return (v.abs() <= 0.5).to(v.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, site, theta, h):
        ctx.save_for_backward(z, site, theta)
        ctx.h = h
        return z * (site > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, grad):
        z, site, theta = ctx.saved_tensors
        h = ctx.h
        grad_z = grad * (site > theta).to(z.dtype)
        # the jump at site = θ has height θ + (z − site): θ for the deterministic gate, θ + σε under noise
        height = theta + (z - site)
        grad_theta = (grad * -(height / h) * _rect((site - theta) / h)).reshape(-1, z.shape[-1]).sum(0)
        return grad_z, None, grad_theta, None


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


def jumprelu(
    z: torch.Tensor, theta: torch.Tensor, h: float, site: torch.Tensor | None = None
) -> torch.Tensor:
    """f = z ⊙ H(s − θ) with the gate decided on the site s (default z itself: the plain JumpReLU).

    ∂f/∂z = H(s − θ); ∂f/∂θ = −((θ + z − s)/h) rect((s − θ)/h), the jump height at s = θ (θ/h when
    z is s); s itself gets no gradient through the gate, as u gets none through the jump of a JumpReLU."""
    return _JumpReLU.apply(z, z if site is None else site, theta, h)


def step(u: torch.Tensor, theta: torch.Tensor, h: float) -> torch.Tensor:
    """H(u − θ) with ∂/∂θ = −(1/h) rect((u − θ)/h) and no gradient to u (the L0 count)."""
    return _Step.apply(u, theta, h)
