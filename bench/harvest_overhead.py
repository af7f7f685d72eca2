"""Harvest tokens/s ÷ the bare forward pass (same model, windows, batches, early stop).

python bench/harvest_overhead.py [--model smollm2-135m] [--layer 3] [--tokens 20000] [--device cpu]
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time

import numpy as np
import torch
from common import machine

from vsae.harvest.loop import HarvestConfig, _forward, harvest
from vsae.harvest.models import load_model
from vsae.harvest.sites import resolve_site
from vsae.harvest.text import TextSource, documents, pack


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--layer", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=20_000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    from nnsight.modeling.transformers import TransformersModel

    loaded = load_model(args.model)
    model = loaded.model.to(args.device)
    lm = TransformersModel(model, tokenizer=loaded.tokenizer, task="text-generation")
    site = resolve_site(model, "resid_post", args.layer)
    windows = pack(documents(TextSource("shakespeare")), loaded.tokenizer, 128)
    n_windows = int(np.ceil(args.tokens / 126 * 1.02))
    chosen = list(itertools.islice(windows, n_windows))
    batches = [chosen[i : i + args.batch_size] for i in range(0, len(chosen), args.batch_size)]
    _forward(lm, [site], batches[0], args.device)  # warm-up
    t = time.perf_counter()
    stored = 0
    for batch in batches:
        acts = _forward(lm, [site], batch, args.device)
        stored += sum(int(w.keep.sum()) for w in batch)
        del acts
    bare = stored / (time.perf_counter() - t)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = HarvestConfig(
            model=args.model,
            layers=[args.layer],
            tokens=stored,
            store=tmp,
            batch_size=args.batch_size,
            device=args.device,
        )
        t = time.perf_counter()
        harvest(cfg, show_progress=False, loaded=loaded)
        full = stored / (time.perf_counter() - t)
    print(f"machine: {machine()}; {stored:,} tokens, batch {args.batch_size}, layer {args.layer}")
    print(f"bare forward (nnsight, early stop):      {bare:,.0f} tok/s")
    print(f"harvest (forward + compress + write):    {full:,.0f} tok/s")
    print(f"ratio harvest / bare forward:            {full / bare:.3f}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
