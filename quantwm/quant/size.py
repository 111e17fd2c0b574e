"""Model size in bits: quantized weights at their bit width plus their scales, the rest FP32.

For a :class:`QuantLinear` with ``w_bits < 16``::

    weight bits = out * in * w_bits
    scale bits  = n_scales * (32 + (w_bits if asymmetric else 0))     # fp32 scale (+ zero point)
                + 2 * 32 per static activation quantizer              # its (s, z)

Every other parameter (biases, LayerNorms, embeddings, the decoder, ...) counts 32 bits. The FP32
size is 32 bits per parameter of the same model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from quantwm.quant.linear import QuantLinear
from quantwm.quant.primitives import FLOAT_BITS

SCALE_BITS = 32


@dataclass
class SizeReport:
    """Bits of a model: ``quant_weight_bits + scale_bits + float_bits = total_bits``."""

    fp32_bits: int
    quant_weight_bits: int
    scale_bits: int
    float_bits: int

    @property
    def total_bits(self) -> int:
        return self.quant_weight_bits + self.scale_bits + self.float_bits

    @property
    def ratio(self) -> float:
        """``total_bits / fp32_bits`` (1.0 for a float model)."""
        return self.total_bits / self.fp32_bits if self.fp32_bits else 1.0

    @property
    def megabytes(self) -> float:
        return self.total_bits / 8 / 2**20

    def as_dict(self) -> dict[str, float]:
        d = asdict(self)
        d.update(total_bits=self.total_bits, ratio=self.ratio, megabytes=self.megabytes)
        return d


def model_size_bits(model: nn.Module) -> SizeReport:
    """Size of ``model`` (float or quantized) in bits (see module doc)."""
    quant_w = scales = 0
    quantized_params: set[int] = set()
    n_params = sum(p.numel() for p in model.parameters())
    for m in model.modules():
        if not isinstance(m, QuantLinear):
            continue
        if m.act is not None and m.act.static:
            scales += 2 * SCALE_BITS
        if m.w_bits >= FLOAT_BITS:
            continue
        quant_w += m.weight.numel() * m.w_bits
        zp_bits = 0 if m.w_symmetric else m.w_bits
        scales += m.w_num_scales * (SCALE_BITS + zp_bits)
        quantized_params.add(id(m.weight))
    float_count = sum(p.numel() for p in model.parameters() if id(p) not in quantized_params)
    return SizeReport(32 * n_params, quant_w, scales, 32 * float_count)


def group_counts(model: nn.Module, group_sizes: tuple[int | None, ...] = (None, 128, 48),
                 parts: tuple[str, ...] = ("encoder", "predictor")) -> list[dict[str, object]]:
    """Per quantized Linear (one row per part and Linear name within a block): its input width
    and the number of weight groups per output row at each group size (None = per-channel, 1
    group). A group size >= the width gives 1 group, i.e. per-channel; ``ceil(width / g)``
    otherwise (the last group partial when g does not divide the width)."""
    from quantwm.quant.blocks import DINO_WM_LAYOUT, find_blocks

    rows: list[dict[str, object]] = []
    for part in parts:
        blocks = find_blocks(model.get_submodule(part))
        if not blocks:
            continue
        _, block = blocks[0]
        for name in DINO_WM_LAYOUT.linears:
            width = int(block.get_submodule(name).in_features)
            row: dict[str, object] = {"part": part, "linear": name, "in_features": width,
                                      "blocks": len(blocks)}
            for g in group_sizes:
                row["per-channel" if g is None else f"G{g}"] = 1 if g is None else -(-width // g)
            rows.append(row)
    return rows
