"""Wrap any vsae checkpoint as an SAE Bench custom SAE (docs/architectures.md): raw space, unit decoder rows,
sign-split signed codes, deterministic single-tensor `encode` with the inference rule."""

from __future__ import annotations

from pathlib import Path

import torch

from vsae.archs.checkpoint import load_sae, read_cfg
from vsae.errors import VsaeError
from vsae.interop.export_saelens import deployable


def saebench_sae(checkpoint: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """A `sae_bench.custom_saes.base_sae.BaseSAE` backed by the checkpoint's deployed model."""
    try:
        from sae_bench.custom_saes.base_sae import BaseSAE
    except ImportError as exc:
        raise VsaeError(
            "SAE Bench is not installed; run `make setup` (it installs the saebench extra)"
        ) from exc
    meta = read_cfg(checkpoint)
    model, _ = deployable(load_sae(checkpoint))
    prov = meta["provenance"]

    class VsaeBenchSAE(BaseSAE):
        def __init__(self):
            super().__init__(
                model.cfg.d_in,
                model.cfg.d_sae,
                prov["model_id"],
                int(prov["layer"]),
                torch.device(device),
                dtype,
                hook_name=prov["hook_name"],
            )
            self.inner = model.to(device)
            with torch.no_grad():
                self.W_enc.copy_(model.W_enc)
                self.W_dec.copy_(model.W_dec)
                self.b_dec.copy_(model.b_dec)
                if hasattr(model, "b_enc"):
                    self.b_enc.copy_(model.b_enc)
                elif hasattr(model, "b_gate"):
                    self.b_enc.copy_(model.b_gate)

        def encode(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner.encode(x.float()).to(x.dtype)

        def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
            return self.inner.decode(feature_acts.float()).to(feature_acts.dtype)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.decode(self.encode(x))

    return VsaeBenchSAE()
