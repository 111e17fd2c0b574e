"""OMSE: per row / group, the clipping ratio that minimises the weight's L2 quantization error.

For every block ``B`` (a row, or a group of a row) of a weight ``W`` and each ratio ``r`` on a
grid (reference: 101 points from 0.35 to 1.0),

    r*_B = argmin_r  || Q_r(W_B) - W_B ||_2^2,     Q_r = fake-quant with range r * [min, max]

and the weight is quantized with ``r*``. ``r = 1`` (RTN) is always on the grid and ties keep the
larger ratio, so OMSE's error is never above RTN's on the same tensor. Activations stay
min-max, as in the reference code (the original OMSE also searches activation ranges).
"""

from __future__ import annotations

import torch

from quantwm.quant.context import MethodResult, PartContext, WeightPlan
from quantwm.quant.primitives import (
    dequantize,
    group_view,
    qparams_from_minmax,
    quantize,
    reduce_minmax,
)


@torch.no_grad()
def block_sq_error(
    w: torch.Tensor, w_hat: torch.Tensor, granularity: str, group_size: int | None
) -> torch.Tensor:
    """Sum of squared errors over each block, in the qparams shape ``(rows, 1 | n_groups)``."""
    err = (w_hat - w).square()
    if granularity == "per_group":
        return group_view(err, group_size, 0.0).sum(dim=-1)
    return err.sum(dim=-1, keepdim=True)


@torch.no_grad()
def search_clip_mse(
    w: torch.Tensor,
    bits: int,
    granularity: str,
    group_size: int | None,
    symmetric: bool,
    grid: tuple[float, float, int] = (0.35, 1.0, 101),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best ratio per block and its error, both in the qparams shape (see module doc)."""
    lo, hi = reduce_minmax(w, granularity, group_size)
    r_min, r_max, n = grid
    best_err = torch.full_like(lo, float("inf"))
    best_r = torch.ones_like(lo)
    for r in torch.linspace(r_max, r_min, n).tolist():  # descending: ties keep the larger r
        qp = qparams_from_minmax(lo, hi, bits, symmetric, granularity, group_size, r)
        err = block_sq_error(w, dequantize(quantize(w, qp), qp), granularity, group_size)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_r = torch.where(better, torch.full_like(best_r, r), best_r)
    return best_r, best_err


def run(ctx: PartContext) -> MethodResult:
    """A searched clipping ratio for every quantized Linear's weight."""
    result = MethodResult()
    if not ctx.quantize_weights:
        result.plans = {name: WeightPlan() for name in ctx.linear_names()}
        return result
    mean_r = {}
    for name in ctx.linear_names():
        w = ctx.part.get_submodule(name).weight.detach()
        r, _ = search_clip_mse(
            w, ctx.w_bits, ctx.w_granularity, ctx.group_size, ctx.config.w_symmetric,
            ctx.config.omse_grid,
        )
        result.plans[name] = WeightPlan(clip_ratio=r)
        mean_r[name] = float(r.mean())
    result.info["mean_clip_ratio"] = mean_r
    return result
