"""RTN: round to nearest with plain min-max ranges.

Weights: ``s`` from ``max|W|`` of each row (or group); activations: min/max of the calibration
inputs (static per-tensor) or of each token (dynamic). Nothing is searched or transformed, so
the plan of every Linear is the default (no clipping).
"""

from __future__ import annotations

from quantwm.quant.context import MethodResult, PartContext, WeightPlan


def run(ctx: PartContext) -> MethodResult:
    """Min-max everywhere: an empty :class:`WeightPlan` for every quantized Linear."""
    return MethodResult(plans={name: WeightPlan() for name in ctx.linear_names()})
