"""SAE Bench's core eval on a checkpoint, offline, and vsae's own numbers under SAE Bench's conventions.

The language model is rebuilt as a TransformerLens HookedTransformer from the same local weights vsae
harvested with (no weight processing, so activations at the hook equal the stored ones), the text is the
store's held-out context windows, and the SAE is the checkpoint's deployed model behind the SAE Bench adapter.
`saebench_convention` computes the same quantities with vsae's own code (nnsight on the Hugging Face model) under SAE
Bench's conventions, so the two can be compared token for token.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vsae.archs.sae import SAE
from vsae.errors import VsaeError
from vsae.files import write_atomic
from vsae.store.table import Table


@dataclass
class CoreSettings:
    """How much of the held-out text SAE Bench's core eval reads."""

    batch_prompts: int = 8
    """Context windows per batch."""
    batches: int = 2
    """Batches for each of SAE Bench's two passes (reconstruction, sparsity/variance)."""


def heldout_tokens(table: Table, settings: CoreSettings) -> torch.Tensor:
    """The first held-out context windows (BOS first, specials included) as [n, ctx_len] token ids."""
    windows = table.heldout_windows()
    n = settings.batch_prompts * settings.batches
    if len(windows) < n:
        raise VsaeError(
            f"table {table.path} has {len(windows)} held-out windows; SAE Bench core needs {n} "
            "(lower --saebench-batches or harvest with a larger --heldout-fraction)"
        )
    ids = np.asarray(table.group["contexts"][windows[0] : windows[n - 1] + 1], dtype=np.int64)
    return torch.from_numpy(ids)


def run_core(checkpoint: Path, table: Table, loaded, settings: CoreSettings) -> dict:
    """SAE Bench's `run_evals` (core) on the held-out windows; returns its scalar metrics."""
    from datasets import Dataset
    from sae_bench.evals.core.eval_config import CoreEvalConfig
    from sae_bench.evals.core.main import run_evals
    from sae_bench.sae_bench_utils.general_utils import load_and_format_sae
    from sae_lens.training.activations_store import ActivationsStore

    from vsae.evaluate.saebench.model import hooked_transformer
    from vsae.interop.saebench import saebench_sae

    tokens = heldout_tokens(table, settings)
    model = hooked_transformer(loaded)  # a fresh one: core runs the whole model (CE, KL), no early stop
    _, sae, _ = load_and_format_sae("vsae", saebench_sae(checkpoint), "cpu")
    store = ActivationsStore(
        model=model,
        dataset=Dataset.from_dict({"input_ids": tokens.tolist()}),
        streaming=False,
        hook_name=sae.cfg.hook_name,
        hook_head_index=None,
        context_size=tokens.shape[1],
        d_in=sae.cfg.d_in,
        n_batches_in_buffer=2,
        total_training_tokens=tokens.numel(),
        store_batch_size_prompts=settings.batch_prompts,
        train_batch_size_tokens=settings.batch_prompts * tokens.shape[1],
        prepend_bos=True,
        normalize_activations="none",
        device=torch.device("cpu"),
        dtype="float32",
    )
    config = CoreEvalConfig(
        model_name=str(loaded.model_id),
        batch_size_prompts=settings.batch_prompts,
        n_eval_reconstruction_batches=settings.batches,
        n_eval_sparsity_variance_batches=settings.batches,
        context_size=tokens.shape[1],
        compute_kl=True,
        compute_ce_loss=True,
        compute_l2_norms=True,
        compute_sparsity_metrics=True,
        compute_variance_metrics=True,
        compute_featurewise_density_statistics=False,
        compute_featurewise_weight_based_metrics=False,
    )
    metrics, _ = run_evals(sae, store, model, config)
    return {"eval_type_id": "core", "eval_config": dataclasses.asdict(config), "eval_result_metrics": metrics}


@torch.inference_mode()
def saebench_convention(
    sae: SAE, tokens: torch.Tensor, module: str, lm, batch_prompts: int, progress=None
) -> dict:
    """vsae's own numbers on `tokens` ([n, ctx] ids, BOS first) under SAE Bench's conventions: every
    position (BOS too) encoded and patched, zero ablation at the hook, explained variance over
    E‖x‖² − (E‖x‖²/d)², `mse` as E‖x − x̂‖² divided by the tokens of a batch of `batch_prompts` windows,
    the KL per window averaged over positions. docs/conventions.md sets them beside vsae's own."""
    from vsae.evaluate.patching import run_patched

    sums = {"sq": 0.0, "resid": 0.0, "l0": 0.0, "cos": 0.0, "ce_clean": 0.0, "ce_sae": 0.0, "ce_zero": 0.0}
    sums |= {"kl_sae": 0.0, "kl_zero": 0.0}
    n_tok = n_pred = 0
    for start in range(0, len(tokens), batch_prompts):
        ids = tokens[start : start + batch_prompts]
        everywhere = torch.ones_like(ids, dtype=torch.bool)
        clean, x = run_patched(lm, module, ids, everywhere, sae, "clean", capture=True)
        x = x.float().reshape(-1, x.shape[-1])
        f = sae.encode(x)
        x_hat = sae.decode(f)
        sums["sq"] += float(x.square().sum())
        sums["resid"] += float((x - x_hat).square().sum())
        sums["l0"] += float((f != 0).sum())
        sums["cos"] += float(torch.nn.functional.cosine_similarity(x, x_hat, dim=-1).sum())
        n_tok += x.shape[0]
        logp_clean = torch.log_softmax(clean.float(), dim=-1)
        targets = ids[:, 1:, None]
        sums["ce_clean"] += float(-logp_clean[:, :-1].gather(-1, targets).sum())
        for mode in ("sae", "zero"):
            logp = torch.log_softmax(run_patched(lm, module, ids, everywhere, sae, mode).float(), dim=-1)
            sums[f"ce_{mode}"] += float(-logp[:, :-1].gather(-1, targets).sum())
            sums[f"kl_{mode}"] += float((logp_clean.exp() * (logp_clean - logp)).sum(-1).mean(-1).sum())
        n_pred += targets.numel()
        if progress is not None:
            progress.advance(len(ids))
    mean_sq = sums["sq"] / n_tok
    d = sae.cfg.d_in
    ce = {k: sums[f"ce_{k}"] / n_pred for k in ("clean", "sae", "zero")}
    kl = {k: sums[f"kl_{k}"] / len(tokens) for k in ("sae", "zero")}
    return {
        "l0": sums["l0"] / n_tok,
        "explained_variance": 1 - (sums["resid"] / n_tok) / (mean_sq - (mean_sq / d) ** 2),
        "mse": sums["resid"] / n_tok / (batch_prompts * tokens.shape[1]),
        "cossim": sums["cos"] / n_tok,
        "ce_loss_score": (ce["zero"] - ce["sae"]) / (ce["zero"] - ce["clean"]),
        "kl_div_score": (kl["zero"] - kl["sae"]) / kl["zero"],
        "ce_loss_without_sae": ce["clean"],
        "ce_loss_with_sae": ce["sae"],
        "ce_loss_with_ablation": ce["zero"],
        "kl_div_with_sae": kl["sae"],
        "kl_div_with_ablation": kl["zero"],
        "tokens": n_tok,
    }


def write_results(checkpoint: Path, name: str, result: dict) -> Path:
    """`saebench_<eval>.json` beside the checkpoint's eval.json."""
    path = Path(checkpoint) / f"saebench_{name}.json"
    write_atomic(path, json.dumps(result, indent=2, default=str))
    return path
