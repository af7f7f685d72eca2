"""Trainer invariants (spec §9) on a real synthetic store written through the CLI."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from conftest import assert_same_trainer_state, run_cli, synthetic_store

from vsae.archs import cpu_topk
from vsae.archs.checkpoint import load_sae
from vsae.errors import NonFiniteLoss
from vsae.store.table import open_table
from vsae.train.config import TrainConfig
from vsae.train.loop import train
from vsae.train.run import SAESpec, adam


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
    return synthetic_store(tmp_path_factory.mktemp("synth") / "store")


def _train(store, out, arch="topk", steps=10, **kw):
    overrides = kw.pop("overrides", {"k": 4} if "topk" in arch or arch in ("batchtopk", "matryoshka") else {})
    tcfg = TrainConfig(batch_size=256, steps=steps, log_every=1, **kw)
    return train(str(store), [SAESpec(arch, d_sae=64, overrides=overrides)], tcfg, out, show_progress=False)[
        0
    ]


def test_invariant_norm_factor_exact_and_recorded(synth, tmp_path):
    table = open_table(str(synth))
    x = table.read(0, table.n_train).double()
    assert math.isclose(table.norm_factor(), math.sqrt(float(x.square().sum(1).mean())), rel_tol=1e-9)
    run = _train(synth, tmp_path, steps=2)
    cfg = json.loads((run / "cfg.json").read_text())
    assert cfg["norm_factor"] == table.norm_factor()
    assert cfg["norm_factor_definition"] == "sqrt(mean ||x||^2)"


@pytest.mark.parametrize(
    "arch", ["topk", "vsae_topk", "jumprelu", "panneal", "batchtopk", "gated", "vsae_iso"]
)
def test_invariant_exact_resume(synth, tmp_path, arch):
    full = _train(synth, tmp_path / "full", arch, steps=10, save_every=4)
    part = tmp_path / "part" / full.name
    shutil.copytree(full / "checkpoints" / "step_4", part)
    overrides = {"k": 4} if arch in ("topk", "vsae_topk", "batchtopk") else {}
    train(
        str(synth),
        [SAESpec(arch, d_sae=64, overrides=overrides)],
        TrainConfig(batch_size=256, steps=10, log_every=1, save_every=4),
        tmp_path / "part",
        resume=True,
        show_progress=False,
    )
    a = torch.load(full / "trainer_state.pt", weights_only=True)
    b = torch.load(part / "trainer_state.pt", weights_only=True)
    assert_same_trainer_state(a, b)
    assert a["p_state"] == b["p_state"]


def test_invariant_nonfinite_loss_raises_and_keeps_checkpoint(synth, tmp_path, monkeypatch):
    from vsae.store import reader

    original = reader.ShuffledBatches.__next__
    calls = {"n": 0}

    def poisoned(self):
        batch = original(self)
        calls["n"] += 1
        if calls["n"] == 6:  # step 5
            batch[0, 0] = float("nan")
        return batch

    monkeypatch.setattr(reader.ShuffledBatches, "__next__", poisoned)
    with pytest.raises(NonFiniteLoss) as info:
        _train(synth, tmp_path, steps=10, save_every=2)
    assert info.value.step == 5
    run = tmp_path / "topk_64_k4_s0"
    assert not (run / "cfg.json").exists()  # no final checkpoint from a broken run
    last = load_sae(run / "checkpoints" / "step_4")  # the last checkpoint is intact and loads
    assert torch.isfinite(last.W_dec).all()
    # without any checkpoint, a failed fresh run leaves no folder and no log behind
    calls["n"] = 0
    with pytest.raises(NonFiniteLoss):
        _train(synth, tmp_path / "nosave", steps=10)
    assert not (tmp_path / "nosave" / "topk_64_k4_s0").exists()


def test_invariant_unit_norm_kept_and_b_dec_free(synth, tmp_path):
    run = _train(synth, tmp_path, "standard", steps=5)
    model = load_sae(run, space="normalized")
    assert (model.W_dec.norm(dim=1) - 1).abs().max() < 1e-5
    assert abs(float(model.b_dec.norm()) - 1) > 1e-3


def test_invariant_dead_counters_and_t_dead(synth, tmp_path):
    run = _train(synth, tmp_path, "topk", steps=3)
    state = torch.load(run / "trainer_state.pt", weights_only=True)
    assert int(state["tau"].max()) <= 3 * 256 and int(state["tau"].min()) >= 0
    cfg = json.loads((run / "cfg.json").read_text())
    assert cfg["training"]["derived"]["T_dead"] == 256  # max(N, floor(0.1·3·256)) = 256
    from vsae.train.run import SAERun

    table = open_table(str(synth))
    for total, expected in ((3, 4096), (100, 40960), (10**6, 10_000_000)):
        run = SAERun(SAESpec("topk", d_sae=64), table, TrainConfig(batch_size=4096), total, 1.0, tmp_path)
        assert run.t_dead == expected


def test_trainer_adam_follows_the_adam_formula_over_steps():
    """The fused optimiser the trainer builds takes Adam's bias-corrected steps (Kingma & Ba, Algorithm 1)."""
    g = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(64, 8, generator=g, dtype=torch.float64))
    ref, m, v = p.detach().clone(), torch.zeros_like(p), torch.zeros_like(p)
    opt = adam([p], lr=1e-2, betas=(0.8, 0.99), eps=1e-6)
    assert opt.defaults["fused"]
    for t in range(1, 6):
        grad = torch.randn(p.shape, generator=g, dtype=torch.float64)
        p.grad = grad.clone()
        opt.step()
        m, v = 0.8 * m + 0.2 * grad, 0.99 * v + 0.01 * grad.square()
        ref -= 1e-2 * (m / (1 - 0.8**t)) / ((v / (1 - 0.99**t)).sqrt() + 1e-6)
        torch.testing.assert_close(p.detach(), ref, rtol=1e-12, atol=1e-12)


def _resample_setup(seed=0):
    from vsae.archs.registry import build_config
    from vsae.archs.sae import SAE, StepContext
    from vsae.archs.steps import make_generator

    model = SAE(build_config("standard", 16, 64, {}), seed=0)
    opt = adam(model.parameters(), lr=1e-3)  # the trainer's optimiser (fused), whose moments resampling edits
    x = torch.randn(128, 16, generator=torch.Generator().manual_seed(0))
    model.loss_terms(x, StepContext(generator=make_generator(0, 1))).loss.backward()
    opt.step()
    tau = torch.zeros(64, dtype=torch.int64)
    tau[[3, 10, 40]] = 1000
    return model, opt, tau, x, make_generator(seed, 2)


def test_invariant_resampling_writes_only_dead_slices():
    from vsae.train.resample import resample_dead

    model, opt, tau, pool, gen = _resample_setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    moments = {n: opt.state[p]["exp_avg"].clone() for n, p in model.named_parameters()}
    alive = torch.ones(64, dtype=torch.bool)
    alive[[3, 10, 40]] = False
    enc_scale = 0.2 * float(before["W_enc"][:, alive].norm(dim=0).mean())
    assert resample_dead(model, opt, tau, 500, pool, gen) == 3
    dead = [3, 10, 40]
    for j in dead:
        v = model.W_dec[j]
        assert abs(float(v.norm()) - 1) < 1e-6
        torch.testing.assert_close(model.W_enc[:, j], v * enc_scale)
        assert float(model.b_enc[j]) == 0.0 and int(tau[j]) == 0
        assert any(torch.allclose(v, p / p.norm(), atol=1e-6) for p in pool)  # points at a pool token
    others = [j for j in range(64) if j not in dead]
    assert torch.equal(model.W_dec[others], before["W_dec"][others])
    assert torch.equal(model.W_enc[:, others], before["W_enc"][:, others])
    names = dict(model.named_parameters())
    assert (opt.state[names["W_enc"]]["exp_avg"][:, dead] == 0).all()
    assert (opt.state[names["W_dec"]]["exp_avg_sq"][dead] == 0).all()
    assert torch.equal(opt.state[names["W_enc"]]["exp_avg"][:, others], moments["W_enc"][:, others])
    assert torch.equal(model.b_dec, before["b_dec"])
    again, opt2, tau2, pool2, gen2 = _resample_setup()
    resample_dead(again, opt2, tau2, 500, pool2, gen2)
    assert torch.equal(again.W_dec, model.W_dec)  # same seed, same resampling


def test_invariant_resampling_skipped_when_all_dead(caplog):
    from vsae.train.resample import resample_dead

    model, opt, tau, pool, gen = _resample_setup()
    tau.fill_(10_000)
    before = model.W_dec.clone()
    assert resample_dead(model, opt, tau, 500, pool, gen) == 0
    assert torch.equal(model.W_dec, before)
    assert "no latent is alive" in caplog.text


def test_recovery_metric_reported_for_synthetic_tables(synth, tmp_path):
    run = _train(synth, tmp_path, "topk", steps=60)
    run_cli("eval", run)
    result = json.loads((run / "eval.json").read_text())
    assert 0.3 < result["true_atom_recovery"] <= 1.0
    assert "ce_loss_recovered" not in result


@pytest.mark.parametrize("total", [1, 2, 3])
def test_invariant_every_architecture_trains_tiny_runs(synth, tmp_path, total):
    from vsae.archs.registry import ARCHS

    specs = []
    for name in ARCHS:
        k = {"k": 4} if name in ("topk", "batchtopk", "matryoshka", "vsae_topk", "vsae_batchtopk") else {}
        specs.append(SAESpec(name, d_sae=64, overrides=k))
        if name.startswith("vsae"):
            specs.append(SAESpec(name, d_sae=64, overrides=k | {"var_flag": 0}))
    runs = train(
        str(synth),
        specs,
        TrainConfig(batch_size=128, steps=total, log_every=1),
        tmp_path,
        show_progress=False,
    )
    for run in runs:
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert len(records) == total
        for r in records:
            assert 0 < r["lr"] and 0 < r["s"] <= 1 and 0 < r["w_kl"] <= 1
            assert all(math.isfinite(v) for v in r.values() if isinstance(v, float) and not math.isnan(v))
        if "panneal" in run.name:
            cfg = json.loads((run / "cfg.json").read_text())
            assert cfg["state"]["p"] == pytest.approx(0.2)  # reaches p_end even for T = 1


_FAULTS_ON_REUSE = """
import resource, sys
import torch
from vsae.train.heap import reuse_freed_memory
agreed = reuse_freed_memory() if sys.argv[1] == "reuse" else None
blocks, rounds = int(sys.argv[2]), int(sys.argv[3])
def faults_of_fresh_64_mib_blocks():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    held = [torch.empty(16 << 20).fill_(1.0) for _ in range(blocks)]
    del held  # all at once, as a step's temporaries are
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults = [faults_of_fresh_64_mib_blocks() for _ in range(rounds)]
print(agreed, sum(faults[rounds // 2 :]))  # after the heap has grown to hold the blocks
"""


def test_freed_training_memory_is_reused_without_page_faults():
    """With the heap setting the trainer makes, a 64 MiB block freed and allocated again is written without
    page faults once the heap holds it (its pages stay mapped); by default each of its 16,384 pages faults
    again every time (glibc maps blocks above 32 MiB afresh; a step's [4096, 9216] encoder output is 151 MB).
    The same holds when a step frees more than 1 GiB at once (20 blocks: a vsae_topk step frees ~3 GB), which
    a finite trim threshold would hand back to the system every step."""
    import subprocess
    import sys

    def faults(mode, blocks, rounds):
        cmd = [sys.executable, "-c", _FAULTS_ON_REUSE, mode, str(blocks), str(rounds)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        agreed, total = out.stdout.split()
        return agreed, int(total)

    _, default = faults("default", 1, 40)
    agreed, reused = faults("reuse", 1, 40)
    assert default > 20 * 16_000
    assert agreed == "True" and reused < default / 4
    _, reused_many = faults("reuse", 20, 8)
    assert reused_many < 4 * 20 * 16_384 / 10  # the last 4 rounds: under a tenth of their pages fault


_KERNEL_CACHE_STATS = """
import torch
from vsae.archs import cpu_topk
from vsae.archs.select import row_topk
row_topk(torch.randn(64, 256), 5)
stats = cpu_topk._kernel().stats
print(sum(stats.cache_hits.values()), sum(stats.cache_misses.values()))
"""


@pytest.mark.skipif(not cpu_topk.HAVE_NUMBA, reason="numba is not installed")
def test_the_cpu_topk_kernel_compiles_once_per_machine():
    """numba's on-disk cache serves the selection kernel to every later process. Built as a closure inside a
    function it never matched, so each `vsae train` compiled it again (8 s) and added cache files."""
    import subprocess
    import sys

    def hits_and_misses() -> tuple[int, int]:
        out = subprocess.run([sys.executable, "-c", _KERNEL_CACHE_STATS], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        hits, misses = out.stdout.split()
        return int(hits), int(misses)

    hits_and_misses()  # the first process on a fresh machine compiles and fills the cache
    assert hits_and_misses() == (1, 0)
