"""GPU correctness checks, run by hand on a CUDA machine (not part of the CPU test suite):

* initial weights identical on CPU and GPU (spec §9 test 35);
* every architecture's loss terms and gradients on GPU equal the CPU ones (var_flag = 0: no noise; at
  k/F = 1/64 topk and batchtopk take the fused top-k step on both);
* the sparse kernels' gradients on GPU equal the dense ones;
* the reader's GPU-side shuffle hands out the same batches as the CPU one.

    python bench/gpu_check.py
"""

from __future__ import annotations

import torch

from vsae.archs.registry import ARCHS, build_config
from vsae.archs.sae import SAE, StepContext
from vsae.archs.select import topk_mask
from vsae.archs.sparse import encode_linear, sparse_decode
from vsae.archs.steps import make_generator

D, F = 64, 512


def variants():
    for name in ARCHS:
        for vf in (0, 1) if name.startswith("vsae") else (None,):
            ov = {} if vf is None else {"var_flag": vf}
            if name in ("topk", "batchtopk", "matryoshka", "vsae_topk", "vsae_batchtopk"):
                ov["k"] = 8
            yield name, ov


def main() -> None:
    assert torch.cuda.is_available(), "needs a GPU"
    dev = torch.device("cuda")
    print("device:", torch.cuda.get_device_name(), "torch", torch.__version__)
    x = torch.randn(1024, D, generator=torch.Generator().manual_seed(0))
    failures = 0
    for name, ov in variants():
        cpu = SAE(build_config(name, D, F, ov), seed=3)
        gpu = SAE(build_config(name, D, F, ov), seed=3).to(dev)
        same_init = all(torch.equal(v, gpu.state_dict()[k].cpu()) for k, v in cpu.state_dict().items())
        dead = torch.zeros(F, dtype=torch.bool)
        dead[:50] = True
        a = cpu.loss_terms(x, StepContext(dead=dead, generator=make_generator(0, 1)))
        b = gpu.loss_terms(
            x.to(dev), StepContext(dead=dead.to(dev), generator=make_generator(0, 1, device=dev))
        )
        ok = same_init
        if not cpu.cfg.samples:
            a.loss.backward()
            b.loss.backward()
            ok &= torch.allclose(a.loss, b.loss.cpu(), rtol=1e-4, atol=1e-5)
            for n, p in cpu.named_parameters():
                g = dict(gpu.named_parameters())[n].grad
                if p.grad is not None:
                    ok &= torch.allclose(p.grad, g.cpu(), rtol=1e-3, atol=1e-5)
        else:
            ok &= bool(torch.isfinite(b.loss))
        failures += not ok
        print(f"{name:15s} {ov!s:28s} init identical={same_init} cpu/gpu agree={ok}")
    w_enc = torch.randn(D, 4096, device=dev, requires_grad=True)
    b_enc = torch.zeros(4096, device=dev, requires_grad=True)
    w_dec = torch.randn(4096, D, device=dev, requires_grad=True)
    xs = x.to(dev)
    grads = []
    for fast in (True, False):
        z = encode_linear(xs, w_enc, b_enc) if fast else xs @ w_enc + b_enc
        mask = topk_mask(z.abs(), None, 16)
        f = z * mask
        xh = sparse_decode(f, mask, w_dec) if fast else f @ w_dec
        grads.append(torch.autograd.grad(xh.square().sum(), [w_enc, b_enc, w_dec]))
    # relative to each gradient's scale (entries reach ~1e5 here, so fp32 rounding alone is ~1e-2 absolute)
    sparse_ok = all(float((p - q).abs().max() / q.abs().max()) < 1e-5 for p, q in zip(*grads, strict=True))
    failures += not sparse_ok
    print("sparse kernels match dense on GPU:", sparse_ok)
    failures += not reader_matches(dev)
    print("FAILURES:", failures)


def reader_matches(dev) -> bool:
    import tempfile

    from vsae.store.reader import ShuffledBatches
    from vsae.store.synthetic import SyntheticConfig, write_synthetic
    from vsae.store.table import open_table

    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic(SyntheticConfig(store=tmp, d=16, atoms=32, tokens=40_000, chunk_tokens=1024))
        table = open_table(tmp)
        cpu, gpu = ShuffledBatches(table, 3000, seed=1), ShuffledBatches(table, 3000, seed=1, device=str(dev))
        ok = all(torch.equal(next(cpu), next(gpu).cpu()) for _ in range(30))
        cpu.close()
        gpu.close()
    print("reader batches identical with the GPU shuffle:", ok)
    return ok


if __name__ == "__main__":
    main()
