"""SmoothQuant: migrate activation outliers into the weights, then quantize both min-max.

For each LayerNorm -> Linears group (before QKV and before fc1), with ``X`` the LayerNorm's
output over the calibration set:

    s_j = max|X_j|^alpha / max_i |W_ij|^(1 - alpha)          (alpha = 0.5)

folded into the LayerNorm (``gamma, beta <- gamma / s, beta / s``) and the Linears
(``W[:, j] <- W[:, j] * s_j``); the float output is unchanged. Activations are then quantized
with static per-tensor ranges (or per token, if configured) and weights min-max.
"""

from __future__ import annotations

from quantwm.quant.blocks import join
from quantwm.quant.context import MethodResult, PartContext, WeightPlan
from quantwm.quant.observers import collect_input_stats
from quantwm.quant.transforms import fold_into_norm, smooth_scale


def group_first_linears(ctx: PartContext) -> dict[str, object]:
    """The first Linear of every norm group of every block (they share one input)."""
    return {
        join(b, g.linears[0]): block.get_submodule(g.linears[0])
        for b, block in ctx.blocks
        for g in ctx.layout.groups
    }


def run(ctx: PartContext) -> MethodResult:
    """Smooth every norm group with statistics of the float part, then plain min-max plans."""
    stats = collect_input_stats(ctx.part, group_first_linears(ctx), ctx.stat_inputs())
    ratios = {}
    for b, block in ctx.blocks:
        for g in ctx.layout.groups:
            lins = [block.get_submodule(p) for p in g.linears]
            s = smooth_scale(stats[join(b, g.linears[0])].absmax, [m.weight for m in lins],
                             ctx.config.alpha)
            fold_into_norm(block.get_submodule(g.norm), lins, s)
            ratios[join(b, g.norm)] = float(s.max() / s.min())
    plans = {name: WeightPlan() for name in ctx.linear_names()}
    return MethodResult(plans=plans, info={"scale_max_over_min": ratios})
