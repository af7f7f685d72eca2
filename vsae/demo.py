"""`vsae demo`: the whole pipeline offline on the packaged SmolLM2-135M and Shakespeare."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from vsae.evaluate.core import EvalConfig, evaluate
from vsae.evaluate.report import comparison_table
from vsae.harvest.loop import HarvestConfig, harvest
from vsae.harvest.models import PACKAGED
from vsae.progress import console
from vsae.progress import results as results_console
from vsae.train.config import TrainConfig
from vsae.train.loop import train
from vsae.train.run import SAESpec


def run_demo(out: Path, tokens: int = 200_000, layer: int = 3) -> list[dict]:
    t0 = time.time()
    store = str(out / "acts")
    console.rule(f"1/3 harvest: {PACKAGED} layer {layer} resid_post over {tokens:,} Shakespeare tokens")
    th = time.time()
    result = harvest(
        HarvestConfig(model=PACKAGED, layers=[layer], dataset="shakespeare", tokens=tokens, store=store)
    )
    harvest_s = time.time() - th
    for line in result.get("skipped", []):
        console.print(f"[yellow]reusing:[/] {line}")
    console.rule("2/3 train: topk and vsae_topk (k=32, F=8×576) from the same batches")
    ckpt = out / "ckpt"
    shutil.rmtree(ckpt, ignore_errors=True)
    specs = [SAESpec("topk", expansion=8), SAESpec("vsae_topk", expansion=8)]
    runs = train(store, specs, TrainConfig(batch_size=2048, tokens=3 * tokens // 2, log_every=20), ckpt)
    console.rule("3/3 evaluate on held-out tokens (CE-loss recovered through the model)")
    results = [evaluate(run, EvalConfig(ce_windows=24)) for run in runs]
    results_console.print(comparison_table(results))
    if not result.get("skipped"):
        console.print(
            f"harvest: {tokens:,} tokens in {harvest_s:.0f}s ({tokens / harvest_s:,.0f} tokens/s incl. model load)"
        )
    console.print(f"demo wall time {time.time() - t0:.0f}s; store {store}, checkpoints {ckpt}")
    return results
