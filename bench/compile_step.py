"""torch.compile of `SAE.loss_terms` against eager, the rest of the loop as the trainer runs it (bench/RESULTS.md).

python bench/peers.py dump --store <store> --out /tmp/acts.npy   # once
python bench/compile_step.py /tmp/acts.npy topk eager && python bench/compile_step.py /tmp/acts.npy topk compile
python bench/compile_step.py /tmp/acts.npy topk compile cuda   # a fourth argument: the device
"""

import sys
import time

import numpy as np
import torch
from peers import _batches

from vsae.archs.registry import build_config, train_defaults
from vsae.archs.sae import SAE, StepContext
from vsae.archs.steps import make_generator
from vsae.train.heap import reuse_freed_memory
from vsae.train.run import adam, project_radial

reuse_freed_memory()
torch.set_num_threads(2)
path, arch, mode = sys.argv[1], sys.argv[2], sys.argv[3]
device = sys.argv[4] if len(sys.argv) > 4 else "cpu"
acts = np.load(path, mmap_mode="r")[: 4096 * 14].astype(np.float32)
bs = [b.to(device) for b in _batches(acts, 4096, 13)]
f = 9216
model = SAE(build_config(arch, 576, f, {"k": 32} if arch == "topk" else {})).to(device)
opt = adam(model.parameters(), lr=train_defaults(arch, f)["lr"])
dead = torch.zeros(f, dtype=torch.bool, device=device)


def sync():
    if device != "cpu":
        torch.cuda.synchronize()


gen = make_generator(0, 1)


def loss(x, t):
    return model.loss_terms(x, StepContext(step=t, total_steps=10_000, dead=dead, generator=gen)).loss


fwd = torch.compile(loss) if mode == "compile" else loss


def step(x, t):
    loss_value = fwd(x, t)
    opt.zero_grad(set_to_none=True)
    loss_value.backward()
    project_radial(model.W_dec)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    with torch.no_grad():
        model.W_dec.div_(model.W_dec.norm(dim=1, keepdim=True))


t0 = time.perf_counter()
for t in range(3):
    step(bs[t], t)
sync()
warm = time.perf_counter() - t0
ts = []
for t in range(3, 11):
    a = time.perf_counter()
    step(bs[t], t)
    sync()
    ts.append(time.perf_counter() - a)
print(f"{arch} {mode}: warm-up {warm:.1f} s, {np.median(ts) * 1e3:.0f} ms/step")
