"""SAE Bench's feature-absorption eval (first-letter spelling) on the checkpoint's own model.

It needs no dataset: the prompts come from the tokenizer's vocabulary. SAE Bench's `run_eval` runs as it
is; vsae hands it the model (its loader knows only hub names), keeps its probe and result caches in a
scratch folder (by default they live inside the installed package, keyed by model name only, so two
models of one name would share a probe), and stops its forward passes after the hook's block.

SAE Bench gives up, printing a message and writing nothing, when too few letters have a linear probe
with F1 above `min_GT_probe_f1` (it recommends models of ≥ 2B parameters). vsae records that as a result:
`scored: false` with the reason and the per-letter probe F1 it saw."""

from __future__ import annotations

import functools
import json
from dataclasses import asdict

from vsae.evaluate.saebench.context import BenchRun
from vsae.evaluate.saebench.model import handed_to

# SAE Bench re-encodes every prompt each epoch of its k-sparse probes unless asked to encode once (its own
# option; the same numbers): on the tiny model 92 of 330 s
CPU_DEFAULTS = {"precalc_k_sparse_probe_sae_acts": True, "llm_batch_size": 32, "llm_dtype": "float32"}


def run_absorption(run: BenchRun) -> dict:
    from unittest import mock

    import sae_bench.evals.absorption.main as absorption
    from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig

    loaded, model = run.language_model()
    config = run.config(AbsorptionEvalConfig, "absorption", model_name=str(loaded.model_id), **CPU_DEFAULTS)
    sae = run.bench_sae()
    seed_everything(config.random_seed)
    with run.scratch() as tmp:
        probes, probing, spelling = tmp / "probes", tmp / "k_sparse_probing", tmp / "feature_absorption"
        k_sparse = functools.partial(
            absorption.run_k_sparse_probing_experiment, experiment_dir=probing, probes_dir=probes
        )
        absorbed = functools.partial(
            absorption.run_feature_absortion_experiment,
            experiment_dir=spelling,
            sparse_probing_experiment_dir=probing,
            probes_dir=probes,
        )
        with (
            handed_to(absorption, model),
            mock.patch.object(absorption, "run_k_sparse_probing_experiment", k_sparse),
            mock.patch.object(absorption, "run_feature_absortion_experiment", absorbed),
        ):
            results = absorption.run_eval(config, [("vsae", sae)], "cpu", str(tmp / "out"), force_rerun=True)
        if results:
            return next(iter(results.values()))
        probe_f1 = json.loads(
            next((tmp / "artifacts" / "absorption").glob("*_k_sparse_probing.json")).read_text()
        )
    above = sum(row["f1_probe"] > config.min_GT_probe_f1 for row in probe_f1)
    return {
        "eval_type_id": "absorption_first_letter",
        "scored": False,
        "reason": (
            f"SAE Bench cannot evaluate absorption: {above} letter(s) have a probe F1 above "
            f"{config.min_GT_probe_f1}, it needs {config.min_feats_for_eval} (it recommends models of ≥ 2B parameters)"
        ),
        "eval_config": asdict(config),
        "probe_f1_by_letter": {row["letter"]: row["f1_probe"] for row in probe_f1},
    }


def seed_everything(seed: int) -> None:
    """SAE Bench's absorption has a `random_seed` it never applies: its probe splits then follow whatever state
    the process's generators are in (the result changes with what ran before; on a small vocabulary a letter
    can get no training example and the eval fails with a KeyError). vsae seeds them from that setting."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
