"""The interface every sparsifier implements (defaults: a hard mask, no penalty, nothing after a step)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

if TYPE_CHECKING:
    from vsae.archs.sae import SAE, StepContext


class Sparsifier:
    """Stateless: its parameters (θ, p-annealing state) live on the SAE it is called with.

    `site` is what selection looks at (μ by default, the sample z under selection_site = sample), `mu` the
    posterior mean, `pi_gate` the gate pre-activation of gated encoders (else None)."""

    def declare(self, sae: SAE) -> None:
        """Registers this sparsifier's own parameters or buffers on the SAE (none by default)."""

    def mask(self, sae: SAE, site: Tensor, mu: Tensor, pi_gate: Tensor | None) -> Tensor:
        """The training rule's active mask M [N, F]."""
        raise NotImplementedError

    def train_code(self, sae: SAE, z: Tensor, site: Tensor, mask: Tensor) -> Tensor:
        """The training code f: the noise rides on the selected entries, f = M ⊙ z."""
        return z * mask

    def support(self, sae: SAE, f: Tensor, mask: Tensor) -> Tensor:
        """Where f can be non-zero (the sparse decoder multiplies only there)."""
        return mask

    def infer(self, sae: SAE, site: Tensor, values: Tensor, mu: Tensor, pi_gate: Tensor | None) -> Tensor:
        """The inference code: `values` (μ, or z when sampling) where the inference rule keeps them."""
        return values * self.mask(sae, site, mu, pi_gate)

    def deterministic(self, mu: Tensor, mask: Tensor) -> Tensor:
        """f_det = M ⊙ μ, the code with the noise removed."""
        return mu * mask

    def penalty(
        self,
        sae: SAE,
        x: Tensor,
        site: Tensor,
        mu: Tensor,
        pi_gate: Tensor | None,
        norms: Tensor,
        ctx: StepContext,
        terms: dict,
        raw: dict,
    ) -> None:
        """Adds this sparsifier's sparsity terms (weighted, into `terms`; unweighted, into `raw`)."""

    def after_step(self, sae: SAE, ctx: StepContext, stats: dict) -> None:
        """Updates after the optimiser step (θ clamps and EMAs, p-annealing)."""
