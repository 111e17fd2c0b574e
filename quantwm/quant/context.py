"""What a method sees of one part (encoder or predictor), and what it hands back.

A method is a function ``run(ctx: PartContext) -> MethodResult`` that may rewrite the part's
float parameters by output-preserving transforms (folding scales into LayerNorms) and returns a
:class:`WeightPlan` for each quantized Linear: a clipping ratio (per row / group) or fixed
qparams. :func:`quantwm.quant.apply.quantize` then builds the ``QuantLinear`` s the same way for
every method, so methods differ only in how they pick scales, clipping and transforms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from quantwm.quant.blocks import BlockLayout, join, sample_rows
from quantwm.quant.config import Bits, QuantConfig
from quantwm.quant.primitives import FLOAT_BITS, QParams, weight_granularity


@dataclass
class WeightPlan:
    """How to quantize one Linear's final weight: min-max shrunk by ``clip_ratio`` (a float or a
    tensor in the qparams shape), or the given ``qparams`` as they are."""

    clip_ratio: float | torch.Tensor | None = None
    qparams: QParams | None = None


@dataclass
class MethodResult:
    plans: dict[str, WeightPlan] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class PartContext:
    """One part to quantize: the module, its blocks, its calibration inputs and the settings."""

    part: nn.Module
    blocks: list[tuple[str, nn.Module]]
    layout: BlockLayout
    inputs: Sequence[torch.Tensor]
    bits: Bits
    config: QuantConfig

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self._stat_inputs: list[torch.Tensor] | None = None

    @property
    def w_bits(self) -> int:
        return self.bits.w

    @property
    def a_bits(self) -> int:
        return self.bits.a

    @property
    def quantize_weights(self) -> bool:
        return self.bits.w < FLOAT_BITS

    @property
    def quantize_acts(self) -> bool:
        return self.bits.a < FLOAT_BITS

    @property
    def group_size(self) -> int | None:
        return self.config.w_group_size

    @property
    def w_granularity(self) -> str:
        return weight_granularity(self.group_size)

    def linear_names(self) -> list[str]:
        """Dotted names (relative to the part) of every quantized Linear."""
        return [join(b, p) for b, _ in self.blocks for p in self.layout.linears]

    def stat_inputs(self) -> list[torch.Tensor]:
        """The calibration inputs for activation statistics (``calib_rows`` rows, or all).

        Drawn once per part: every statistic of the part (SmoothQuant's scales, OmniQuant's
        training ranges, the static ranges that ship) comes from the same rows.
        """
        if self._stat_inputs is None:
            cfg = self.config
            self._stat_inputs = (list(self.inputs) if cfg.calib_rows is None else
                                 sample_rows(self.inputs, cfg.calib_rows, 1 << 30, self.generator))
        return self._stat_inputs

    def search_inputs(self) -> list[torch.Tensor]:
        """``search_rows`` calibration rows in batches of ``batch_size`` (AWQ, OmniQuant)."""
        cfg = self.config
        return sample_rows(self.inputs, cfg.search_rows, cfg.batch_size, self.generator)
