"""The packaged real model: a small SmolLM2-135M harvest, a short train and an eval with CE recovered."""

from __future__ import annotations

import json
import math

from conftest import run_cli

from vsae.store.table import open_table


def test_smollm2_harvest_train_eval(tmp_path):
    store = tmp_path / "acts"
    run_cli(
        "harvest",
        "smollm2-135m",
        "--layer",
        "2",
        "--dataset",
        "shakespeare",
        "--tokens",
        "6000",
        "--chunk-tokens",
        "512",
        "--shard-chunks",
        "2",
        "--store",
        store,
    )
    table = open_table(str(store))
    assert table.path == "smollm2-135m-instruct/resid_post.2"
    assert table.d == 576 and table.provenance["model_type"] == "llama"
    assert table.provenance["module_path"] == "model.layers.2"
    # Massive-activation dimensions survive bf16 storage as finite values.
    x = table.read(0, 2048)
    assert math.isfinite(float(x.abs().max())) and float(x.abs().max()) > 100
    out = tmp_path / "ckpt"
    run_cli(
        "train",
        "--store",
        store,
        "--arch",
        "topk",
        "--dict-size",
        "1152",
        "--k",
        "16",
        "--batch-size",
        "1024",
        "--steps",
        "25",
        "--out",
        out,
    )
    run_cli("eval", out, "--ce-windows", "4")
    result = json.loads((out / "topk_1152_k16_s0" / "eval.json").read_text())
    assert 3.0 < result["ce_loss_clean"] < 6.0  # a real model on Shakespeare (≈ 3.9 nats/token)
    assert result["ce_loss_zero_ablation"] > result["ce_loss_clean"]
    assert result["fve"] > 0.3 and result["l0"] == 16.0
