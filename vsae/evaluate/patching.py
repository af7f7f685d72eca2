"""CE-loss and KL recovered: splice the SAE reconstruction into the LM's forward pass with nnsight,
against the clean run and zero-ablation (non-special positions only, as the SAE never saw specials)."""

from __future__ import annotations

import numpy as np
import torch

from vsae.archs.sae import SAE
from vsae.errors import VsaeError
from vsae.harvest.models import load_model
from vsae.harvest.sites import envoy_at
from vsae.progress import Progress
from vsae.store.table import Table


def model_name(table: Table) -> str:
    """What to load for the table's model: the name it was harvested with, else its recorded id."""
    harvest_cfg = table.provenance.get("harvest", {})
    return harvest_cfg.get("model") or table.provenance["model_id"]


@torch.inference_mode()
def ce_recovered(
    sae: SAE, table: Table, max_windows: int = 32, batch_size: int = 8, lm=None, show_progress: bool = False
) -> dict:
    """CE of clean, SAE-patched and zero-ablated runs on held-out windows, and the recovered fraction."""
    from nnsight.modeling.transformers import TransformersModel

    prov = table.provenance
    if prov["port"] != "output":
        raise VsaeError(f"CE-loss recovered needs an output site; {prov['site']} is a module input")
    windows = table.heldout_windows()[:max_windows]
    if len(windows) == 0:
        raise VsaeError(f"table {table.path} has no complete held-out window for CE-loss recovered")
    if lm is None:
        loaded = load_model(model_name(table))
        lm = TransformersModel(loaded.model, tokenizer=loaded.tokenizer, task="text-generation")
    contexts = table.group["contexts"]
    special = np.asarray(prov["special_ids"], dtype=np.int64)
    sums = {"clean": 0.0, "sae": 0.0, "zero": 0.0, "kl_sae": 0.0, "kl_zero": 0.0}
    count = 0
    bar = Progress("eval CE/KL through the model", total=len(windows), unit="windows", enabled=show_progress)
    for start in bar.track(range(0, len(windows), batch_size), lambda s: min(batch_size, len(windows) - s)):
        ids_np = np.asarray(
            contexts[windows[start] : windows[min(start + batch_size, len(windows)) - 1] + 1], dtype=np.int64
        )
        ids = torch.from_numpy(ids_np)
        patch = torch.from_numpy(~np.isin(ids_np, special))
        logits = {
            mode: run_patched(lm, prov["module_path"], ids, patch, sae, mode)
            for mode in ("clean", "sae", "zero")
        }
        targets = ids[:, 1:]
        logp_clean = torch.log_softmax(logits["clean"][:, :-1].float(), dim=-1)
        for mode, lg in logits.items():
            logp = torch.log_softmax(lg[:, :-1].float(), dim=-1)
            sums[mode] += float(-logp.gather(-1, targets[..., None]).sum())
            if mode != "clean":
                sums[f"kl_{mode}"] += float((logp_clean.exp() * (logp_clean - logp)).sum())
        count += targets.numel()
    ce = {k: sums[k] / count for k in ("clean", "sae", "zero")}
    denom = ce["zero"] - ce["clean"]
    return {
        "ce_loss_clean": ce["clean"],
        "ce_loss_with_sae": ce["sae"],
        "ce_loss_zero_ablation": ce["zero"],
        "ce_loss_recovered": (ce["zero"] - ce["sae"]) / denom if denom else float("nan"),
        "kl_div_with_sae": sums["kl_sae"] / count,
        "kl_div_zero_ablation": sums["kl_zero"] / count,
        "kl_div_recovered": 1 - sums["kl_sae"] / sums["kl_zero"] if sums["kl_zero"] else float("nan"),
        "ce_windows": int(len(windows)),
    }


def run_patched(
    lm, module_path: str, ids: torch.Tensor, patch: torch.Tensor, sae: SAE, mode: str, capture: bool = False
):
    """Logits of one forward pass with the site's output kept (clean), replaced by the SAE's
    reconstruction (sae) or zeroed (zero) where `patch` is true; with `capture`, also the clean site output."""
    with lm.trace({"input_ids": ids, "attention_mask": torch.ones_like(ids)}):
        envoy = envoy_at(lm, module_path)
        h = envoy.output
        tensor = h[0] if isinstance(h, tuple) else h
        if capture:
            seen = tensor.save()
        if mode != "clean":
            new = sae(tensor.float()).to(tensor.dtype) if mode == "sae" else torch.zeros_like(tensor)
            new = torch.where(patch[..., None], new, tensor)
            envoy.output = (new, *h[1:]) if isinstance(h, tuple) else new
        logits = lm.output.logits.save()
    return (logits, seen) if capture else logits
