"""SAE Bench's original sparse probing: for each class of its hub datasets (bias_in_bios professions, Amazon
categories and sentiment, ag_news, europarl languages, github-code languages), probes on the top-k SAE
latents against probes on the raw activations (mean-pooled over each text). Its data comes from
`--saebench-data` (hub_data.py); the model is the checkpoint's own."""

from __future__ import annotations

from vsae.evaluate.saebench.context import BenchRun
from vsae.evaluate.saebench.hub_data import run_with_hub_data


def run_sparse_probing(run: BenchRun) -> dict:
    import sae_bench.evals.sparse_probing.main as probing
    from sae_bench.evals.sparse_probing.eval_config import SparseProbingEvalConfig

    return run_with_hub_data(run, probing, SparseProbingEvalConfig, "sparse_probing")
