"""`vsae eval --compare A/ B/`: two arms of checkpoints that differ in one setting across seeds, compared
per metric with a bootstrap confidence interval of the difference of means and a seed-permutation test."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np

from vsae.errors import VsaeError

METRICS = (
    "fve",
    "l0",
    "mse",
    "frac_alive",
    "cos_sim",
    "ce_loss_recovered",
    "fve_sample",
    "true_atom_recovery",
)


def check_arms(a: list[Path], b: list[Path], archs: dict[Path, str]) -> None:
    """Each arm holds at least two checkpoints of one architecture."""
    for name, arm in (("A", a), ("B", b)):
        if len(arm) < 2:
            raise VsaeError(
                f"--compare arm {name} holds {len(arm)} checkpoint(s); give at least 2 seeds per arm"
            )
        kinds = sorted({archs[p] for p in arm})
        if len(kinds) > 1:
            raise VsaeError(f"--compare arm {name} mixes architectures ({', '.join(kinds)}); one per arm")


def permutation_p(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, draws: int = 20_000) -> float:
    """Two-sided p of |mean(y) − mean(x)| under random relabelling of the seeds (exact when few)."""
    pooled = np.concatenate([x, y])
    observed = abs(y.mean() - x.mean())
    n = len(pooled)
    if math.comb(n, len(x)) <= draws:
        splits = [np.array(c) for c in itertools.combinations(range(n), len(x))]
    else:
        splits = [rng.permutation(n)[: len(x)] for _ in range(draws)]
    count = 0
    for idx in splits:
        mask = np.zeros(n, dtype=bool)
        mask[idx] = True
        count += abs(pooled[~mask].mean() - pooled[mask].mean()) >= observed - 1e-12
    return count / len(splits)


def bootstrap_ci(
    x: np.ndarray, y: np.ndarray, rng: np.random.Generator, draws: int = 10_000
) -> tuple[float, float]:
    """95 % percentile interval of mean(y) − mean(x), resampling seeds within each arm."""
    diffs = rng.choice(y, (draws, len(y))).mean(1) - rng.choice(x, (draws, len(x))).mean(1)
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return float(lo), float(hi)


def compare(results_a: list[dict], results_b: list[dict], seed: int = 0) -> list[dict]:
    """One row per metric both arms report: means, difference, interval, p and a plain verdict."""
    rng = np.random.default_rng(seed)
    rows = []
    for metric in METRICS:
        if not all(metric in r for r in results_a + results_b):
            continue
        x = np.array([r[metric] for r in results_a], dtype=float)
        y = np.array([r[metric] for r in results_b], dtype=float)
        diff = float(y.mean() - x.mean())
        lo, hi = bootstrap_ci(x, y, rng)
        p = permutation_p(x, y, rng)
        rows.append(
            {
                "metric": metric,
                "mean_a": float(x.mean()),
                "mean_b": float(y.mean()),
                "difference": diff,
                "ci95": [lo, hi],
                "p": p,
                "seeds": [len(x), len(y)],
                "verdict": verdict(metric, diff, lo, hi, p, len(x), len(y), x, y),
            }
        )
    return rows


def verdict(metric, diff, lo, hi, p, n_a, n_b, x, y) -> str:
    """ "B's fve is higher by 0.012 (95 % CI 0.008–0.016), p = 0.03, 4 seeds each" or how many seeds it would take."""
    seeds = f"{n_a} seeds each" if n_a == n_b else f"{n_a} and {n_b} seeds"
    floor = 2 / math.comb(n_a + n_b, n_a)  # the smallest two-sided p these arms can give
    if p <= 0.05 and (lo > 0 or hi < 0):
        way = "higher" if diff > 0 else "lower"
        return f"B's {metric} is {way} by {abs(diff):.4g} (95% CI {lo:.4g} to {hi:.4g}), p = {p:.3g}, {seeds}"
    spread = float(np.sqrt((x.var(ddof=1) + y.var(ddof=1)) / 2)) if n_a > 1 and n_b > 1 else float("nan")
    if abs(diff) > 0 and math.isfinite(spread) and spread > 0:
        # seeds per arm for a two-sided 5 % test with 80 % power on a difference this size (normal approx.)
        need = math.ceil(2 * ((1.96 + 0.84) * spread / abs(diff)) ** 2)
        more = f"; about {max(need, 2)} seeds per arm would be needed to detect {abs(diff):.3g}"
    else:
        more = ""
    low = f" (with {seeds} p cannot go below {floor:.3g})" if floor > 0.05 else ""
    return f"no detectable difference in {metric} with {seeds}{low}{more}"
