"""Training on raw activations (`--normalization none`, c = 1), per-SAE learning rates and clipping in
sweeps, and step-count schedules: the forms in which dictionary_learning and SAELens recipes are written."""

from __future__ import annotations

import json
import math

import torch
from conftest import run_cli, synthetic_store

from vsae.archs.checkpoint import load_sae
from vsae.store.table import open_table
from vsae.train.schedules import Schedule


def test_raw_training_round_trips_and_evaluates_on_raw_activations(tmp_path):
    store = synthetic_store(tmp_path / "s")
    out = tmp_path / "o"
    run_cli(
        "train",
        "--store",
        store,
        "--arch",
        "vsae_topk",
        "--k",
        "3",
        "--dict-size",
        "64",
        "--steps",
        "40",
        "--batch-size",
        "256",
        "--normalization",
        "none",
        "--out",
        out,
    )
    run = out / "vsae_topk_64_k3_s0"
    cfg = json.loads((run / "cfg.json").read_text())
    assert cfg["norm_factor"] == 1.0 and "normalization=none" in cfg["norm_factor_definition"]
    table = open_table(str(store))
    x = table.read(0, table.n_train).double()
    raw_variance = float((x - x.mean(0)).square().sum(-1).mean())
    assert math.isclose(cfg["model"]["noise_unit"], raw_variance, rel_tol=1e-4)  # δ of the raw variance
    assert math.isclose(cfg["model"]["kl_coeff"], 2 * 0.04 * raw_variance / 3, rel_tol=1e-4)
    raw, train_space = load_sae(run), load_sae(run, space="normalized")
    held = table.read(table.n_train, table.n_tokens)
    assert torch.equal(raw.encode(held), train_space.encode(held))  # c = 1: the two spaces coincide
    run_cli("eval", run, "--no-ce")
    fve = json.loads((run / "eval.json").read_text())["fve"]
    x_hat = raw(held).double()
    held = held.double()
    expected = 1 - (held - x_hat).square().sum() / (held - held.mean(0)).square().sum()
    assert math.isclose(fve, float(expected), rel_tol=1e-5)
    # export: SAELens's top-k formula on the sign-split tensors reconstructs as the raw-trained model does
    from safetensors.torch import load_file

    run_cli("export", run, tmp_path / "lens")
    w = load_file(tmp_path / "lens" / "sae_weights.safetensors")
    k = json.loads((tmp_path / "lens" / "cfg.json").read_text())["k"]
    pre = torch.relu((held.float() - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
    top = torch.topk(pre, k, dim=-1)
    codes = torch.zeros_like(pre).scatter_(-1, top.indices, top.values)
    torch.testing.assert_close(codes @ w["W_dec"] + w["b_dec"], raw(held.float()), rtol=1e-4, atol=1e-4)


def test_a_raw_space_recipe_recovers_the_true_atoms(tmp_path):
    """The worked example of docs/recipes.md: a standard-SAE recipe written for raw activations (λ in raw
    units, warm-up in steps, its own lr and clipping per SAE) runs unchanged with --normalization none."""
    store = tmp_path / "truth"
    run_cli("synthetic", "--store", store, "--d", "48", "--atoms", "96", "--active", "3", "--tokens", "60000")
    sweep = tmp_path / "recipe.toml"
    sweep.write_text(
        '[train]\nsteps = 1000\nbatch_size = 512\nnormalization = "none"\nlr_warmup_steps = 50\n'
        "sparsity_warmup_steps = 100\n"
        '[[sae]]\narch = "standard"\nd_sae = 192\nl1_coeff = 0.35\nlr = 1e-3\ngrad_clip_norm = 1.0\n'
        '[[sae]]\narch = "standard"\nd_sae = 192\nl1_coeff = 0.35\nlr = 3e-4\ngrad_clip_norm = "none"\n'
    )
    out = tmp_path / "o"
    run_cli("train", "--store", store, "--config", sweep, "--out", out)
    run_cli("eval", out, "--json", tmp_path / "all.json")
    results = {r["checkpoint"].rsplit("/", 1)[1]: r for r in json.loads((tmp_path / "all.json").read_text())}
    recipe, other = (
        "standard_192_grad_clip_norm1.0_l1_coeff0.35_lr0.001_s0",
        "standard_192_grad_clip_normNone_l1_coeff0.35_lr0.0003_s0",
    )
    assert results[recipe]["true_atom_recovery"] >= 0.9, results[recipe]
    mine = json.loads((out / recipe / "cfg.json").read_text())["training"]
    theirs = json.loads((out / other / "cfg.json").read_text())["training"]
    assert mine["lr"] == 1e-3 and mine["grad_clip_norm"] == 1.0
    assert theirs["lr"] == 3e-4 and theirs["grad_clip_norm"] is None
    assert mine["derived"]["W"] == 50 and mine["derived"]["S_s"] == 100


def test_step_counts_replace_fractions_and_clamp_to_the_run():
    s = Schedule.derive(100, 0.02, 0.2, 0.05, 0.1, {"lr_warmup": 7, "lr_decay": 30, "sparsity_warmup": 500})
    assert (s.warmup, s.decay_start, s.sparsity_warmup, s.kl_warmup) == (7, 70, 100, 10)
    assert s.lr(6) == 1.0 and s.lr(5) < 1.0 and s.lr(99) < s.lr(70)


def test_an_imported_raw_checkpoint_continues_training_without_translation(tmp_path):
    """A peer's unnormalised SAE (here: exported to SAELens and imported back) starts a new run as it is,
    under either normalisation: after one step at a negligible lr the weights are the imported ones."""
    from safetensors.torch import load_file

    store = synthetic_store(tmp_path / "s")
    run_cli(
        "train",
        "--store",
        store,
        "--arch",
        "standard",
        "--dict-size",
        "64",
        "--steps",
        "30",
        "--normalization",
        "none",
        "--out",
        tmp_path / "ref",
    )
    run_cli("export", tmp_path / "ref" / "standard_64_s0", tmp_path / "lens")
    run_cli("import", tmp_path / "lens", tmp_path / "imported")
    imported = load_file(tmp_path / "imported" / "sae.safetensors")
    for norm in ("none", "expected_norm"):
        out = tmp_path / f"cont-{norm}"
        run_cli(
            "train",
            "--store",
            store,
            "--arch",
            "standard",
            "--init-from",
            tmp_path / "imported",
            "--steps",
            "1",
            "--lr",
            "1e-12",
            "--normalization",
            norm,
            "--out",
            out,
        )
        cont = load_file(out / "standard_64_from-imported_s0" / "sae.safetensors")
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            torch.testing.assert_close(cont[name], imported[name], rtol=1e-5, atol=1e-5)
    fresh = load_file(tmp_path / "ref" / "standard_64_s0" / "sae.safetensors")
    assert (fresh["W_enc"] - imported["W_enc"]).abs().max() < 1e-4  # the export/import round trip is exact
