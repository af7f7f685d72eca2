"""Sparse fast paths for k-sparse codes (exact, not approximations):

* `sparse_decode(f, mask, W_dec)` / `csr_decode`: x̂ = f W_dec as a CSR product over the active atoms
  only, with the gradient for f at every active position (a sampled dense-dense product) and for W_dec.
* `encode_linear(x, W, b)`: z = x W + b whose backward uses CSR products when the incoming gradient is
  sparse (top-k training without a dense KL: only selected and AuxK entries are non-zero).
* `selected_linear`: the selected entries of an encoder output computed without autograd, with the
  same sparse backward: the fused top-k step (archs/fused_topk.py) never touches an N×F gradient.

Both fall back to dense matmuls when the code is not sparse enough for the sparse path to win.
"""

from __future__ import annotations

import warnings

import torch

DENSITY_LIMIT = 0.05  # above this fraction of non-zeros dense BLAS wins
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
torch.sparse.check_sparse_tensor_invariants.disable()  # explicit: we build valid CSR ourselves


def _density(values: torch.Tensor) -> float:
    """Fraction of non-zeros of a mask or a tensor, without materialising a copy."""
    return int(torch.count_nonzero(values)) / max(1, values.numel())


def _csr(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(crow, cols, rows) of a boolean [N, F] mask, row-major as CSR needs."""
    rows, cols = mask.nonzero(as_tuple=True)
    crow = torch.zeros(mask.shape[0] + 1, dtype=torch.int64, device=mask.device)
    crow[1:] = mask.sum(dim=1).cumsum(0)
    return crow, cols, rows


def _transposed_mm(cols, rows, vals, n: int, f: int, dense: torch.Tensor) -> torch.Tensor:
    """Sᵀ · dense for the [n, f] matrix S with entries (rows, cols, vals), through the CSR form of Sᵀ (the
    entries ordered by column): half the time of the same product from COO on the CPU."""
    order = torch.argsort(cols, stable=True)  # stable: row indices stay ascending within each column
    crow_t = torch.zeros(f + 1, dtype=torch.int64, device=cols.device)
    crow_t[1:] = torch.bincount(cols, minlength=f).cumsum(0)
    return torch.sparse_csr_tensor(crow_t, rows[order], vals[order], (f, n)) @ dense


class _CSRDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, vals, crow, cols, rows, w_dec):
        shape = (crow.numel() - 1, w_dec.shape[0])
        out = torch.sparse_csr_tensor(crow, cols, vals, shape) @ w_dec
        ctx.save_for_backward(crow, cols, rows, vals, w_dec)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        crow, cols, rows, vals, w_dec = ctx.saved_tensors
        grad_out = grad_out.to(w_dec.dtype)
        shape = (crow.numel() - 1, w_dec.shape[0])
        grad_vals = grad_w = None
        if ctx.needs_input_grad[0]:
            pattern = torch.sparse_csr_tensor(crow, cols, torch.zeros_like(vals), shape)
            grad_vals = torch.sparse.sampled_addmm(pattern, grad_out.contiguous(), w_dec.T, beta=0.0).values()
        if ctx.needs_input_grad[4]:
            grad_w = _transposed_mm(cols, rows, vals, shape[0], w_dec.shape[0], grad_out)
        return grad_vals, None, None, None, grad_w


def csr_decode(
    vals: torch.Tensor, crow: torch.Tensor, cols: torch.Tensor, rows: torch.Tensor, w_dec: torch.Tensor
) -> torch.Tensor:
    """S W_dec for the CSR code S = (crow, cols, vals) [N, F]; gradients for vals and W_dec only. Runs in
    W_dec's precision whatever the autocast state (sparse kernels have no bf16 CPU implementation)."""
    with torch.autocast(device_type=w_dec.device.type, enabled=False):
        return _CSRDecode.apply(vals.to(w_dec.dtype), crow, cols, rows, w_dec)


def sparse_decode(f: torch.Tensor, mask: torch.Tensor, w_dec: torch.Tensor) -> torch.Tensor:
    """f W_dec for a code that is zero outside `mask` ([N, F] bool); gradient flows at mask positions."""
    if f.dim() != 2 or _density(mask) > DENSITY_LIMIT:
        return f @ w_dec
    crow, cols, rows = _csr(mask)
    return csr_decode(f[rows, cols], crow, cols, rows, w_dec)


def _linear_grads(x, w, crow, cols, rows, vals, shape, needs=(True, True, True)):
    """Gradients of u = x W + b for an incoming gradient that is the CSR matrix (crow, cols, vals); only
    those `needs` asks for (training data needs none: its W.T copy and product are skipped)."""
    grad_x = grad_w = grad_b = None
    if needs[0]:
        grad_x = torch.sparse_csr_tensor(crow, cols, vals, shape) @ w.T.contiguous()
    if needs[1]:
        grad_w = _transposed_mm(cols, rows, vals, shape[0], shape[1], x).T
    if needs[2]:
        grad_b = torch.zeros(shape[1], dtype=vals.dtype, device=vals.device).index_add_(0, cols, vals)
    return grad_x, grad_w, grad_b


class _EncodeLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        return torch.addmm(b, x, w)

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        grad = grad.to(x.dtype)  # under bf16 autocast the incoming gradient may be bf16
        if _density(grad) > DENSITY_LIMIT:  # counted on the gradient itself: no N×F mask for dense codes
            needs = ctx.needs_input_grad
            return (grad @ w.T if needs[0] else None, x.T @ grad if needs[1] else None, grad.sum(0))
        crow, cols, rows = _csr(grad != 0)
        return _linear_grads(x, w, crow, cols, rows, grad[rows, cols], grad.shape, ctx.needs_input_grad)


def encode_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x W + b with a backward that exploits a sparse incoming gradient."""
    if x.dim() != 2 or not torch.is_grad_enabled():
        return x @ w + b
    return _EncodeLinear.apply(x, w, b)


class _SelectedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, shift, w, b, u, crow, cols, rows):
        xt = x if shift is None else x - shift
        ctx.save_for_backward(xt, w, crow, cols, rows)
        return u[rows, cols]

    @staticmethod
    def backward(ctx, grad_vals):
        xt, w, crow, cols, rows = ctx.saved_tensors
        need_x, need_shift, need_w, need_b = ctx.needs_input_grad[:4]
        shape = (xt.shape[0], w.shape[1])
        grad_vals = grad_vals.to(xt.dtype)
        grad_x, grad_w, grad_b = _linear_grads(
            xt, w, crow, cols, rows, grad_vals, shape, (need_x, need_w, need_b or need_shift)
        )
        grad_shift = None
        if need_shift:  # −Σ_n ∂L/∂xt_n = −W (Σ_n ∂L/∂u_n): a [D] product, no [N, D] gradient needed
            grad_shift = -grad_x.sum(0) if grad_x is not None else -(w @ grad_b)
        return grad_x, grad_shift, grad_w, grad_b if need_b else None, None, None, None, None


def selected_linear(x, w, b, u, crow, cols, rows, shift=None) -> torch.Tensor:
    """The entries (rows, cols) of u = (x − shift) W + b, where u was computed without autograd: the
    gradient reaches x, shift, W and b through these entries only (a fused top-k encode never builds N×F
    gradients, and the shift — the input centring by b_dec — never builds an [N, D] one)."""
    return _SelectedLinear.apply(x, shift, w, b, u, crow, cols, rows)
