"""Sparsifiers: where the selection-site rule lives. One small object per sparsifier decides the active mask
(at the selection site), the training code, the inference code, its sparsity penalty and its after-step
update; `SAE` holds one and never branches on the sparsifier's name. A new sparsifier is one file here plus
an entry in `SPARSIFIERS`."""

from vsae.archs.sparsifiers.base import Sparsifier
from vsae.archs.sparsifiers.gate import Gate
from vsae.archs.sparsifiers.jumprelu import JumpReLU
from vsae.archs.sparsifiers.relu import ReLU
from vsae.archs.sparsifiers.topk import TopK

SPARSIFIERS: dict[str, Sparsifier] = {
    "relu": ReLU(),
    "gate": Gate(),
    "jumprelu": JumpReLU(),
    "topk": TopK(per_batch=False),
    "batchtopk": TopK(per_batch=True),
}

__all__ = ["SPARSIFIERS", "Sparsifier"]
