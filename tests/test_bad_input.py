"""Bad input: one-line error, non-zero exit, nothing written."""

from __future__ import annotations

import pytest
from conftest import run_main

_capture = {}


@pytest.fixture(autouse=True)
def _stdio(capfd):
    _capture["fd"] = capfd


def run_vsae(*args, expect: int = 0):
    """The console entry point in process (exit code, stdout, stderr as a user sees them)."""
    proc = run_main(_capture["fd"], *args)
    assert proc.returncode == expect, (proc.returncode, proc.stderr)
    return proc


def _one_line_error(proc) -> str:
    text = (proc.stderr + proc.stdout).strip()
    assert text.startswith("error:") and "\n" not in text, text
    assert "Traceback" not in text
    return text


def test_unknown_model_is_refused(tmp_path):
    store = tmp_path / "acts"
    text = _one_line_error(run_vsae("harvest", "no-such-model", "--store", store, expect=2))
    assert "unknown model" in text
    assert not store.exists()


def test_hub_model_offline_names_the_alternatives(tmp_path):
    store = tmp_path / "acts"
    text = _one_line_error(run_vsae("harvest", "pythia-70m", "--layer", "1", "--store", store, expect=2))
    assert "EleutherAI/pythia-70m-deduped" in text and "smollm2-135m" in text
    assert not store.exists()


def test_layer_out_of_range_says_the_valid_range(tiny_model, tmp_path):
    store = tmp_path / "acts"
    text = _one_line_error(run_vsae("harvest", tiny_model, "--layer", "7", "--store", store, expect=2))
    assert "0..1" in text
    assert not store.exists()


def test_unknown_architecture_lists_the_valid_ones(store, tmp_path):
    text = _one_line_error(
        run_vsae("train", "--store", store, "--arch", "nope", "--out", tmp_path / "o", expect=2)
    )
    assert "vsae_topk" in text and "batchtopk" in text
    assert not (tmp_path / "o").exists()


def test_store_that_does_not_exist(tmp_path):
    text = _one_line_error(
        run_vsae("train", "--store", tmp_path / "missing", "--out", tmp_path / "o", expect=2)
    )
    assert "does not exist" in text
    assert not (tmp_path / "missing").exists()


def test_store_without_the_requested_table(store, tmp_path):
    text = _one_line_error(
        run_vsae("train", "--store", store, "--layer", "0", "--out", tmp_path / "o", expect=2)
    )
    assert "no table" in text and "resid_post.1" in text
    assert not (tmp_path / "o").exists()


def test_k_not_below_dict_size(store, tmp_path):
    text = _one_line_error(
        run_vsae(
            "train", "--store", store, "--dict-size", "16", "--k", "16", "--out", tmp_path / "o", expect=2
        )
    )
    assert "k=16" in text
    assert not (tmp_path / "o").exists()


def test_negative_coefficient_is_refused(store, tmp_path):
    text = _one_line_error(
        run_vsae(
            "train",
            "--store",
            store,
            "--arch",
            "standard",
            "--set",
            "l1_coeff=-1",
            "--out",
            tmp_path / "o",
            expect=2,
        )
    )
    assert "l1_coeff must be non-negative" in text
    assert not (tmp_path / "o").exists()


def test_var_flag_on_a_non_variational_architecture(store, tmp_path):
    text = _one_line_error(
        run_vsae(
            "train", "--store", store, "--arch", "topk", "--var-flag", "1", "--out", tmp_path / "o", expect=2
        )
    )
    assert "vsae_*" in text
    assert not (tmp_path / "o").exists()


def test_unknown_hyper_parameter_lists_the_valid_ones(store, tmp_path):
    text = _one_line_error(
        run_vsae("train", "--store", store, "--set", "sparsity=3", "--out", tmp_path / "o", expect=2)
    )
    assert "unknown hyper-parameter 'sparsity'" in text and "kl_scope" in text


def test_checkpoint_whose_d_in_differs_from_the_store(store, tmp_path):
    import json

    from vsae.archs.checkpoint import write_checkpoint
    from vsae.archs.registry import build_config
    from vsae.archs.sae import SAE

    meta = {
        "provenance": {
            "store": str(store),
            "store_table": "tiny-neox/resid_post.1",
            "site": "resid_post",
            "layer": 1,
        }
    }
    write_checkpoint(tmp_path / "ck", SAE(build_config("topk", 32, 128, {"k": 4})), 1.0, meta)
    text = _one_line_error(run_vsae("eval", tmp_path / "ck", expect=2))
    assert "d_in=32" in text and "d=64" in text
    assert not (tmp_path / "ck" / "eval.json").exists()
    assert json.loads((tmp_path / "ck" / "cfg.json").read_text())["d_in"] == 32
