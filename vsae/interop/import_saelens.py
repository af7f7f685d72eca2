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
    if not isinstance(cfg, dict):
        raise VsaeError(f"{folder}/cfg.json is not a JSON object")
    norm = cfg.get("normalize_activations", "none")
    if norm not in (None, "none"):
        raise VsaeError(
            f"{folder} normalises its input ({norm!r}) inside the SAE; vsae imports raw-space SAEs only"
        )
    weights = read_reference(folder / "sae_weights.safetensors", load_file)
    arch = architecture(cfg, weights, folder)
    missing = [n for n in TENSORS[arch] if n not in weights]
    if missing:
        raise VsaeError(f"{folder}/sae_weights.safetensors lacks {', '.join(missing)} for a {arch} SAE")
    check_shapes(cfg, weights, arch, folder)
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
        overrides["k"] = cfg["k"]
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


def architecture(cfg: dict, weights: dict, folder: Path) -> str:
    """The SAELens architecture the folder holds. Like SAELens, a config without one is `standard` (or
    `topk` for a pre-6.0 `activation_fn: topk`), unless that contradicts what the folder holds."""
    if "architecture" in cfg:
        arch = cfg["architecture"]
        if arch not in TENSORS:
            raise VsaeError(
                f"{folder}/cfg.json: architecture {arch!r} is not imported; importable: {', '.join(TENSORS)}"
            )
        return arch
    kwargs = cfg.get("activation_fn_kwargs")
    if cfg.get("activation_fn") == "topk" and isinstance(kwargs, dict) and "k" in kwargs:
        cfg["k"] = kwargs["k"]
        return "topk"
    hints = [f"a {name!r} tensor" for name in ("threshold", "b_gate", "r_mag") if name in weights]
    hints += [f"the setting {key!r}" for key in ("k", "activation_fn") if key in cfg]
    if hints:
        raise VsaeError(
            f"{folder}/cfg.json names no architecture but the folder holds {hints[0]}; "
            f'add "architecture" ({", ".join(TENSORS)}) to cfg.json'
        )
    return "standard"


def check_shapes(cfg: dict, weights: dict, arch: str, folder: Path) -> None:
    """d_in, d_sae (and k for top-k) are positive integers that agree with the tensors."""
    for key in ("d_in", "d_sae") + (("k",) if arch == "topk" else ()):
        value = cfg.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise VsaeError(f"{folder}/cfg.json: {key} must be a positive integer (got {value!r})")
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    for name, shape in (("W_enc", (d_in, d_sae)), ("W_dec", (d_sae, d_in)), ("b_dec", (d_in,))):
        if tuple(weights[name].shape) != shape:
            raise VsaeError(
                f"{folder}: {name} has shape {tuple(weights[name].shape)}, but cfg.json's d_in={d_in}, "
                f"d_sae={d_sae} make it {shape}"
            )
    if arch == "topk" and cfg["k"] >= d_sae:
        raise VsaeError(f"{folder}/cfg.json: k={cfg['k']} must be below d_sae={d_sae}")
