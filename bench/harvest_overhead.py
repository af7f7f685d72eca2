"""Harvest tokens/s ÷ the bare forward pass (same model, windows, batches, early stop).

python bench/harvest_overhead.py [--model smollm2-135m] [--layer 3] [--tokens 20000] [--device cpu]
python bench/harvest_overhead.py --random-init .gpu/smollm2-shape --device cuda   # SmolLM2's shape, random weights

`--random-init DIR` takes a folder holding only a model's config.json and tokenizer files (a few MB; write one
with `--save-shape DIR` where the model is at hand) and times a model of that shape with random weights, so a
machine without the weights (a lent GPU) measures the same ratio.

Shards of one 4096-token chunk by default: a harvest compresses shard s while it computes shard s + 1, and
only the last shard's compression is not overlapped. At 20k tokens one default 64k-token shard would
leave every byte to compress after the last forward, which no real (millions of tokens) harvest sees.
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


def random_model(shape_dir: str, out: str) -> str:
    """A model of the config in `shape_dir` with random weights, saved with its tokenizer under `out`."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(shape_dir)).save_pretrained(out)
    AutoTokenizer.from_pretrained(shape_dir).save_pretrained(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--layer", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=20_000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--shard-chunks",
        type=int,
        default=1,
        help="commit unit; small so a short run overlaps like a long one",
    )
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--random-init", metavar="DIR", help="config.json + tokenizer: that shape, random weights"
    )
    ap.add_argument(
        "--save-shape", metavar="DIR", help="write --model's config.json and tokenizer to DIR, exit"
    )
    args = ap.parse_args()
    from nnsight.modeling.transformers import TransformersModel

    if args.save_shape:
        loaded = load_model(args.model)
        loaded.model.config.save_pretrained(args.save_shape)
        loaded.tokenizer.save_pretrained(args.save_shape)
        return
    scratch = tempfile.TemporaryDirectory()
    if args.random_init:
        args.model = random_model(args.random_init, scratch.name)
    loaded = load_model(args.model)
    model = loaded.model.to(args.device)
    lm = TransformersModel(model, tokenizer=loaded.tokenizer, task="text-generation")
    site = resolve_site(model, "resid_post", args.layer)
    windows = pack(documents(TextSource("shakespeare")), loaded.tokenizer, 128)
    n_windows = int(np.ceil(args.tokens / 126 * 1.02))
    chosen = list(itertools.islice(windows, n_windows))
    batches = [chosen[i : i + args.batch_size] for i in range(0, len(chosen), args.batch_size)]
    _forward(lm, [site], batches[0], args.device)  # warm-up
    stored = sum(int(w.keep.sum()) for w in chosen)

    def bare_run() -> float:
        t = time.perf_counter()
        for batch in batches:
            _forward(lm, [site], batch, args.device)
        return time.perf_counter() - t

    def harvest_run() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = HarvestConfig(
                model=args.model,
                layers=[args.layer],
                tokens=stored,
                store=tmp,
                batch_size=args.batch_size,
                device=args.device,
                shard_chunks=args.shard_chunks,
            )
            t = time.perf_counter()
            harvest(cfg, show_progress=False, loaded=loaded)
            return time.perf_counter() - t

    # alternate the two so drifts in machine speed hit both; best of `repeat` each
    times = [(bare_run(), harvest_run()) for _ in range(args.repeat)]
    bare = stored / min(b for b, _ in times)
    full = stored / min(h for _, h in times)
    print(
        f"machine: {machine()}; {stored:,} tokens, batch {args.batch_size}, layer {args.layer}, "
        f"shards of {args.shard_chunks} chunk(s)"
    )
    print(f"bare forward (nnsight, early stop):      {bare:,.0f} tok/s")
    print(f"harvest (forward + compress + write):    {full:,.0f} tok/s")
    print(f"ratio harvest / bare forward:            {full / bare:.3f}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
