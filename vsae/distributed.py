"""torch.distributed for the training loop (global firing, token counts and statistics across ranks) and the harvest: the same code
runs at world size 1, where every collective below is the identity."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from vsae.errors import VsaeError


@dataclass(frozen=True)
class World:
    """This process's place in the job."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> str:
        """`cuda` means this rank's local GPU under torchrun."""
        return f"cuda:{self.local_rank}" if requested == "cuda" and self.active else requested

    # ------------------------------------------------------------------ collectives
    def any(self, mask: torch.Tensor) -> torch.Tensor:
        """Element-wise OR over ranks (fired latents)."""
        if not self.active:
            return mask
        t = mask.to(torch.uint8)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.bool()

    def all_true(self, flag: bool, device) -> bool:
        if not self.active:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())

    def mean_defined(self, value: torch.Tensor | None, device) -> torch.Tensor | None:
        """Mean over the ranks where `value` is defined; None if it is undefined everywhere."""
        if not self.active:
            return value
        t = torch.zeros(2, dtype=torch.float64, device=device)
        if value is not None:
            t[0], t[1] = float(value), 1.0
        dist.all_reduce(t)
        return None if t[1] == 0 else (t[0] / t[1]).float()

    def mean_pair(self, pair: tuple[float, float] | None, device) -> tuple[float, float] | None:
        if not self.active or pair is None:
            return pair
        t = torch.tensor(pair, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return float(t[0]) / self.size, float(t[1]) / self.size

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """All ranks' tensors concatenated in rank order."""
        if not self.active:
            return x
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    def broadcast(self, tensors) -> None:
        """Copy rank 0's values into every rank's tensors, in place."""
        if not self.active:
            return
        for t in tensors:
            dist.broadcast(t.data if isinstance(t, torch.nn.Parameter) else t, src=0)

    def on_main(self, fn):
        """Run `fn` on rank 0 only and hand its result to every rank; its error stops every rank."""
        if not self.active:
            return fn()
        box: list = [None]
        error = None
        if self.is_main:
            try:
                box[0] = ("ok", fn())
            except Exception as exc:  # every rank must hear of it, or the others wait forever
                error = exc
                box[0] = ("error", str(exc))
        dist.broadcast_object_list(box, src=0)
        if error is not None:
            raise error
        kind, value = box[0]
        if kind == "error":
            raise VsaeError(f"rank 0: {value}")
        return value

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def setup(requested_device: str = "cpu") -> World:
    """Join the torchrun job if there is one (gloo on CPU, nccl on GPUs)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        backend = "nccl" if requested_device.startswith("cuda") and torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    world = World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if requested_device == "cuda":
        torch.cuda.set_device(world.local_rank)
    return world
