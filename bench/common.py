"""Shared helpers for the hand-run benchmarks: timing and the machine line recorded in RESULTS.md."""

from __future__ import annotations

import platform
import time

import torch


def machine() -> str:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, {device}"


def best_of(fn, repeat: int = 3, warmup: int = 1) -> float:
    """Best wall time of `repeat` calls after `warmup` calls (synchronising CUDA)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return min(times)


def loss_step_time(
    arch: str, d_in: int, d_sae: int, batch: int, device: str, overrides: dict | None = None
) -> float:
    """Best time of one loss_terms forward + backward of a fresh `arch` SAE on random data."""
    from vsae.archs.registry import build_config
    from vsae.archs.sae import SAE, StepContext
    from vsae.archs.steps import make_generator

    model = SAE(build_config(arch, d_in, d_sae, overrides or {})).to(device)
    x = torch.randn(batch, d_in, device=device)
    dead = torch.zeros(d_sae, dtype=torch.bool, device=device)
    ctx = StepContext(step=5, total_steps=100, dead=dead, generator=make_generator(0, 1, device=device))

    def run():
        model.zero_grad(set_to_none=True)
        model.loss_terms(x, ctx).loss.backward()

    return best_of(run)
