"""SAE Bench's minimum-description-length eval: the latents quantised into bins (per bin count and top-k),
the MSE the quantised code still reaches, and the bits it takes to describe. Its text is the store's own
context windows (the held-out ones first) in place of fineweb; SAE Bench reads it through SAELens's
ActivationsStore, which stops the model after the hook's block. SAE Bench ships no JSON schema for it.

SAE Bench 0.6.0's mdl runs only as a script on a GPU: called as a library it reads a module global `config`
that its __main__ block sets, and `calculate_dl` calls `.cuda()`. vsae sets the global and, without CUDA,
lets `.cuda()` leave a tensor where it is; the arithmetic is SAE Bench's."""

from __future__ import annotations

import contextlib

import numpy as np

from vsae.evaluate.saebench.context import BenchRun

# SAE Bench's grid is 6 bin counts × 3 values of k, each reading 64-window batches: minutes each on 2 cores
CPU_DEFAULTS = {"num_bins_values": [4, 8, 16], "k_values": [16, 32], "sae_batch_size": 16}


def store_windows(run: BenchRun):
    """The table's context windows as a `datasets.Dataset` of `input_ids`, held-out windows first."""
    from datasets import Dataset

    contexts = run.table.group["contexts"]
    held = run.table.heldout_windows()
    order = np.concatenate([held, np.setdiff1d(np.arange(contexts.shape[0]), held)])
    ids = np.asarray(contexts[:], dtype=np.int64)[order]
    return Dataset.from_dict({"input_ids": ids.tolist()})


def run_mdl(run: BenchRun) -> dict:
    from unittest import mock

    import sae_bench.evals.mdl.main as mdl
    import torch
    from sae_bench.evals.mdl.eval_config import MDLEvalConfig

    loaded, model = run.language_model()
    sae = run.bench_sae()
    context = int(run.table.group["contexts"].shape[1])
    defaults = CPU_DEFAULTS | {"model_name": str(loaded.model_id), "context_length": context}
    config = run.config(MDLEvalConfig, "mdl", **defaults)
    sae.cfg.metadata.context_size = context  # the windows are whole contexts: no re-chunking
    sae.cfg.metadata.prepend_bos = False  # each stored window already starts with BOS
    # SAE Bench 0.6.0 reads its batch size from a module global `config` that only its script's __main__
    # block sets (called as a library it raises NameError): set it as the script does
    with contextlib.ExitStack() as patches:
        patches.enter_context(mock.patch.object(mdl, "config", config, create=True))
        if not torch.cuda.is_available():  # calculate_dl moves its entropies with a hard-coded .cuda()
            patches.enter_context(mock.patch.object(torch.Tensor, "cuda", lambda t, *_a, **_k: t))
        results = mdl.run_eval_single_sae(config, sae, model, "cpu", dataset_name=store_windows(run))
    return {"eval_type_id": "mdl", "eval_config": vars(config), "eval_results": results}
