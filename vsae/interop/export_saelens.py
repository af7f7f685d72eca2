"""Export a checkpoint as a SAELens folder (cfg.json + sae_weights.safetensors): raw space,
decoder folded to unit rows, signed codes sign-split, deterministic inference rule."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from vsae.archs.checkpoint import atomic_dir, load_sae, read_cfg
from vsae.archs.fold import fold_to_unit, needs_sign_split, sign_split, uses_selection
from vsae.archs.sae import SAE
from vsae.errors import VsaeError
from vsae.interop import SAELENS_TENSORS
from vsae.store.faults import failpoint


def deployable(model: SAE) -> tuple[SAE, bool]:
    """The raw-space model SAELens and SAE Bench see: folded to unit rows, sign-split if signed."""
    folded = fold_to_unit(model)
    if needs_sign_split(folded):
        return sign_split(folded), True
    return folded, False


def saelens_architecture(model: SAE) -> str:
    cfg = model.cfg
    if cfg.sparsifier == "relu":
        return "standard"
    if cfg.sparsifier == "gate":
        return "gated"
    if cfg.sparsifier == "jumprelu":
        return "jumprelu"
    if uses_selection(model):
        if cfg.sparsifier == "topk":
            return "topk"
        raise VsaeError(f"{cfg.architecture}: the learned threshold is unset; train longer before exporting")
    return "jumprelu"  # threshold-rule inference of the top-k family


EXPORT_FILES = {"cfg.json", "sae_weights.safetensors"}


def check_export_target(checkpoint: Path, out: Path) -> None:
    """`out` must be new, empty, or an earlier vsae export: never the checkpoint, never someone's folder."""
    if out.resolve() == checkpoint.resolve():
        raise VsaeError(f"refusing to export {checkpoint} into itself; give another output folder")
    if out.exists() and not out.is_dir():
        raise VsaeError(f"{out} is a file; give a new or empty folder to export into")
    if not out.exists() or not any(out.iterdir()):
        return
    names = {p.name for p in out.iterdir()}
    earlier = names <= EXPORT_FILES and "cfg.json" in names and _is_vsae_export(out / "cfg.json")
    if not earlier:
        raise VsaeError(
            f"{out} holds files vsae did not export ({', '.join(sorted(names - EXPORT_FILES) or sorted(names))}); "
            "give a new or empty folder"
        )


def _is_vsae_export(cfg_file: Path) -> bool:
    try:
        return "vsae_architecture" in json.loads(cfg_file.read_text()).get("metadata", {})
    except (OSError, ValueError, AttributeError):
        return False


def _sae_lens_version() -> str:
    """The installed SAELens version (the format this export follows), else the first 6.x format."""
    try:
        from importlib.metadata import version

        return version("sae-lens")
    except Exception:  # not installed: the 6.0 format is what this writer produces
        return "6.0.0"


def export_saelens(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the SAELens folder for `checkpoint` into `out` (atomically; see check_export_target)."""
    check_export_target(Path(checkpoint), Path(out))
    meta = read_cfg(checkpoint)
    model, split = deployable(load_sae(checkpoint))
    arch = saelens_architecture(model)
    names = SAELENS_TENSORS[arch]
    state = model.state_dict()
    if arch == "jumprelu" and model.cfg.topk_family:
        state["threshold"] = state["threshold"].clamp(min=0)
    prov = meta.get("provenance", {})
    cfg = {
        "architecture": arch,
        "d_in": model.cfg.d_in,
        "d_sae": model.cfg.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": model.cfg.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": _sae_lens_version(),  # without it SAELens reads the folder as a pre-6.0 config
            "sae_lens_training_version": None,
            "model_name": prov.get("model_id"),
            "hook_name": prov.get("hook_name"),
            "hook_layer": prov.get("layer"),
            "context_size": prov.get("ctx_len"),
            "prepend_bos": True,
            "dataset_path": prov.get("dataset"),
            "vsae_architecture": meta["architecture"],
            "sign_split": split,
        },
    }
    if arch == "topk":
        cfg["k"] = model.cfg.k
    with atomic_dir(Path(out)) as tmp:
        save_file({n: state[n].detach().contiguous() for n in names}, tmp / "sae_weights.safetensors")
        failpoint("export_write")  # crash tests: kill half-way through an export
        (tmp / "cfg.json").write_text(json.dumps(cfg, indent=2))
    return Path(out)
