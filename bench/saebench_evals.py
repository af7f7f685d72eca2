"""SAE Bench's offline evals on a real checkpoint: the early stop's effect on one absorption batch (same
activations, time full vs stopped, alternating), then each eval's wall time through `vsae eval`.

    python bench/saebench_evals.py demo-out/ckpt/topk_4608_s0 [--evals meta_structure,mdl,...]

Results go to bench/RESULTS.md by hand (command, machine, date)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

EVALS = "meta_structure,sparse_probing_sae_probes,mdl,absorption"


def early_stop(checkpoint: Path, rounds: int = 3) -> None:
    from vsae.archs.checkpoint import load_sae
    from vsae.evaluate.core import checkpoint_table
    from vsae.evaluate.patching import model_name
    from vsae.evaluate.saebench.model import hooked_transformer, stop_after_hooks
    from vsae.harvest.models import load_model

    table = checkpoint_table(checkpoint, load_sae(checkpoint), None)
    model = hooked_transformer(load_model(model_name(table)))
    hook = table.provenance["hook_name"]
    words = ["apple", "banana", "cherry", "dog", "elephant", "forest", "garden", "house"] * 4
    prompts = [f" {w} has the first letter:" for w in words]  # one batch of SAE Bench's absorption (32)
    full = model.run_with_cache
    stop_after_hooks(model)
    stopped = model.run_with_cache
    times = {"full": [], "stopped": []}
    with torch.inference_mode():
        for _ in range(rounds):
            for name, run in (("full", full), ("stopped", stopped)):
                t = time.perf_counter()
                _, cache = run(prompts, names_filter=[hook])
                times[name].append(time.perf_counter() - t)
                acts = cache[hook]
            assert torch.equal(full(prompts, names_filter=[hook])[1][hook], acts)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    print(
        f"early stop, 32 prompts at {hook}: full {med['full']:.2f} s, stopped {med['stopped']:.2f} s "
        f"({med['full'] / med['stopped']:.1f}x), activations identical"
    )


def evals(checkpoint: Path, names: str) -> None:
    exe = Path(sys.executable).with_name("vsae")
    t = time.perf_counter()
    subprocess.run([str(exe), "eval", str(checkpoint), "--no-ce", "--saebench", names], check=True)
    result = json.loads((checkpoint / "eval.json").read_text())
    print(f"total {time.perf_counter() - t:.0f} s")
    for key, value in result.items():
        if key.startswith("saebench/"):
            print(f"{key}: {value}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--evals", default=EVALS)
    args = parser.parse_args()
    early_stop(args.checkpoint)
    evals(args.checkpoint, args.evals)
