"""What a latent's decoder direction does: its nearest neighbours among the other directions, its direct
effect on the next-token logits through the model's unembedding, and a 2-D map of all directions."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def unit_rows(w_dec: torch.Tensor) -> torch.Tensor:
    return w_dec / w_dec.norm(dim=1, keepdim=True).clamp(min=1e-12)


@torch.no_grad()
def neighbours(w_dec: torch.Tensor, latents: list[int], n: int = 6) -> dict[int, list[tuple[int, float]]]:
    """The n latents whose decoder directions have the highest cosine with each of `latents`."""
    unit = unit_rows(w_dec.float())
    cos = unit[latents] @ unit.T
    cos[torch.arange(len(latents)), torch.tensor(latents)] = -2.0  # not itself
    vals, idx = cos.topk(min(n, unit.shape[0] - 1), dim=1)
    return {j: list(zip(idx[i].tolist(), vals[i].tolist(), strict=True)) for i, j in enumerate(latents)}


@torch.no_grad()
def decoder_map(w_dec: torch.Tensor) -> torch.Tensor:
    """[F, 2]: the unit decoder directions projected on their first two principal components."""
    unit = unit_rows(w_dec.float())
    centred = unit - unit.mean(0)
    _, _, v = torch.linalg.svd(centred[:: max(1, len(centred) // 8192)], full_matrices=False)
    return centred @ v[:2].T


@dataclass
class Unembedding:
    """The model's readout: logits = W_U · norm(h). `note` says how the final norm is treated."""

    w_u: torch.Tensor  # [V, D]
    gamma: torch.Tensor | None  # the final norm's elementwise weight
    centre: bool  # LayerNorm subtracts the mean over D; RMSNorm does not
    note: str


def final_norm_and_unembedding(model) -> Unembedding:
    """The final norm and output embedding of a Hugging Face causal LM (Llama, GPT-NeoX, GPT-2 families)."""
    base = model.base_model
    norm = next((getattr(base, n) for n in ("norm", "final_layer_norm", "ln_f") if hasattr(base, n)), None)
    w_u = model.get_output_embeddings().weight.detach().float()
    if norm is None:
        return Unembedding(w_u, None, False, "no final norm found: logits = W_U · d")
    centre = isinstance(norm, torch.nn.LayerNorm)
    gamma = norm.weight.detach().float() if getattr(norm, "weight", None) is not None else None
    kind = "LayerNorm (centred, then scaled by γ)" if centre else "RMSNorm (scaled by γ)"
    note = (
        f"direct logit effect W_U · (γ ⊙ {'(d − mean d)' if centre else 'd'}) through the final {kind}; the "
        "norm's per-token 1/rms factor is positive and left out (it scales, never reorders, the effects), "
        "and what later layers do with the direction is not included"
    )
    return Unembedding(w_u, gamma, centre, note)


@torch.no_grad()
def logit_effects(
    w_dec: torch.Tensor, latents: list[int], unembed: Unembedding, n: int = 10
) -> dict[int, tuple[list[tuple[int, float]], list[tuple[int, float]]]]:
    """Per latent, the n token ids its unit decoder direction most promotes and most suppresses."""
    d = unit_rows(w_dec[latents].float())
    if unembed.centre:
        d = d - d.mean(dim=1, keepdim=True)
    if unembed.gamma is not None:
        d = d * unembed.gamma
    logits = d @ unembed.w_u.T  # [L, V]
    up_v, up_i = logits.topk(n, dim=1)
    down_v, down_i = (-logits).topk(n, dim=1)
    return {
        j: (
            list(zip(up_i[i].tolist(), up_v[i].tolist(), strict=True)),
            list(zip(down_i[i].tolist(), (-down_v[i]).tolist(), strict=True)),
        )
        for i, j in enumerate(latents)
    }
