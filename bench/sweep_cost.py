"""Sweep efficiency: N SAEs from one pass over the data against the sum of their own step time plus one
data pass (issue #13: ≤ 1.1×). topk F = 4608 with k = 24, 28, 32, ... (distinct runs), through the CLI.

    python bench/sweep_cost.py --store <store> [--steps 20] [--sizes 1,4,8]

Own step time per SAE comes from the summary table `vsae train` prints (own tok/s); the data pass (reading,
shuffling, normalising the batches) is the 1-SAE run's wall time minus its SAE's own time.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine


def run(store: str, n: int, steps: int, batch: int) -> tuple[float, float]:
    """(wall seconds, Σ own seconds) of one `vsae train` with n SAEs."""
    with tempfile.TemporaryDirectory() as tmp:
        sweep = Path(tmp) / "sweep.toml"
        sweep.write_text(
            f"[train]\nsteps = {steps}\nbatch_size = {batch}\nlog_every = {steps}\n"
            + "".join(f'[[sae]]\narch = "topk"\nd_sae = 4608\nk = {24 + 4 * i}\n' for i in range(n))
        )
        exe = Path(sys.executable).with_name("vsae")
        t = time.perf_counter()
        out = subprocess.run(
            [str(exe), "train", "--store", store, "--config", str(sweep), "--out", f"{tmp}/o"],
            capture_output=True,
            text=True,
            check=True,
            env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
        ).stdout
        wall = time.perf_counter() - t
    rates = [
        float(r.replace(",", "")) for r in re.findall(r"│\s*topk_\S+\s*│.*│\s*([\d,]+)\s*│\s*$", out, re.M)
    ]
    assert len(rates) == n, out
    return wall, sum(steps * batch / r for r in rates)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", required=True)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--sizes", default="1,4,8")
    args = ap.parse_args()
    print(machine())
    sizes = [int(s) for s in args.sizes.split(",")]
    wall1, own1 = run(args.store, 1, args.steps, args.batch)
    data = wall1 - own1
    print(f"N = 1: wall {wall1:.1f}s, own {own1:.1f}s → data pass and start-up {data:.1f}s")
    for n in sizes:
        wall, own = run(args.store, n, args.steps, args.batch)
        print(
            f"N = {n}: wall {wall:.1f}s, Σ own {own:.1f}s, wall ÷ (Σ own + data) = {wall / (own + data):.3f}"
        )


if __name__ == "__main__":
    main()
