"""Import dictionary_learning checkpoints (`ae.pt` + `config.json`): dispatch on dict_class,
map keys, transpose Linear weights, and write a vsae checkpoint in raw space."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vsae.archs.checkpoint import convert_space, write_checkpoint
from vsae.archs.registry import build_config
from vsae.archs.sae import SAE
from vsae.errors import VsaeError

REFUSED = {
    "VSAEGatedAnneal",
    "MatryoshkaVSAEIso",
    "VSAEPriorsGaussian",
    "LaplacianTopK",
    "LaplacianTopKSAE",
    "IdentityDict",
}
NEEDS_RELU_MU = {"VSAEIsoGaussian", "VSAETopK"}
INEXACT = {
    "VSAEGated": "its signed magnitudes, absolute log-variance clamps and NaN scrubbing have no exact vsae_gated "
    "equivalent; pass --allow-inexact to convert it anyway (recorded as exact = false)"
}


def read_reference(file: Path, read):
    """`read(file)`, with a missing or unreadable file reported in one line."""
    try:
        return read(file)
    except FileNotFoundError as exc:
        raise VsaeError(f"{file} is missing") from exc
    except Exception as exc:  # json, pickle and safetensors raise many types for a damaged file
        raise VsaeError(
            f"{file} could not be read ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from exc


def _t(sd: dict, key: str) -> torch.Tensor:
    if key not in sd:
        raise VsaeError(f"ae.pt has no tensor {key!r} (keys: {', '.join(sorted(sd))})")
    return sd[key].float()


def _linear_family(sd: dict) -> tuple[dict, dict]:
    """encoder/decoder Linear layers → vsae tensors; b_dec from `bias` (standard) or `decoder.bias` (April)."""
    tensors = {
        "W_enc": _t(sd, "encoder.weight").T,
        "b_enc": _t(sd, "encoder.bias"),
        "W_dec": _t(sd, "decoder.weight").T,
    }
    if "decoder.bias" in sd:
        tensors["b_dec"] = _t(sd, "decoder.bias")
        return tensors, {"apply_b_dec_to_input": False, "decoder_norm": "free"}
    tensors["b_dec"] = _t(sd, "bias") if "bias" in sd else _t(sd, "b_dec")
    return tensors, {"apply_b_dec_to_input": True}


def import_dictionary_learning(
    folder: str | Path,
    out: str | Path,
    *,
    norm_factor: float | None = None,
    relu_mu: bool | None = None,
    logvar_convention: str = "bias_times_c",
    allow_inexact: bool = False,
) -> Path:
    """Convert `folder` (ae.pt + config.json) into a vsae checkpoint at `out`; returns `out`."""
    folder = Path(folder)
    config = read_reference(folder / "config.json", lambda f: json.loads(f.read_text()))
    trainer = config.get("trainer", config)
    dict_class = trainer.get("dict_class")
    trainer_class = trainer.get("trainer_class", "")
    if dict_class in REFUSED:
        raise VsaeError(f"{dict_class} has no exact vsae equivalent and is not imported")
    if dict_class in INEXACT and not allow_inexact:
        raise VsaeError(f"{dict_class}: {INEXACT[dict_class]}")
    sd = read_reference(folder / "ae.pt", lambda f: torch.load(f, map_location="cpu", weights_only=True))
    arch, tensors, overrides, notes = _map(dict_class, trainer_class, trainer, sd, relu_mu)
    variational = "W_enc_logvar" in tensors
    if variational and norm_factor is None:
        raise VsaeError(
            f"{dict_class} has a log-variance head: pass the training norm factor (--norm-factor)"
        )
    if variational:
        overrides |= {"var_flag": 1, "logvar_min": -6.0, "logvar_max": 2.0, "log_var_init": -6.0}
    elif arch.startswith("vsae"):
        overrides["var_flag"] = 0
    source = {"dict_class": dict_class, "trainer_class": trainer_class, "path": str(folder)}
    return write_imported(
        out, arch, tensors, overrides, notes, float(norm_factor or 1.0), source, logvar_convention
    )


def write_imported(
    out,
    arch: str,
    tensors: dict,
    overrides: dict,
    notes: list[str],
    c: float,
    source: dict,
    logvar_convention: str = "bias_times_c",
    provenance: dict | None = None,
) -> Path:
    """Build `arch` around raw-space reference tensors and write it as a vsae checkpoint at `out`;
    `imported_from` records the source and whether the conversion is exact (no notes)."""
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise VsaeError(
            f"{target} already exists and is not empty; import into a new folder (nothing was written)"
        )
    d_in, d_sae = tensors["W_enc"].shape
    raw = SAE(build_config(arch, d_in, d_sae, overrides))
    raw.space = "raw"
    model = _fill(raw, tensors, c, logvar_convention)
    imported = {**source, "exact": not notes, "notes": notes}
    write_checkpoint(Path(out), model, c, {"provenance": {**(provenance or {}), "imported_from": imported}})
    return Path(out)


def _map(dict_class, trainer_class, trainer, sd, relu_mu):
    notes: list[str] = []
    if dict_class in ("AutoEncoder", "StandardSAE", "AutoEncoderNew"):
        tensors, ov = _linear_family(sd)
        april = ov.get("decoder_norm") == "free" or trainer_class == "StandardTrainerAprilUpdate"
        arch = "standard_april" if april else "standard"
        if trainer_class == "StandardTrainerAprilUpdate":
            ov = {"apply_b_dec_to_input": ov["apply_b_dec_to_input"], "decoder_norm": "free"}
        return arch, tensors, ov, notes
    if dict_class == "GatedAutoEncoder":
        tensors = {
            "W_enc": _t(sd, "encoder.weight").T,
            "W_dec": _t(sd, "decoder.weight").T,
            "b_dec": _t(sd, "decoder_bias"),
            "b_gate": _t(sd, "gate_bias"),
            "b_mag": _t(sd, "mag_bias"),
            "r_mag": _t(sd, "r_mag"),
        }
        return "gated", tensors, {}, notes
    if dict_class == "VSAEGated":
        return _map_vsae_gated(trainer, sd, notes)
    if dict_class in ("AutoEncoderTopK", "BatchTopKSAE"):
        tensors, _ = _linear_family({k: v for k, v in sd.items() if k != "decoder.bias"})
        threshold = float(sd["threshold"]) if "threshold" in sd else -1.0
        tensors["threshold"] = torch.full((tensors["W_enc"].shape[1],), threshold)
        arch = "topk" if dict_class == "AutoEncoderTopK" else "batchtopk"
        return arch, tensors, {"k": int(sd["k"]) if "k" in sd else int(trainer["k"])}, notes
    if dict_class == "MatryoshkaBatchTopKSAE":
        tensors = {k: _t(sd, k) for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
        f = tensors["W_enc"].shape[1]
        sizes = [
            int(s) for s in (sd["group_sizes"].tolist() if "group_sizes" in sd else trainer["group_sizes"])
        ]
        tensors["threshold"] = torch.full((f,), float(sd.get("threshold", torch.tensor(-1.0))))
        return (
            "matryoshka",
            tensors,
            {
                "k": int(sd.get("k", torch.tensor(trainer.get("k", 32)))),
                "group_fractions": [s / f for s in sizes],
            },
            notes,
        )
    if dict_class in ("JumpReluAutoEncoder", "JumpReluSAE", "VSAEJumpReLU"):
        tensors = {k: _t(sd, k) for k in ("W_enc", "b_enc", "W_dec")}
        tensors["b_dec"] = _t(sd, "b_dec") if "b_dec" in sd else _t(sd, "bias")
        theta = _t(sd, "threshold")
        floored = (theta < 1e-6).nonzero().flatten().tolist()
        if floored:
            notes.append(f"thresholds of latents {floored[:10]} floored at 1e-6")
        tensors["threshold"] = theta.clamp(min=1e-6)
        arch = "vsae_jumprelu" if dict_class == "VSAEJumpReLU" else "jumprelu"
        if dict_class == "VSAEJumpReLU" and "W_enc_var" in sd:
            tensors["W_enc_logvar"], tensors["b_enc_logvar"] = _t(sd, "W_enc_var"), _t(sd, "b_enc_var")
        return (
            arch,
            tensors,
            {"apply_b_dec_to_input": bool(trainer.get("apply_b_dec_to_input", False))},
            notes,
        )
    if dict_class in NEEDS_RELU_MU | {
        "VSAETopKMasked",
        "VSAEBatchTopK",
        "VSAEMultiGaussian",
        "VSAEMixtureGaussian",
    }:
        return _map_vsae(dict_class, trainer, sd, relu_mu, notes)
    raise VsaeError(
        f"unknown dict_class {dict_class!r}; importable: AutoEncoder, GatedAutoEncoder, AutoEncoderTopK, ..."
    )


def _map_vsae(dict_class, trainer, sd, relu_mu, notes):
    recorded = trainer.get("relu_mu", trainer.get("use_relu"))
    if dict_class in NEEDS_RELU_MU:
        relu_mu = recorded if recorded is not None else relu_mu
        if relu_mu is None:
            raise VsaeError(
                f"{dict_class} does not record whether μ was ReLU'd: pass --relu-mu true or false"
            )
    else:
        relu_mu = False
    tensors, ov = _linear_family(sd)
    ov["relu_mu"] = bool(relu_mu)
    if "var_encoder.weight" in sd:
        tensors["W_enc_logvar"] = _t(sd, "var_encoder.weight").T
        tensors["b_enc_logvar"] = _t(sd, "var_encoder.bias")
    if dict_class in ("VSAETopK", "VSAETopKMasked", "VSAEBatchTopK"):
        ov["k"] = int(sd["k"]) if "k" in sd else int(trainer["k"])
        ov["topk_mode"] = "abs"  # the fork ranks |z| (vsae_batchtopk's own default is value mode)
        ov.pop("decoder_norm", None)
        if dict_class == "VSAETopKMasked":
            ov["kl_scope"] = "selected"
        arch = "vsae_batchtopk" if dict_class == "VSAEBatchTopK" else "vsae_topk"
    elif dict_class == "VSAEMultiGaussian":
        arch, ov["corr_rate"] = "vsae_multi", float(trainer.get("corr_rate", 0.5))
    elif dict_class == "VSAEMixtureGaussian":
        arch, ov["prior"] = "vsae_iso", "permean"
        if "prior_means" in sd:
            tensors["prior_mean"] = _t(sd, "prior_means")
    else:
        arch = "vsae_iso"
    return arch, tensors, ov, notes


@torch.no_grad()
def _fill(raw: SAE, tensors: dict, c: float, logvar_convention: str) -> SAE:
    """Load the reference tensors; log-variance tensors are converted from the reference's save rule (P-1)."""
    logvar = {k: tensors.pop(k) for k in ("W_enc_logvar", "b_enc_logvar") if k in tensors}
    state = raw.state_dict()
    for name, value in tensors.items():
        if name not in state or state[name].shape != value.shape:
            raise VsaeError(
                f"tensor {name} has shape {tuple(value.shape)}, expected {tuple(state.get(name, value).shape)}"
            )
        getattr(raw, name).copy_(value)
    if not logvar:
        return convert_space(raw, c, "normalized")
    model = convert_space(raw, c, "normalized")
    w, b = logvar["W_enc_logvar"], logvar["b_enc_logvar"]
    if logvar_convention == "bias_times_c":  # reference multiplied the bias by c at save time
        w_train, b_train = w, b / c
    elif logvar_convention == "weight_div_c":  # the fork's later fix
        w_train, b_train = w * c, b
    else:
        raise VsaeError(f"unknown logvar_convention {logvar_convention!r}")
    model.W_enc_logvar.copy_(w_train)
    model.b_enc_logvar.copy_(b_train)
    model.logvar_min.fill_(-6.0)
    model.logvar_max.fill_(2.0)
    return model


def _map_vsae_gated(trainer, sd, notes):
    """The shared encoder bias b_e folds into both paths, b_gate = gate_bias + b_e and
    b_mag = mag_bias + exp(r)·b_e with r = clamp(r_mag, ±5); the decoder bias is `decoder_bias` or
    `bias` (subtracted from the input) or `decoder.bias` (April mode, not subtracted)."""
    r = _t(sd, "r_mag").clamp(-5.0, 5.0)
    b_e = _t(sd, "encoder.bias")
    tensors = {
        "W_enc": _t(sd, "encoder.weight").T,
        "W_dec": _t(sd, "decoder.weight").T,
        "b_gate": _t(sd, "gate_bias") + b_e,
        "b_mag": _t(sd, "mag_bias") + torch.exp(r) * b_e,
        "r_mag": r,
    }
    if "decoder.bias" in sd:
        tensors["b_dec"], apply = _t(sd, "decoder.bias"), False
    else:
        tensors["b_dec"], apply = (_t(sd, "decoder_bias") if "decoder_bias" in sd else _t(sd, "bias")), True
    if "var_encoder.weight" in sd:
        tensors["W_enc_logvar"] = _t(sd, "var_encoder.weight").T
        tensors["b_enc_logvar"] = _t(sd, "var_encoder.bias")
    unit = bool(torch.allclose(tensors["W_dec"].norm(dim=1), torch.ones(1), atol=1e-4))
    notes.append(
        "VSAEGated converted inexactly: vsae_gated uses ReLU'd magnitudes and its own log-variance bounds "
        "where the reference had signed magnitudes, clamps and NaN scrubbing"
    )
    if not torch.equal(r, _t(sd, "r_mag")):
        notes.append("r_mag clamped to [-5, 5]")
    overrides = {"apply_b_dec_to_input": apply, "decoder_norm": "unit" if unit else "free"}
    return "vsae_gated", tensors, overrides, notes
