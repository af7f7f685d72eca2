"""Import SAELens folders (`cfg.json` + `sae_weights.safetensors`) as vsae checkpoints: the architectures
SAELens and vsae share (standard, gated, jumprelu, topk), raw space, same outputs."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from vsae.errors import VsaeError
from vsae.interop import SAELENS_TENSORS
from vsae.interop.import_dl import read_reference, write_imported

TENSORS = SAELENS_TENSORS


def is_saelens_folder(folder: Path) -> bool:
    return (folder / "cfg.json").is_file() and (folder / "sae_weights.safetensors").is_file()


def import_saelens(folder: str | Path, out: str | Path, *, norm_factor: float | None = None) -> Path:
    """Convert the SAELens folder `folder` into a vsae checkpoint at `out`; returns `out`."""
    folder = Path(folder)
    cfg = read_reference(folder / "cfg.json", lambda f: json.loads(f.read_text()))
    arch = cfg.get("architecture", "standard")
    if arch not in TENSORS:
        raise VsaeError(f"SAELens architecture {arch!r} is not imported; importable: {', '.join(TENSORS)}")
    norm = cfg.get("normalize_activations", "none")
    if norm not in (None, "none"):
        raise VsaeError(
            f"{folder} normalises its input ({norm!r}) inside the SAE; vsae imports raw-space SAEs only"
        )
    weights = read_reference(folder / "sae_weights.safetensors", load_file)
    missing = [n for n in TENSORS[arch] if n not in weights]
    if missing:
        raise VsaeError(f"{folder}/sae_weights.safetensors lacks {', '.join(missing)} for a {arch} SAE")
    tensors = {n: weights[n].float() for n in TENSORS[arch]}
    unit = bool(torch.allclose(tensors["W_dec"].norm(dim=1), torch.ones(1), atol=1e-4))
    overrides: dict = {"apply_b_dec_to_input": bool(cfg.get("apply_b_dec_to_input", True))}
    notes: list[str] = []
    if arch == "topk":
        if not unit:
            raise VsaeError(
                "this topk SAE's decoder rows are not unit norm: folding them would change which latents "
                "win the top-k, so it has no exact vsae topk equivalent"
            )
        overrides["k"] = int(cfg["k"])
    else:
        overrides["decoder_norm"] = "unit" if unit else "free"
    if arch == "jumprelu":
        floored = (tensors["threshold"] < 1e-6).nonzero().flatten().tolist()
        if floored:
            notes.append(f"thresholds of latents {floored[:10]} floored at 1e-6")
        tensors["threshold"] = tensors["threshold"].clamp(min=1e-6)
    meta = cfg.get("metadata", {}) | {k: cfg[k] for k in ("hook_name", "model_name") if k in cfg}
    provenance = {
        "model_id": meta.get("model_name"),
        "hook_name": meta.get("hook_name"),
        "layer": meta.get("hook_layer"),
    }
    source = {"format": "saelens", "architecture": arch, "path": str(folder)}
    return write_imported(
        out, arch, tensors, overrides, notes, float(norm_factor or 1.0), source, provenance=provenance
    )
