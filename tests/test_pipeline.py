"""End to end through the CLI: harvest → info → train → eval on the tiny GPT-NeoX."""

from __future__ import annotations

import json
import math

import numpy as np
import torch
from conftest import run_cli

from vsae.archs.checkpoint import convert_space, load_sae
from vsae.archs.registry import build_config
from vsae.archs.sae import SAE
from vsae.evaluate.core import EvalConfig, core_metrics
from vsae.harvest.text import TextSource, documents
from vsae.store.layout import from_storage
from vsae.store.table import open_table


def test_info_reports_shape_dtype_and_split(store_info):
    assert store_info["complete"]
    assert store_info["tokens"] == 24000
    assert store_info["d"] == 64
    assert store_info["dtype"] == "bfloat16"
    assert store_info["hook_name"] == "blocks.1.hook_resid_post"
    assert store_info["bytes_per_token"] < 64 * 2 * 1.2  # 16-bit words, compressed
    assert store_info["heldout_tokens"] > 0


def test_store_arrays_have_the_recorded_dtypes(store):
    table = open_table(str(store))
    assert table.acts.dtype == np.uint16  # bf16 words
    assert table.group["tokens"].dtype == np.uint16  # SmolLM2 vocabulary fits
    assert table.group["doc_pos"].shape == (24000, 3)


def test_stored_token_ids_equal_the_tokenizers_output(store, tokenizer):
    table = open_table(str(store))
    first_doc = next(documents(TextSource("pydoc", seed=0)))
    expected = tokenizer(first_doc, add_special_tokens=False)["input_ids"]
    doc_pos = table.doc_pos(0, table.n_tokens)
    stored = table.tokens(0, table.n_tokens)[doc_pos[:, 0] == 0]
    assert len(stored) == len(expected)
    assert stored.tolist() == expected


def test_stored_activations_equal_a_plain_forward_hook(store, tiny_model):
    from transformers import AutoModelForCausalLM

    table = open_table(str(store))
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    window = 3
    ids = torch.from_numpy(np.asarray(table.group["contexts"][window], dtype=np.int64))[None]
    captured = {}
    handle = model.gpt_neox.layers[1].register_forward_hook(lambda m, i, o: captured.setdefault("h", o))
    with torch.no_grad():
        model(ids)
    handle.remove()
    doc_pos = table.doc_pos(0, table.n_tokens)
    rows = np.flatnonzero(doc_pos[:, 1] == window)
    stored = from_storage(table.acts[rows[0] : rows[-1] + 1], "bfloat16")
    expected = captured["h"][0, doc_pos[rows, 2]]
    assert stored.shape == expected.shape
    torch.testing.assert_close(stored, expected, rtol=1e-2, atol=1e-2)  # bf16 rounding
    assert ids[0, 0] == 1 and 0 not in doc_pos[rows, 2]  # BOS at position 0, left out of the store


def test_topk_train_and_eval_through_the_cli(store, tmp_path):
    out = tmp_path / "ckpt"
    run_cli(
        "train",
        "--store",
        store,
        "--arch",
        "topk",
        "--expansion",
        "4",
        "--k",
        "8",
        "--batch-size",
        "512",
        "--steps",
        "120",
        "--out",
        out,
    )
    run_dir = out / "topk_256_k8_s0"
    cfg = json.loads((run_dir / "cfg.json").read_text())
    assert cfg["parameter_space"] == "raw" and cfg["norm_factor"] > 0
    assert cfg["provenance"]["hook_name"] == "blocks.1.hook_resid_post"
    run_cli("eval", out, "--json", tmp_path / "all.json")
    result = json.loads((run_dir / "eval.json").read_text())
    for key in (
        "mse",
        "fve",
        "l0",
        "l0_train_rule",
        "frac_alive",
        "cos_sim",
        "rel_recon_bias",
        "ce_loss_recovered",
        "ce_loss_clean",
        "ce_loss_with_sae",
        "ce_loss_zero_ablation",
        "kl_div_with_sae",
    ):
        assert math.isfinite(result[key]), key
    assert result["l0"] == 8.0

    # The trained SAE beats the same SAE at initialisation by a wide margin.
    table = open_table(str(store))
    fresh = SAE(build_config("topk", 64, 256, {"k": 8}), seed=0)
    c = cfg["norm_factor"]
    fresh.init_from_batch(table.read(0, 4096) / c)
    init = core_metrics(convert_space(fresh, c, "raw"), table, c, EvalConfig())
    assert result["fve"] > init["fve"] + 0.3, (init["fve"], result["fve"])


def test_vsae_topk_trains_beside_topk_from_one_pass(store, tmp_path):
    out = tmp_path / "ckpt"
    run_cli(
        "train",
        "--store",
        store,
        "--arch",
        "topk",
        "--arch",
        "vsae_topk",
        "--dict-size",
        "128",
        "--k",
        "8",
        "--batch-size",
        "512",
        "--steps",
        "30",
        "--out",
        out,
    )
    run_cli("eval", out, "--no-ce")
    vsae_result = json.loads((out / "vsae_topk_128_k8_s0" / "eval.json").read_text())
    for key in ("kl", "fve_mean", "fve_sample", "sigma_mean", "frac_logvar_at_bound"):
        assert math.isfinite(vsae_result[key]), key
    cfg = json.loads((out / "vsae_topk_128_k8_s0" / "cfg.json").read_text())
    derived = cfg["training"]["derived"]
    # δ = 0.04 of the training split's variance, measured here from the stored activations themselves
    from vsae.store.table import open_table

    table = open_table(str(store))
    x = table.read(0, table.n_train).double()
    variance = float((x - x.mean(0)).square().sum(-1).mean() / x.square().sum(-1).mean())
    assert math.isclose(cfg["model"]["noise_unit"], variance, rel_tol=1e-4)
    assert math.isclose(derived["kl_coeff"], 2 * 0.04 * variance / 8, rel_tol=1e-4) and derived["n_dec"] == 8
    assert math.isclose(derived["log_var_init"], math.log(derived["kl_coeff"] / (derived["kl_coeff"] + 2)))
    model = load_sae(out / "vsae_topk_128_k8_s0")
    assert model.cfg.samples and "W_enc_logvar" in model.state_dict()


def test_vsae_iso_is_trainable(store, tmp_path):
    run_cli(
        "train",
        "--store",
        store,
        "--arch",
        "vsae_iso",
        "--dict-size",
        "128",
        "--batch-size",
        "512",
        "--steps",
        "5",
        "--out",
        tmp_path,
    )
    assert (tmp_path / "vsae_iso_128_s0" / "sae.safetensors").exists()
