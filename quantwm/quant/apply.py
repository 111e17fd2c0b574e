"""Entry point: ``quantize(model, config, calibration) -> quantized copy``.

For each part (``config.parts``: role -> submodule path) whose bits are not all float:

1. find its blocks by layout (:mod:`quantwm.quant.blocks`);
2. run the method, which may fold output-preserving transforms into the (copied) float part
   and returns a weight plan per Linear (:mod:`quantwm.quant.context`);
3. with static per-tensor activations, observe every quantized Linear's input min/max on the
   calibration inputs (on the transformed float part);
4. replace each of the block's Linears by a :class:`QuantLinear` (weight fake-quantized once).

``calibration = {"encoder": [x, ...], "predictor": [x, ...]}``: for each role, the tensors the
part received in recorded FP32 forwards (each called as ``part(x)``; shapes may differ beyond
dim 0). RTN and OMSE need none unless they quantize activations with static per-tensor ranges
(dynamic per-token ranges come from each token at run time); every other method needs them.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from quantwm.quant import awq, omniquant, omse, rtn, smoothquant
from quantwm.quant.blocks import (
    DINO_WM_LAYOUT,
    BlockLayout,
    find_blocks,
    join,
    run_part,
    set_submodule,
)
from quantwm.quant.config import QuantConfig
from quantwm.quant.context import MethodResult, PartContext, WeightPlan
from quantwm.quant.linear import ActQuantizer, QuantLinear
from quantwm.quant.observers import collect_input_stats

METHOD_RUNNERS = {
    "rtn": rtn.run,
    "omse": omse.run,
    "smoothquant": smoothquant.run,
    "awq": awq.run,
    "awq_ref": awq.run_ref,
    "omniquant": omniquant.run,
    "omniquant_ref": omniquant.run_ref,
}
DATA_FREE_METHODS = ("rtn", "omse")


@dataclass
class PartReport:
    """What happened to one part: its path, blocks, Linears, calibration seconds, method info."""

    path: str
    n_blocks: int
    n_linears: int
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class QuantReport:
    """Attached to a quantized model as ``model.quant_report``."""

    config: QuantConfig
    parts: dict[str, PartReport] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.parts.values())


def quantize(
    model: nn.Module,
    config: QuantConfig,
    calibration: Mapping[str, Sequence[torch.Tensor]] | None = None,
    layout: BlockLayout = DINO_WM_LAYOUT,
) -> nn.Module:
    """A quantized deep copy of ``model`` (the float model is left untouched).

    The copy is in eval mode and carries a :class:`QuantReport` as ``quant_report``.
    Raises ``ValueError`` when a part has no blocks of ``layout`` or lacks calibration inputs.
    """
    config.validate()
    qmodel = copy.deepcopy(model).eval()
    report = QuantReport(config)
    roles = {role: path for role, path in config.parts.items() if not config.bits(role).is_float}
    inputs = {role: _calibration_for(role, config, calibration, _get_part(qmodel, role, path))
              for role, path in roles.items()}  # every part's, before any part is quantized
    for role, path in roles.items():
        bits = config.bits(role)
        part = _get_part(qmodel, role, path)
        blocks = find_blocks(part, layout)
        if not blocks:
            raise ValueError(f"part {role!r} ({path!r}) has no blocks with the layout {layout}")
        ctx = PartContext(part, blocks, layout, inputs[role], bits, config)
        t0 = time.perf_counter()
        with torch.no_grad():
            result = METHOD_RUNNERS[config.method](ctx)
            _finalize(ctx, result)
        report.parts[role] = PartReport(
            path, len(blocks), len(ctx.linear_names()), time.perf_counter() - t0, result.info
        )
    qmodel.quant_report = report
    return qmodel


def _get_part(model: nn.Module, role: str, path: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError as err:
        raise ValueError(f"model has no submodule {path!r} for part {role!r}") from err


def needs_calibration(config: QuantConfig, role: str | None = None) -> bool:
    """Whether :func:`quantize` needs recorded inputs for ``config`` (its part ``role``, or
    any quantized part): a method that is not data-free, or static per-tensor activation ranges
    (activations under 16 bits)."""
    roles = [role] if role is not None else [r for r in config.parts
                                             if not config.bits(r).is_float]
    static = config.act_granularity == "per_tensor"
    return any(config.method not in DATA_FREE_METHODS or (static and config.bits(r).a < 16)
               for r in roles)


def _calibration_for(
    role: str, config: QuantConfig, calibration: Mapping[str, Sequence[torch.Tensor]] | None,
    part: nn.Module | None = None,
) -> list[torch.Tensor]:
    """The calibration inputs of ``role``, checked before any work: tensors with rows, finite
    values, and (given ``part``) a shape the part takes (one row of each distinct shape is run
    through it). Each failure is a one-line ``ValueError`` naming the tensor."""
    inputs = list((calibration or {}).get(role, []))
    if needs_calibration(config, role) and not inputs:
        raise ValueError(
            f"method {config.method!r} with {role} {config.bits(role).label()} needs calibration "
            f"inputs: pass calibration={{{role!r}: [tensor, ...]}}"
        )
    tried: set[tuple[int, ...]] = set()
    for i, x in enumerate(inputs):
        name = f"calibration[{role!r}][{i}]"
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a tensor, got {type(x).__name__}")
        if x.ndim == 0 or x.shape[0] == 0:
            raise ValueError(f"{name} has no rows (shape {tuple(x.shape)}); every calibration "
                             "tensor needs at least one input row along dim 0")
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            bad = int((~torch.isfinite(x)).sum())
            raise ValueError(f"{name} holds {bad} non-finite value(s) (NaN or inf) of "
                             f"{x.numel()}; calibrate on finite inputs")
        if part is not None and tuple(x.shape[1:]) not in tried:
            tried.add(tuple(x.shape[1:]))
            try:
                with torch.no_grad():
                    run_part(part, x[:1])
            except Exception as err:  # whatever the part raises: the shape does not fit
                reason = " ".join(str(err).split())[:200] or type(err).__name__
                raise ValueError(f"{name} of shape {tuple(x.shape)} does not fit the {role} "
                                 f"({config.parts[role]!r}): {reason}") from None
    return inputs


def _finalize(ctx: PartContext, result: MethodResult) -> None:
    """Replace every quantized Linear by a QuantLinear following its plan (steps 3-4)."""
    cfg = ctx.config
    names = ctx.linear_names()
    stats = {}
    if ctx.quantize_acts and cfg.act_granularity == "per_tensor":
        modules = {n: ctx.part.get_submodule(n) for n in names}
        stats = collect_input_stats(ctx.part, modules, ctx.stat_inputs())
    private = {join(b, p) for b, _ in ctx.blocks for p in ctx.layout.private_inputs}
    for name in names:
        plan = result.plans.get(name, WeightPlan())
        act = None
        if ctx.quantize_acts:
            act = ActQuantizer(ctx.a_bits, cfg.act_granularity, cfg.a_symmetric,
                               inplace=name in private)
            if act.static:
                act.set_range(stats[name].min, stats[name].max)
        linear = ctx.part.get_submodule(name)
        q = QuantLinear.from_linear(
            linear, ctx.w_bits, w_group_size=cfg.w_group_size, w_symmetric=cfg.w_symmetric,
            clip_ratio=plan.clip_ratio, w_qparams=plan.qparams, act=act,
        )
        set_submodule(ctx.part, name, q.to(linear.weight.device))
