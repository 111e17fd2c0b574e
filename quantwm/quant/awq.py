"""AWQ: activation-aware scaling of salient input channels, then a clipping search (weight-only).

Block by block, on a seeded subset of calibration rows (``search_rows``):

1. **Scale search** for each LayerNorm -> Linears group. With ``m_j = mean|X_j|`` the mean
   magnitude of input channel ``j`` of the group,

       s(r) = m^r / sqrt(max(m^r) * min(m^r)),     r in {0, 1/n, .., (n-1)/n}   (n = 20)

   each candidate is scored by the MSE between the float block output and the block output with
   the group's weights replaced by ``Q(W diag(s)) diag(s)^-1`` (other Linears float). The best
   ``s`` (``r = 0`` is plain RTN) is folded into the LayerNorm (``gamma, beta <- / s``) and the
   Linears (``W <- W diag(s)``): the float model is unchanged.
2. **Clipping search** for every quantized Linear: per row (and group), the max-abs ratio
   ``1 - i / n_grid`` for ``i < max_shrink * n_grid`` (defaults 20 and 0.5: ratios 1.00 .. 0.55)
   minimising the MSE of the Linear's per-group partial outputs ``x_G . w_G`` on up to 512
   sampled tokens. Rows of q and k in a fused QKV Linear are not clipped (as AWQ skips q/k).

The scored module is the whole block (AWQ scores the attention or MLP module that contains
the group; the block is the smallest module here that can always be called on its captured
arguments).

``awq_ref`` is the variant the study's reference code ran: scales searched only for the group
before fc1, and the final weights quantized with the (scale, zero point) computed from the
weights *before* AWQ changed them (the clipping is applied as a clamp of the float weights).
It also clips the q and k rows: the reference skips q/k Linears by name, and its list of names
matches no fused ``qkv`` Linear, so every row of one was clipped there.
"""

from __future__ import annotations

import torch
from torch import nn

from quantwm.quant.blocks import BlockCall, NormGroup, capture_block_calls, join, record_inputs
from quantwm.quant.context import MethodResult, PartContext, WeightPlan
from quantwm.quant.primitives import (
    choose_qparams,
    dequantize,
    expand_to,
    fake_quantize,
    group_view,
    qparams_from_minmax,
    quantize,
    reduce_minmax,
)
from quantwm.quant.transforms import fold_into_norm

CLIP_TOKENS = 512


def run(ctx: PartContext) -> MethodResult:
    """AWQ as designed: scales on every norm group, then clipping."""
    return _run(ctx, ref=False)


def run_ref(ctx: PartContext) -> MethodResult:
    """AWQ as the reference ran it (see module doc)."""
    return _run(ctx, ref=True)


def _run(ctx: PartContext, ref: bool) -> MethodResult:
    norms = ctx.layout.ref_awq_norms if ref else tuple(g.norm for g in ctx.layout.groups)
    stale = _stale_qparams(ctx) if ref else {}
    samples = ctx.search_inputs()
    result = MethodResult(info={"scale_exponent": {}, "mean_clip_ratio": {}})
    for b, block in ctx.blocks:
        calls = capture_block_calls(ctx.part, block, samples)
        with torch.no_grad():
            targets = [c.run(block) for c in calls]
        for norm in norms:
            group = ctx.layout.group(norm)
            r, s = search_scale(block, group, calls, targets, ctx)
            fold_into_norm(block.get_submodule(norm), _linears(block, group), s)
            result.info["scale_exponent"][join(b, norm)] = r
        for path, ratio in clip_block(block, calls, ctx, skip_qk=not ref).items():
            name = join(b, path)
            result.info["mean_clip_ratio"][name] = float(ratio.mean())
            if ref:
                _clamp_weight(block.get_submodule(path), ratio, ctx)
                result.plans[name] = WeightPlan(qparams=stale[name])
            else:
                result.plans[name] = WeightPlan(clip_ratio=ratio)
    return result


def _linears(block: nn.Module, group: NormGroup) -> list[nn.Linear]:
    return [block.get_submodule(p) for p in group.linears]


def _stale_qparams(ctx: PartContext) -> dict:
    cfg = ctx.config
    return {
        name: choose_qparams(
            ctx.part.get_submodule(name).weight.detach(), ctx.w_bits, ctx.w_granularity,
            ctx.group_size, cfg.w_symmetric,
        )
        for name in ctx.linear_names()
    }


@torch.no_grad()
def _block_mse(block: nn.Module, calls: list[BlockCall], targets: list[torch.Tensor]) -> float:
    sq, n = 0.0, 0
    for c, t in zip(calls, targets, strict=True):
        sq += float((c.run(block) - t).square().sum())
        n += t.numel()
    return sq / max(n, 1)


@torch.no_grad()
def search_scale(
    block: nn.Module,
    group: NormGroup,
    calls: list[BlockCall],
    targets: list[torch.Tensor],
    ctx: PartContext,
) -> tuple[float, torch.Tensor]:
    """Best exponent ``r`` and scale ``s`` of one group (see module doc, step 1)."""
    lins = _linears(block, group)
    with record_inputs({"x": lins[0]}) as rec:
        for c in calls:
            c.run(block)
    mean_abs = torch.cat(rec["x"]).abs().mean(dim=0)
    originals = [m.weight.detach().clone() for m in lins]
    cfg = ctx.config
    best = (float("inf"), 0.0, torch.ones_like(mean_abs))
    try:
        for i in range(cfg.awq_grid):
            r = i / cfg.awq_grid
            s = mean_abs.pow(r).clamp(min=1e-4)
            s = s / (s.max() * s.min()).sqrt()
            for m, w in zip(lins, originals, strict=True):
                m.weight.copy_(_fq_weight(w * s, ctx) / s)
            loss = _block_mse(block, calls, targets)
            if loss < best[0]:
                best = (loss, r, s)
    finally:
        for m, w in zip(lins, originals, strict=True):
            m.weight.copy_(w)
    return best[1], best[2]


def _fq_weight(w: torch.Tensor, ctx: PartContext) -> torch.Tensor:
    return fake_quantize(
        w, ctx.w_bits, ctx.w_granularity, ctx.group_size, ctx.config.w_symmetric
    )


@torch.no_grad()
def clip_block(
    block: nn.Module, calls: list[BlockCall], ctx: PartContext, skip_qk: bool = True
) -> dict[str, torch.Tensor]:
    """Searched clip ratio (qparams shape) of every quantized Linear of one block; with
    ``skip_qk`` the q and k rows of a fused QKV Linear keep ratio 1 (not clipped)."""
    lins = {p: block.get_submodule(p) for p in ctx.layout.linears}
    with record_inputs(lins) as rec:
        for c in calls:
            c.run(block)
    ratios = {}
    for path, lin in lins.items():
        x = torch.cat(rec[path])
        x = x[:: max(1, x.shape[0] // CLIP_TOKENS)][:CLIP_TOKENS]
        ratio = search_clip_output(lin.weight.detach(), x, ctx)
        if skip_qk and path in ctx.layout.fused_qkv:
            ratio[: 2 * lin.out_features // 3] = 1.0
        ratios[path] = ratio
    return ratios


@torch.no_grad()
def search_clip_output(w: torch.Tensor, x: torch.Tensor, ctx: PartContext) -> torch.Tensor:
    """Per row / group ratio minimising ``mean_t (x_tG . (Q_r(w)_G - w_G))^2`` (step 2)."""
    cfg = ctx.config
    g = ctx.group_size or w.shape[1]
    xg = group_view(x, g)
    org = torch.einsum("tgk,ogk->otg", xg, group_view(w, g))
    lo, hi = reduce_minmax(w, ctx.w_granularity, ctx.group_size)
    best_err = torch.full_like(lo, float("inf"))
    best_r = torch.ones_like(lo)
    for i in range(int(cfg.awq_max_shrink * cfg.awq_clip_grid)):
        r = 1.0 - i / cfg.awq_clip_grid
        qp = qparams_from_minmax(
            lo, hi, ctx.w_bits, cfg.w_symmetric, ctx.w_granularity, ctx.group_size, r
        )
        wq = dequantize(quantize(w, qp), qp)
        cur = torch.einsum("tgk,ogk->otg", xg, group_view(wq, g))
        err = (cur - org).square().mean(dim=1).reshape(best_err.shape)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_r = torch.where(better, torch.full_like(best_r, r), best_r)
    return best_r


@torch.no_grad()
def _clamp_weight(lin: nn.Linear, ratio: torch.Tensor, ctx: PartContext) -> None:
    """Clamp the float weight to ``ratio`` times its min-max range (per row / group)."""
    w = lin.weight
    lo, hi = reduce_minmax(w, ctx.w_granularity, ctx.group_size)
    if ctx.config.w_symmetric:
        hi = torch.maximum(hi.abs(), lo.abs())
        lo = -hi
    lo_e = expand_to(lo * ratio, ctx.w_granularity, ctx.group_size, w.shape[1])
    hi_e = expand_to(hi * ratio, ctx.w_granularity, ctx.group_size, w.shape[1])
    w.copy_(torch.maximum(torch.minimum(w, hi_e), lo_e))
