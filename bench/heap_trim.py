"""A training step's time and page faults under glibc's trim threshold: "never" (what `vsae train` sets,
vsae/train/heap.py) against a finite one, in alternating fresh processes.

    python bench/heap_trim.py --acts <activations.npy from bench/peers.py dump> --arch vsae_topk
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from vsae.train.heap import M_TRIM_THRESHOLD, NEVER


def worker(args) -> None:
    import peers
    import torch

    torch.set_num_threads(args.threads)
    acts = np.load(args.acts, mmap_mode="r")[: args.batch * 12].astype(np.float32)
    batches = peers._batches(acts, args.batch, 12)
    step = peers._vsae(args.arch, acts.shape[1], args.dict_size, 32)  # sets vsae's heap policy
    ctypes.CDLL("libc.so.6").mallopt(M_TRIM_THRESHOLD, NEVER if args.trim == "never" else args.trim)
    times, faults = [], []
    for t in range(args.steps):
        f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        step(batches[t % len(batches)], t)
        times.append(time.perf_counter() - t0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    print(json.dumps({"times": times[2:], "faults": faults[2:]}))  # the first two steps warm up


def run(args) -> None:
    settings = ["never", str(1 << 30)]
    for r in range(args.rounds):
        for trim in settings if r % 2 == 0 else settings[::-1]:
            cmd = [
                sys.executable,
                __file__,
                "worker",
                "--trim",
                trim,
                "--acts",
                args.acts,
                "--arch",
                args.arch,
            ]
            cmd += [
                "--dict-size",
                str(args.dict_size),
                "--batch",
                str(args.batch),
                "--steps",
                str(args.steps),
            ]
            env = os.environ | {
                "PYTHONPATH": f"{Path(__file__).resolve().parents[1]}:{Path(__file__).parent}"
            }
            out = json.loads(subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout)
            print(
                f"trim {trim:>10}: median step {statistics.median(out['times']) * 1e3:.0f} ms, "
                f"page faults per step median {statistics.median(out['faults']):.0f}, max {max(out['faults'])}",
                flush=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["run", "worker"])
    ap.add_argument("--acts", required=True)
    ap.add_argument("--arch", default="vsae_topk")
    ap.add_argument("--dict-size", type=int, default=9216)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--trim", default="never", help="worker: 'never' or a threshold in bytes")
    args = ap.parse_args()
    if args.trim != "never":
        args.trim = int(args.trim)
    {"run": run, "worker": worker}[args.cmd](args)


if __name__ == "__main__":
    main()
