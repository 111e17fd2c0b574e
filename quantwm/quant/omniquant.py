"""OmniQuant: learnable weight clipping (LWC) and learnable equivalent transformation (LET).

Trained block by block. For block ``k`` with float input ``X_fp`` (from the float part) and
quantized input ``X_q`` (from the already-trained, quantized blocks before it), minimise

    L = || B_q(X_q) - B_fp(X_fp) ||^2 / numel            (AdamW, weight decay 0)

over the block's quantization parameters, with the rounding passed straight through:

- **LWC**: per row (or row group) of every quantized Linear's weight, two factors
  ``g_hi, g_lo`` (init 4.0, ``sigmoid(4) = 0.982``) shrink the range:
  ``[min, max] -> [sigmoid(g_lo) min, sigmoid(g_hi) max]`` before min-max qparams.
- **LET** on each LayerNorm -> Linears group (before QKV and fc1): per-channel scale ``s`` and
  shift ``d`` with the Linears reading ``(LN(x) - d) / s`` and using ``W diag(s)``,
  ``b + W d`` (see :mod:`quantwm.quant.transforms`). Initialised from SmoothQuant:
  ``s = max|X|^alpha / max|W|^(1-alpha)``, ``d = (max X + min X) / 2`` per channel.
  By default LET is used only where activations are quantized (``omni_let=None``), as in
  OmniQuant's own recipes (weight-only runs use LWC alone).

During training activations are fake-quantized exactly as the shipped model will quantize
them: per token dynamically, or per tensor with the **static range the deployed model gets**,
i.e. the min/max of the Linear's input over the part's statistics rows
(:meth:`PartContext.stat_inputs`) run through the float part with the current LET. Those ranges
are exact functions of the LET parameters: a LET-fed input is ``(LN(x) - d) / s`` per channel,
so its range is the extreme of ``(ch_min - d) / s`` and ``(ch_max - d) / s`` over channels, from
per-channel statistics of the float part taken once; the inputs of proj and fc2 do not depend on
the block's LET (it preserves the float output). The loss therefore measures the quantizer that
ships, and the gradient reaches the range through ``s`` and ``d``.

Each block keeps the parameters of its best epoch (epoch 0 = the initial values included), so
training never leaves a block worse on the calibration rows than the 0-epoch version.
After the last block, LET is folded into the LayerNorms and Linears (float output unchanged)
and each weight gets the qparams of its learned clipping.

``omniquant_ref`` is the run of the study's reference code: 0 epochs, i.e. the initial values
(LWC at 0.982 of min-max and, with LET, the SmoothQuant init).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from quantwm.quant.blocks import (
    BlockCall,
    NormGroup,
    capture_block_calls,
    find_blocks,
    join,
    record_inputs,
    set_submodule,
)
from quantwm.quant.context import MethodResult, PartContext, WeightPlan
from quantwm.quant.observers import ActObserver, collect_input_stats
from quantwm.quant.primitives import (
    QParams,
    choose_qparams,
    dequantize,
    qparams_from_minmax,
    quantize,
    reduce_minmax,
)
from quantwm.quant.transforms import fold_into_norm, smooth_scale

LWC_INIT = 4.0
_MIN_SCALE = 1e-5


class Let(nn.Module):
    """A learnable per-channel scale ``s`` (kept >= 1e-5) and shift ``d``."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        self.scale = nn.Parameter(scale.clone())
        self.shift = nn.Parameter(shift.clone())

    def s(self) -> torch.Tensor:
        return self.scale.clamp(min=_MIN_SCALE)


class LetNorm(nn.Module):
    """``(norm(x) - d) / s``: a LayerNorm with an unfolded LET in front of its Linears."""

    def __init__(self, norm: nn.Module, let: Let):
        super().__init__()
        self.norm, self.let = norm, let

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.norm(x) - self.let.shift) / self.let.s()


class TrainLinear(nn.Module):
    """A Linear under training: LET-compensated weight, LWC fake-quant, and its input
    fake-quantized as the deployed model will (per token, or static per tensor: ``stats`` are
    the float part's statistics of this input, before the block's LET)."""

    def __init__(self, linear: nn.Linear, ctx: PartContext, let: Let | None,
                 stats: ActObserver | None = None, let_fed: bool = False):
        super().__init__()
        self.linear, self.let, self.ctx = linear, let, ctx
        self.stats, self.let_fed = stats, let_fed
        self.lwc_hi: nn.Parameter | None = None
        self.lwc_lo: nn.Parameter | None = None
        if ctx.quantize_weights:
            lo, _ = reduce_minmax(linear.weight.detach(), ctx.w_granularity, ctx.group_size)
            self.lwc_hi = nn.Parameter(torch.full_like(lo, LWC_INIT))
            self.lwc_lo = nn.Parameter(torch.full_like(lo, LWC_INIT))

    def weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        w, b = self.linear.weight, self.linear.bias
        if self.let is not None:
            comp = w @ self.let.shift
            b = comp if b is None else b + comp
            w = w * self.let.s()
        return w, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight_and_bias()
        if self.lwc_hi is not None:
            qp = lwc_qparams(w, self.lwc_hi, self.lwc_lo, self.ctx)
            w = dequantize(quantize(w, qp, ste=True), qp)
        if self.ctx.quantize_acts:
            qp = self.act_qparams(x)
            x = dequantize(quantize(x, qp, ste=True), qp)
        return F.linear(x, w, b)

    def act_qparams(self, x: torch.Tensor) -> QParams:
        """The input's qparams: per token from ``x``, or the static range the deployed model
        will have (a function of the current LET for a LET-fed input)."""
        cfg = self.ctx.config
        if cfg.act_granularity == "per_token":
            return choose_qparams(x.detach(), self.ctx.a_bits, "per_token", None, cfg.a_symmetric)
        if self.stats is None:
            raise RuntimeError("static per-tensor activations need the input's statistics")
        lo, hi = self.stats.min, self.stats.max
        if self.let_fed and self.let is not None:
            s, d = self.let.s(), self.let.shift
            ends = torch.stack([(self.stats.ch_min - d) / s, (self.stats.ch_max - d) / s])
            lo, hi = ends.min(), ends.max()
        return qparams_from_minmax(lo, hi, self.ctx.a_bits, cfg.a_symmetric, "per_tensor")


def lwc_qparams(
    w: torch.Tensor, hi_factor: torch.Tensor, lo_factor: torch.Tensor, ctx: PartContext
) -> QParams:
    """Min-max qparams of ``w`` with the range shrunk to ``sigmoid(g) * [min, max]``."""
    lo, hi = reduce_minmax(w, ctx.w_granularity, ctx.group_size)
    return qparams_from_minmax(
        lo * torch.sigmoid(lo_factor), hi * torch.sigmoid(hi_factor), ctx.w_bits,
        ctx.config.w_symmetric, ctx.w_granularity, ctx.group_size,
    )


@dataclass
class _Wrapped:
    """The training wrappers installed in one block."""

    name: str
    block: nn.Module
    lets: dict[str, tuple[LetNorm, NormGroup]] = field(default_factory=dict)
    linears: dict[str, TrainLinear] = field(default_factory=dict)

    def parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        lwc = [p for t in self.linears.values() for p in (t.lwc_hi, t.lwc_lo) if p is not None]
        let = [p for ln, _ in self.lets.values() for p in (ln.let.scale, ln.let.shift)]
        return lwc, let


def run(ctx: PartContext) -> MethodResult:
    """OmniQuant as designed: ``config.epochs`` epochs of block-wise training."""
    return _run(ctx, ctx.config.epochs)


def run_ref(ctx: PartContext) -> MethodResult:
    """OmniQuant as the reference ran it: 0 epochs (initial LWC / LET values)."""
    return _run(ctx, 0)


def _run(ctx: PartContext, epochs: int) -> MethodResult:
    cfg = ctx.config
    use_let = ctx.quantize_acts if cfg.omni_let is None else cfg.omni_let
    float_part = copy.deepcopy(ctx.part)
    float_blocks = [m for _, m in find_blocks(float_part, ctx.layout)]
    samples = ctx.search_inputs()
    stats: dict[str, ActObserver] = {}
    if ctx.quantize_acts and cfg.act_granularity == "per_tensor":
        mods = {join(b, p): blk.get_submodule(p)
                for (b, _), blk in zip(ctx.blocks, float_blocks, strict=True)
                for p in ctx.layout.linears}
        stats = collect_input_stats(float_part, mods, ctx.stat_inputs())
    flags = {n: p.requires_grad for n, p in ctx.part.named_parameters()}
    ctx.part.requires_grad_(False)
    wrapped: list[_Wrapped] = []
    losses: dict[str, list[float]] = {}
    try:
        for (b, block), fp_block in zip(ctx.blocks, float_blocks, strict=True):
            fp_calls = capture_block_calls(float_part, fp_block, samples)
            with torch.no_grad():
                targets = [c.run(fp_block) for c in fp_calls]
            q_calls = capture_block_calls(ctx.part, block, samples)
            w = _wrap_block(b, block, q_calls, ctx, use_let, stats)
            wrapped.append(w)
            losses[b] = train_block(w, q_calls, targets, epochs, ctx)
    finally:
        plans = _unwrap_all(wrapped, ctx)
        for n, p in ctx.part.named_parameters():
            p.requires_grad_(flags.get(n, False))
    info = {"block_loss": losses, "epochs": epochs, "let": use_let}
    return MethodResult(plans=plans, info=info)


@torch.no_grad()
def _wrap_block(
    name: str, block: nn.Module, calls: list[BlockCall], ctx: PartContext, use_let: bool,
    stats: dict[str, ActObserver],
) -> _Wrapped:
    w = _Wrapped(name, block)
    lets: dict[str, Let] = {}
    if use_let:
        firsts = {g.norm: block.get_submodule(g.linears[0]) for g in ctx.layout.groups}
        with record_inputs(firsts) as rec:
            for c in calls:
                c.run(block)
        for g in ctx.layout.groups:
            x = torch.cat(rec[g.norm])
            ch_min, ch_max = x.amin(dim=0), x.amax(dim=0)
            absmax = torch.maximum(ch_min.abs(), ch_max.abs())
            weights = [block.get_submodule(p).weight for p in g.linears]
            lets[g.norm] = Let(smooth_scale(absmax, weights, ctx.config.alpha),
                               (ch_max + ch_min) / 2)
    let_of = {p: lets[g.norm] for g in ctx.layout.groups if g.norm in lets for p in g.linears}
    let_fed = {p for g in ctx.layout.groups for p in g.linears}
    for path in ctx.layout.linears:
        t = TrainLinear(block.get_submodule(path), ctx, let_of.get(path),
                        stats.get(join(name, path)), path in let_fed)
        w.linears[path] = t
        set_submodule(block, path, t)
    for g in ctx.layout.groups:
        if g.norm in lets:
            ln = LetNorm(block.get_submodule(g.norm), lets[g.norm])
            w.lets[g.norm] = (ln, g)
            set_submodule(block, g.norm, ln)
    return w


def _mean_loss(block: nn.Module, calls: list[BlockCall], targets: list[torch.Tensor]) -> float:
    with torch.no_grad():
        losses = [float(F.mse_loss(c.run(block), t)) for c, t in zip(calls, targets, strict=True)]
    return sum(losses) / max(len(losses), 1)


def train_block(
    w: _Wrapped,
    calls: list[BlockCall],
    targets: list[torch.Tensor],
    epochs: int,
    ctx: PartContext,
) -> list[float]:
    """Train one wrapped block; returns the mean block loss before training and after each
    epoch (``epochs + 1`` values). The block keeps the parameters of its lowest-loss epoch
    (possibly epoch 0), so training never makes it worse on these rows."""
    history = [_mean_loss(w.block, calls, targets)]
    lwc, let = w.parameters()
    if epochs == 0 or not (lwc or let) or not calls:
        return history
    params = lwc + let
    best = [p.detach().clone() for p in params]
    groups = [{"params": lwc, "lr": ctx.config.lr_lwc}, {"params": let, "lr": ctx.config.lr_let}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=0.0)
    for _ in range(epochs):
        for k in torch.randperm(len(calls), generator=ctx.generator).tolist():
            with torch.enable_grad():
                loss = F.mse_loss(calls[k].run(w.block), targets[k])
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
        history.append(_mean_loss(w.block, calls, targets))
        if history[-1] < min(history[:-1]):
            best = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, b in zip(params, best, strict=True):
            p.copy_(b)
    return history


@torch.no_grad()
def _unwrap_all(wrapped: list[_Wrapped], ctx: PartContext) -> dict[str, WeightPlan]:
    """Put the original modules back, fold each LET, and plan each weight's learned clipping."""
    plans: dict[str, WeightPlan] = {}
    for w in wrapped:
        for norm_path, (ln, g) in w.lets.items():
            set_submodule(w.block, norm_path, ln.norm)
            linears = [w.linears[p].linear for p in g.linears]
            fold_into_norm(ln.norm, linears, ln.let.s().detach(), ln.let.shift.detach())
        for path, t in w.linears.items():
            set_submodule(w.block, path, t.linear)
            qp = None
            if t.lwc_hi is not None:
                qp = lwc_qparams(t.linear.weight.detach(), t.lwc_hi.detach(),
                                 t.lwc_lo.detach(), ctx)
            plans[join(w.name, path)] = WeightPlan(qparams=qp)
    for name in ctx.linear_names():
        plans.setdefault(name, WeightPlan())
    return plans
