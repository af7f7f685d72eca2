"""SAE Bench's original sparse probing: for each class of its hub datasets (bias_in_bios professions, Amazon
categories and sentiment, ag_news, europarl languages, github-code languages), probes on the top-k SAE
latents against probes on the raw activations (mean-pooled over each text). Its data comes from
`--saebench-data` (hub_data.py); the model is the checkpoint's own."""

from __future__ import annotations

import contextlib

from vsae.evaluate.saebench.context import BenchRun
from vsae.evaluate.saebench.hub_data import served
from vsae.evaluate.saebench.model import handed_to

CPU_DEFAULTS = {"llm_batch_size": 32, "llm_dtype": "float32"}


@contextlib.contextmanager
def shape_checks_off():
    """SAE Bench 0.6.0's `train_probe_on_activations` is @jaxtyped with `train_dataset_size` bound to the
    examples of one class, and calls `train_sklearn_probe`, whose hint reuses that name for the binary set
    (the class plus as many negatives: twice as many). Under jaxtyping 0.3 the nested check shares the
    outer binding and every run fails; the hints are checks, not computation, so they are switched off."""
    import jaxtyping

    before = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", before)


def run_sparse_probing(run: BenchRun) -> dict:
    import sae_bench.evals.sparse_probing.main as probing
    from sae_bench.evals.sparse_probing.eval_config import SparseProbingEvalConfig

    loaded, model = run.language_model()
    config = run.config(
        SparseProbingEvalConfig, "sparse_probing", model_name=str(loaded.model_id), **CPU_DEFAULTS
    )
    sae = run.bench_sae()
    with run.scratch() as tmp, handed_to(probing, model), served(run.data), shape_checks_off():
        results = probing.run_eval(
            config,
            [("vsae", sae)],
            "cpu",
            str(tmp / "out"),
            force_rerun=True,
            save_activations=False,
            artifacts_path=str(tmp / "artifacts"),
        )
    return next(iter(results.values()))
