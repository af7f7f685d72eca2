"""vsae's training step against its peers on the same activations and settings (issue #13).

Each contender runs in a fresh process, in its own venv where its pins clash with vsae's, and times
`--steps` optimiser steps after `--warmup` (Adam, fp32, the same [batch, d] slices of the same activations,
no dead latents so AuxK is off everywhere). Rounds alternate the contenders; ratios are per round.

    # once: activations to a file every venv can read, and a venv for sparsify and dictionary_learning
    python bench/peers.py dump --store <store> --tokens 200000 --out /tmp/acts.npy
    python3.11 -m venv /tmp/spvenv && /tmp/spvenv/bin/pip install torch==2.13.0 eai-sparsify==1.3.3 \\
        && /tmp/spvenv/bin/pip install --no-deps dictionary-learning==0.1.0 && /tmp/spvenv/bin/pip install einops
    # the comparison (SAELens and the dense loop run in vsae's venv)
    python bench/peers.py run --acts /tmp/acts.npy --peer-python /tmp/spvenv/bin/python --arch topk
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CONTENDERS = {
    "topk": ["vsae", "sparsify", "saelens", "dictionary_learning", "dense_torch", "encoder_matmul"],
    "standard": ["vsae", "saelens", "dictionary_learning"],
}
PEER_VENV = {"sparsify", "dictionary_learning"}  # the others run in vsae's own venv


# ---------------------------------------------------------------- one contender per process
def _batches(acts: np.ndarray, batch: int, n: int):
    import torch

    x = torch.from_numpy(acts)
    starts = [(i * batch) % (len(x) - batch) for i in range(n)]
    return [x[s : s + batch].contiguous() for s in starts]


def _vsae(arch, d, f, k):
    import torch

    from vsae.archs.registry import build_config, train_defaults
    from vsae.archs.sae import SAE, StepContext
    from vsae.archs.steps import make_generator
    from vsae.train.heap import reuse_freed_memory
    from vsae.train.run import adam, project_radial

    reuse_freed_memory()  # as `vsae train` does on the CPU

    model = SAE(build_config(arch, d, f, {"k": k} if "topk" in arch else {}))
    opt = adam(model.parameters(), lr=train_defaults(arch, f)["lr"])
    dead = torch.zeros(f, dtype=torch.bool)
    gen = make_generator(0, 1)

    def step(x, t):  # the loop's per-SAE work: loss, backward, radial projection, clip, Adam, renorm
        out = model.loss_terms(x, StepContext(step=t, total_steps=10_000, dead=dead, generator=gen))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        if model.cfg.decoder_norm == "unit":
            project_radial(model.W_dec)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if model.cfg.decoder_norm == "unit":
            with torch.no_grad():
                model.W_dec.div_(model.W_dec.norm(dim=1, keepdim=True))
        model.after_step(StepContext(step=t, total_steps=10_000), out.stats)

    return step


def _sparsify(arch, d, f, k):
    import torch
    from sparsify import SparseCoder, SparseCoderConfig

    sae = SparseCoder(d, SparseCoderConfig(num_latents=f, k=k), device="cpu", dtype=torch.float32)
    opt = torch.optim.Adam(sae.parameters(), lr=2e-4 / (f / 2**14) ** 0.5)

    def step(x, t):  # sparsify's Trainer: fvu + auxk, parallel-gradient removal, Adam, unit decoder rows
        out = sae(x)
        loss = out.fvu + out.auxk_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        sae.set_decoder_norm_to_unit_norm()

    return step


def _saelens(arch, d, f, k):
    import torch
    from sae_lens.saes.sae import TrainStepInput

    if arch == "topk":
        from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=f, k=k))
        coefficients = {}
    else:
        from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig

        sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d, d_sae=f))
        coefficients = {"l1": 5.0}
    opt = torch.optim.Adam(sae.parameters(), lr=5e-5)
    dead = torch.zeros(f, dtype=torch.bool)

    def step(x, t):  # SAELens's SAETrainer step: training_forward_pass, backward, clip, Adam
        out = sae.training_forward_pass(
            TrainStepInput(
                sae_in=x,
                coefficients=coefficients,
                dead_neuron_mask=dead,
                n_training_steps=t,
                is_logging_step=False,
            )
        )
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()

    return step


def _dictionary_learning(arch, d, f, k):
    import types

    sys.modules.setdefault("nnsight", types.ModuleType("nnsight"))  # imported by its buffer, unused here
    sys.modules["nnsight"].LanguageModel = object
    if arch == "topk":
        from dictionary_learning.trainers.top_k import TopKTrainer as Trainer

        extra = {"k": k}
    else:
        from dictionary_learning.trainers.standard import StandardTrainer as Trainer

        extra = {}
    common = {"layer": 0, "lm_name": "bench", "device": "cpu", "warmup_steps": 10}
    trainer = Trainer(steps=10_000, activation_dim=d, dict_size=f, **common, **extra)

    def step(x, t):  # its own update(): loss, backward, clip, parallel-gradient removal, Adam, schedule
        trainer.update(t + 1, x)  # step 0 also computes a geometric median: skipped, as vsae's init is

    return step


def _dense_torch(arch, d, f, k):
    import torch

    w_dec = torch.nn.Parameter(torch.nn.functional.normalize(torch.randn(f, d), dim=1))
    w_enc = torch.nn.Parameter(w_dec.detach().T.clone())
    b_enc, b_dec = torch.nn.Parameter(torch.zeros(f)), torch.nn.Parameter(torch.zeros(d))
    params = [w_enc, b_enc, w_dec, b_dec]
    opt = torch.optim.Adam(params, lr=1e-4)

    def step(x, t):  # the textbook loop: dense pre-activations, topk, scatter, dense decode
        u = torch.relu((x - b_dec) @ w_enc + b_enc)
        vals, idx = u.topk(k, dim=-1)
        code = torch.zeros_like(u).scatter(-1, idx, vals)
        loss = (code @ w_dec + b_dec - x).square().sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _encoder_matmul(arch, d, f, k):
    import torch

    from vsae.train.heap import reuse_freed_memory

    reuse_freed_memory()  # the same heap setting as vsae's step: the floor without page faults
    w, b = torch.randn(d, f), torch.zeros(f)

    def step(x, t):  # the floor: the encoder's forward matmul alone (same N, D, F)
        torch.addmm(b, x, w)

    return step


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    acts = np.load(args.acts, mmap_mode="r")[: args.batch * (args.steps + args.warmup + 1)].astype(np.float32)
    step = globals()[f"_{args.contender}"](args.arch, acts.shape[1], args.dict_size, args.k)
    batches = _batches(acts, args.batch, args.steps + args.warmup)
    for t in range(args.warmup):
        step(batches[t], t)
    t0 = time.perf_counter()
    for t in range(args.warmup, args.warmup + args.steps):
        step(batches[t], t)
    print(json.dumps({"seconds_per_step": (time.perf_counter() - t0) / args.steps}))


# ---------------------------------------------------------------- the driver
def dump(args) -> None:
    from vsae.store.table import open_table

    table = open_table(args.store)
    n = min(args.tokens, table.n_train)
    np.save(args.out, table.read(0, n).numpy())
    print(f"wrote {args.out}: {n} × {table.d}")


def run(args) -> None:
    import torch

    contenders = CONTENDERS[args.arch]
    if args.only:
        unknown = set(args.only.split(",")) - set(contenders)
        if unknown or "vsae" not in args.only.split(","):
            raise SystemExit(f"--only: choose vsae and some of {contenders} (unknown: {sorted(unknown)})")
        contenders = [c for c in contenders if c in args.only.split(",")]
    times: dict[str, list[float]] = {c: [] for c in contenders}
    for r in range(args.rounds):
        for c in contenders if r % 2 == 0 else contenders[::-1]:  # alternate the order
            python = args.peer_python if c in PEER_VENV else sys.executable
            cmd = [python, __file__, "worker", "--contender", c, "--acts", args.acts, "--arch", args.arch]
            cmd += ["--dict-size", str(args.dict_size), "--k", str(args.k), "--batch", str(args.batch)]
            cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads)]
            env = os.environ | {
                "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
                "OMP_NUM_THREADS": str(args.threads),
            }
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
            if proc.returncode:
                print(f"{c} failed: {proc.stderr.strip().splitlines()[-1]}")
                continue
            times[c].append(json.loads(proc.stdout.strip().splitlines()[-1])["seconds_per_step"])
            print(f"round {r} {c}: {times[c][-1] * 1e3:.0f} ms/step", flush=True)
    print(
        f"\n{args.arch}, d from {args.acts}, F = {args.dict_size}, k = {args.k}, batch {args.batch}, fp32, "
        f"{args.threads} threads, torch {torch.__version__}; median of {args.rounds} rounds"
    )
    base = statistics.median(times["vsae"])
    print(
        "| contender | time per step | tokens/s | its time ÷ vsae's (> 1: vsae faster) |\n|---|---|---|---|"
    )
    for c, ts in times.items():
        if ts:
            med = statistics.median(ts)
            print(f"| {c} | {med * 1e3:.1f} ms | {args.batch / med:,.0f} | {med / base:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump")
    d.add_argument("--store", required=True)
    d.add_argument("--tokens", type=int, default=200_000)
    d.add_argument("--out", required=True)
    for name in ("run", "worker"):
        p = sub.add_parser(name)
        p.add_argument("--acts", required=True)
        p.add_argument("--arch", default="topk", choices=list(CONTENDERS))
        p.add_argument("--dict-size", type=int, default=9216)
        p.add_argument("--k", type=int, default=32)
        p.add_argument("--batch", type=int, default=4096)
        p.add_argument("--steps", type=int, default=10)
        p.add_argument("--warmup", type=int, default=3)
        p.add_argument("--threads", type=int, default=2)
    sub.choices["run"].add_argument("--rounds", type=int, default=3)
    sub.choices["run"].add_argument("--peer-python", default=sys.executable)
    sub.choices["run"].add_argument("--only", help="comma-separated contenders, vsae among them")
    sub.choices["worker"].add_argument("--contender", required=True)
    args = ap.parse_args()
    {"dump": dump, "run": run, "worker": worker}[args.cmd](args)


if __name__ == "__main__":
    main()
