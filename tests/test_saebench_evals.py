"""SAE Bench's other offline evals through `vsae eval --saebench …`: SAE Bench's and sae-probes' own code on a
trained checkpoint of a tiny model, each JSON checked against SAE Bench's schema where it ships one, and the
numbers vsae can derive on its own compared with theirs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import run_cli

# absorption's prompts are the tokenizer's alphabetic tokens: SmolLM2's ~19k cost minutes per eval on 2
# cores, so this model gets a 1000-token byte-level BPE (701 alphabetic tokens) trained on pydoc's text
VOCAB = 1000


def small_tokenizer():
    import pydoc_data.topics

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    # SAE Bench's absorption prompt "{word} has the first letter:" reads the word 6 tokens from the end
    text = [*pydoc_data.topics.topics.values(), *[" cat has the first letter: c"] * 100]
    tok.train_from_iterator(text, trainer)
    special = "<|endoftext|>"
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=special, eos_token=special, pad_token=special
    )


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A tiny GPT-NeoX with that tokenizer, a store of its layer-1 residual stream and a trained topk."""
    from conftest import save_tiny_neox

    root = tmp_path_factory.mktemp("bench")
    model = save_tiny_neox(root / "tiny-bpe", small_tokenizer())
    store = root / "acts"
    harvest = ["--layer", "1", "--dataset", "pydoc", "--tokens", "16000", "--chunk-tokens", "512"]
    run_cli("harvest", model, *harvest, "--heldout-fraction", "0.2", "--store", store)
    train = ["--arch", "topk", "--k", "8", "--dict-size", "256", "--steps", "60", "--batch-size", "512"]
    run_cli("train", "--store", store, *train, "--out", root / "ckpt")
    return {"model": model, "store": store, "ckpt": root / "ckpt" / "topk_256_k8_s0"}


def _bench(ckpt, evals: str, *settings: str, extra: tuple = ()) -> dict:
    sets = [a for s in settings for a in ("--saebench-set", s)]
    run_cli("eval", ckpt, "--no-ce", "--saebench", evals, *sets, *extra)
    return json.loads((ckpt / "eval.json").read_text())


def _schema_checked(name: str, output: dict, schema_file: str) -> None:
    import jsonschema
    import sae_bench

    schema = json.loads((__import__("pathlib").Path(sae_bench.__file__).parent / schema_file).read_text())
    jsonschema.validate(output, schema)


def test_meta_structure_explains_the_decoder_vsae_exports(small):
    """Its FVE is 1 − Σ‖d − d̂‖² / Σ‖d − d̄‖² over the decoder rows; its MSE is Σ‖d − d̂‖² / numel. The
    denominator computed here from vsae's unit-norm export ties the two: a decoder whose rows had other norms
    (a wrong export) breaks the identity. (It cannot tell a permutation of the decoder's columns.)"""
    from vsae.archs.checkpoint import load_sae
    from vsae.interop.export_saelens import deployable

    result = _bench(small["ckpt"], "meta_structure", "meta_structure.train_steps=200")
    output = json.loads((small["ckpt"] / "saebench_meta_structure.json").read_text())
    _schema_checked(
        "meta_structure",
        output,
        "evals/meta_structure/eval_output_schema_meta_structure_decoder_variance.json",
    )
    m = output["eval_result_metrics"]["meta_structure"]
    assert output["eval_config"]["train_steps"] == 200
    model, _ = deployable(load_sae(small["ckpt"]))
    rows = model.W_dec.detach().double()
    rows = rows / rows.norm(dim=1, keepdim=True)
    total = float((rows - rows.mean(0)).square().sum())
    assert m["decoder_fraction_variance_explained"] == pytest.approx(
        1 - m["final_reconstruction_mse"] * rows.numel() / total, rel=1e-5
    )
    assert result["saebench/meta_structure/decoder_fve"] == m["decoder_fraction_variance_explained"]


def test_absorption_runs_saebench_on_the_checkpoints_own_model(small, tmp_path, monkeypatch):
    """SAE Bench's absorption, first-letter probes on the model's own vocabulary. On a random tiny model
    SAE Bench concludes it cannot score (too few letters with a good probe): vsae records that as a result,
    and the per-letter probe F1 it reports bears the reason out. Nothing is left in the working folder.
    (Its scoring stage needs every vocabulary word to re-tokenize to one token in the prompt, which this
    small BPE does not give; bench/saebench_evals.py runs the scored path on SmolLM2.)"""
    monkeypatch.chdir(tmp_path)
    result = _bench(small["ckpt"], "absorption", "absorption.k_sparse_probe_num_epochs=2")
    output = json.loads((small["ckpt"] / "saebench_absorption.json").read_text())
    if output.get("scored") is False:
        f1 = output["probe_f1_by_letter"]
        assert sorted(f1) == list("abcdefghijklmnopqrstuvwxyz")
        above = sum(v > output["eval_config"]["min_GT_probe_f1"] for v in f1.values())
        assert (
            above < output["eval_config"]["min_feats_for_eval"] and f"{above} letter(s)" in output["reason"]
        )
        assert result["saebench/absorption/not_scored"] == output["reason"]
    else:
        _schema_checked(
            "absorption", output, "evals/absorption/eval_output_schema_absorption_first_letter.json"
        )
        mean = output["eval_result_metrics"]["mean"]["mean_absorption_fraction_score"]
        assert result["saebench/absorption/mean_absorption"] == mean
    assert list(tmp_path.iterdir()) == []  # SAE Bench's artifacts went to a scratch folder, now removed


def test_an_eval_leaves_gradients_as_it_found_them(small):
    """SAE Bench switches gradients off for the whole process; training after an eval in the same process
    (a sweep script, this test suite) must still get gradients."""
    import torch

    assert torch.is_grad_enabled()
    _bench(small["ckpt"], "mdl", "mdl.num_bins_values=[2]", "mdl.k_values=[8]", "mdl.sae_batch_size=4")
    assert torch.is_grad_enabled()


def test_the_early_stop_gives_the_same_hook_activations(small):
    """`stop_after_hooks` runs only the blocks up to the cached hook: the activations are bit-identical to a
    full forward, the logits are None (never silently the residual stream), other hooks run in full."""
    from vsae.evaluate.saebench.model import hooked_transformer, stop_after_hooks
    from vsae.harvest.models import load_model

    model = hooked_transformer(load_model(str(small["model"])))
    ids = torch.randint(1, VOCAB, (3, 17), generator=torch.Generator().manual_seed(0))
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    full_logits, full = model.run_with_cache(ids, names_filter=hooks)
    stop_after_hooks(model)
    logits, stopped = model.run_with_cache(ids, names_filter=hooks)
    assert logits is None
    for hook in hooks:
        assert torch.equal(stopped[hook], full[hook])
    logits, final = model.run_with_cache(ids, names_filter=["ln_final.hook_normalized"])
    assert torch.equal(logits, full_logits) and "ln_final.hook_normalized" in final


def test_sae_probes_sparse_probing_with_its_shipped_datasets(small):
    """sae-probes on two of the datasets its wheel ships (--saebench-datasets; a setting overridden from the
    CLI): SAE probes at each k and the raw-activation baseline beside them, per dataset and averaged."""
    datasets = ("--saebench-datasets", "117_us_state_FL,154_athlete_sport_football")
    result = _bench(
        small["ckpt"], "sparse_probing_sae_probes", "sparse_probing_sae_probes.ks=[1,5]", extra=datasets
    )
    output = json.loads((small["ckpt"] / "saebench_sparse_probing_sae_probes.json").read_text())
    assert output["eval_config"]["dataset_names"] == ["117_us_state_FL", "154_athlete_sport_football"]
    details = {d["dataset_name"]: d for d in output["eval_result_details"]}
    assert sorted(details) == sorted(output["eval_config"]["dataset_names"])
    sae_metrics = output["eval_result_metrics"]["sae"]
    for k in (1, 5):
        accs = [d[f"sae_top_{k}_test_accuracy"] for d in details.values()]
        assert sae_metrics[f"sae_top_{k}_test_accuracy"] == pytest.approx(np.mean(accs))
    llm = output["eval_result_metrics"]["llm"]["llm_test_accuracy"]
    assert llm == pytest.approx(np.mean([d["llm_test_accuracy"] for d in details.values()]))
    assert result["saebench/sparse_probing_sae_probes/llm_accuracy"] == llm
    assert all(0 <= d["llm_test_accuracy"] <= 1 for d in details.values())


def test_mdl_reads_the_store_windows_and_finer_bins_cost_less_error(small):
    """MDL on the store's own windows: per (bins, k) a description length and the quantised code's MSE.
    Quantising to more bins can only bring each latent nearer its value: the MSE falls as bins grow."""
    _bench(small["ckpt"], "mdl", "mdl.num_bins_values=[2,8,32]", "mdl.k_values=[8]", "mdl.sae_batch_size=8")
    output = json.loads((small["ckpt"] / "saebench_mdl.json").read_text())
    rows = sorted(output["eval_results"], key=lambda r: r["num_bins"])
    assert [r["num_bins"] for r in rows] == [2, 8, 32] and all(r["k"] == 8 for r in rows)
    assert all(r["description_length"] > 0 for r in rows)
    mse = [r["mse_loss"] for r in rows]
    assert mse[0] > mse[1] > mse[2] >= 0, mse


@pytest.fixture(scope="module")
def llm_server(tmp_path_factory):
    """`transformers serve` of the packaged SmolLM2-135M-Instruct on a free loopback port; stopped after."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    pytest.importorskip("fastapi", reason="transformers serve needs the serving extra (fastapi, uvicorn)")
    pytest.importorskip("uvicorn", reason="transformers serve needs the serving extra (fastapi, uvicorn)")
    from vsae.harvest.models import packaged_smollm2

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    exe = Path(sys.executable).with_name("transformers")
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(exe), "serve", str(packaged_smollm2()), "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert proc.poll() is None, log.read_text()[-2000:]
                time.sleep(1)
        yield {"url": f"http://127.0.0.1:{port}/v1", "log": log}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_autointerp_talks_to_a_real_local_llm_server(small, llm_server):
    """SAE Bench's autointerp against `transformers serve`: the server receives the explanation and scoring
    requests. SmolLM2-135M is a weak judge: where it never answers in the format SAE Bench parses, the result
    says so instead of a NaN score."""
    url = llm_server["url"]
    run_cli("eval", small["ckpt"], "--no-ce", "--saebench", "autointerp", "--llm-url", url, *_one_latent())
    output = json.loads((small["ckpt"] / "saebench_autointerp.json").read_text())
    posts = llm_server["log"].read_text().count("POST /v1/chat/completions")
    assert posts >= 2, llm_server["log"].read_text()[-2000:]  # an explanation, then a scoring request
    result = json.loads((small["ckpt"] / "eval.json").read_text())
    if output.get("scored") is False:
        assert "never answered the scoring prompt" in output["reason"]
        assert result["saebench/autointerp/not_scored"] == output["reason"]
    else:
        _schema_checked("autointerp", output, "evals/autointerp/eval_output_schema_autointerp.json")
        assert (
            0 <= result["saebench/autointerp/score"] <= 1
            and result["saebench/autointerp/latents_scored"] == 1
        )


def _one_latent():
    return ("--saebench-set", "autointerp.n_latents=1")


def test_autointerp_refuses_a_server_that_is_not_there_or_lacks_the_model(small, llm_server):
    from conftest import run_vsae

    before = sorted(p.name for p in small["ckpt"].iterdir())
    bad = run_vsae(
        "eval", small["ckpt"], "--saebench", "autointerp", "--llm-url", "http://127.0.0.1:9/v1", expect=2
    )
    assert bad.stderr.strip().startswith("error: cannot reach the LLM server at http://127.0.0.1:9/v1")
    args = ("--saebench", "autointerp", "--llm-url", llm_server["url"], "--llm-model", "gpt-4o")
    bad = run_vsae("eval", small["ckpt"], *args, expect=2)
    assert "does not serve 'gpt-4o'" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in small["ckpt"].iterdir()) == before


def bias_in_bios_mirror(root):
    """A small `LabHC/bias_in_bios` with the original's schema (hard_text, profession, gender; train and test
    splits) saved as SAE Bench would find it under --saebench-data: each bio names its profession and uses
    a gendered pronoun, so the raw activations separate both (the network is the only thing replaced). The
    professions are sparse probing's class set 1 and SCR's four pairs (professor/nurse, …)."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
    from sae_bench.sae_bench_utils.dataset_info import profession_dict

    rng = np.random.default_rng(0)
    names = {v: k for k, v in profession_dict.items()}
    filler = ["file", "class", "module", "object", "string", "number", "list", "method", "function", "value"]
    features = Features(
        {
            "hard_text": Value("string"),
            "profession": ClassLabel(num_classes=28),
            "gender": ClassLabel(num_classes=2),
        }
    )

    def split(per_quadrant: int):
        rows = {"hard_text": [], "profession": [], "gender": []}
        for profession in (0, 1, 2, 6, 9, 11, 13, 21, 22, 25, 26):
            for gender, pronoun in ((0, "he"), (1, "she")):
                for _ in range(per_quadrant):
                    words = " ".join(rng.choice(filler, 6))
                    rows["hard_text"].append(
                        f"{pronoun} is a {names[profession]} and {pronoun} wrote {words}"
                    )
                    rows["profession"].append(profession)
                    rows["gender"].append(gender)
        return Dataset.from_dict(rows, features=features)

    # SCR draws more than twice its per-quadrant minimum (size / 4) from the biased quadrants
    DatasetDict({"train": split(30), "test": split(25)}).save_to_disk(str(root / "LabHC__bias_in_bios"))
    return root


def test_sparse_probing_reads_hub_data_from_a_local_mirror(small, tmp_path):
    """SAE Bench's original sparse probing, end to end, on bias_in_bios served from --saebench-data: the JSON
    meets SAE Bench's schema, and the raw-activation probes separate the professions the texts spell out."""
    mirror = bias_in_bios_mirror(tmp_path / "mirror")
    sets = [
        'sparse_probing.dataset_names=["LabHC/bias_in_bios_class_set1"]',
        "sparse_probing.probe_train_set_size=40",
        "sparse_probing.probe_test_set_size=40",
        "sparse_probing.k_values=[1,5]",
    ]
    result = _bench(small["ckpt"], "sparse_probing", *sets, extra=("--saebench-data", str(mirror)))
    output = json.loads((small["ckpt"] / "saebench_sparse_probing.json").read_text())
    _schema_checked("sparse_probing", output, "evals/sparse_probing/eval_output_schema_sparse_probing.json")
    assert [d["dataset_name"] for d in output["eval_result_details"]] == [
        "LabHC/bias_in_bios_class_set1_results"
    ]
    llm = output["eval_result_metrics"]["llm"]["llm_test_accuracy"]
    assert llm > 0.9 and result["saebench/sparse_probing/llm_accuracy"] == llm


def test_hub_data_evals_need_their_data_before_any_work(small, tmp_path):
    from conftest import run_vsae

    before = sorted(p.name for p in small["ckpt"].iterdir())
    bad = run_vsae("eval", small["ckpt"], "--saebench", "sparse_probing", expect=2)
    assert "sparse_probing: needs its hub datasets: --saebench-data" in bad.stderr
    (tmp_path / "empty").mkdir()
    args = ("--saebench", "sparse_probing", "--saebench-data", tmp_path / "empty")
    bad = run_vsae("eval", small["ckpt"], *args, expect=2)
    assert "lacks LabHC/bias_in_bios for SAE Bench sparse_probing" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in small["ckpt"].iterdir()) == before


@pytest.mark.parametrize("name", ["scr", "tpp"])
def test_scr_and_tpp_read_hub_data_from_a_local_mirror(small, tmp_path, name):
    """SAE Bench's SCR and TPP end to end on the mirrored bias_in_bios: the JSON meets SAE Bench's schema and
    the ablation metrics exist for each requested number of latents. (Profession and gender are both
    perfectly separable here, so SCR's normalised metric is 0/0, which SAE Bench reports as None; its
    per-direction numbers are defined.)"""
    mirror = bias_in_bios_mirror(tmp_path / "mirror")
    sets = [
        f'{name}.dataset_names=["LabHC/bias_in_bios_class_set1"]',
        f"{name}.train_set_size=40",
        f"{name}.test_set_size=40",
        f"{name}.n_values=[2,5,20]",
        f"{name}.probe_epochs=2",
    ]
    result = _bench(small["ckpt"], name, *sets, extra=("--saebench-data", str(mirror)))
    output = json.loads((small["ckpt"] / f"saebench_{name}.json").read_text())
    _schema_checked(name, output, f"evals/scr_and_tpp/eval_output_schema_{name}.json")
    metrics = output["eval_result_metrics"][f"{name}_metrics"]
    headline = "scr_metric_threshold_20" if name == "scr" else "tpp_threshold_20_total_metric"
    assert result[f"saebench/{name}/top_20_metric"] == metrics[headline]
    defined = "scr_dir1_threshold_20" if name == "scr" else "tpp_threshold_20_total_metric"
    assert all(isinstance(metrics[defined.replace("20", str(n))], float) for n in (2, 5, 20))
    assert metrics[defined.replace("20", "10")] is None  # not asked for
