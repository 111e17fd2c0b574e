"""quantwm.quant: post-training fake quantization of transformer-block world models.

Public API::

    QuantConfig(method, encoder=(w, a), predictor=(w, a), w_group_size, act_granularity, ...)
    quantize(model, config, calibration) -> quantized copy (with .quant_report)
    model_size_bits(model) -> SizeReport
    lower(quantized_model) -> copy on integer kernels (quantwm.quant.lower); weight_bytes(model)

plus the primitives (``choose_qparams``, ``quantize_tensor``, ``dequantize``,
``fake_quantize``), :class:`QuantLinear`, :class:`ActQuantizer`, the block walker
(``find_blocks``, ``BlockLayout``, ``DINO_WM_LAYOUT``) and ``fold_into_norm``.
"""

from quantwm.quant.apply import METHOD_RUNNERS, PartReport, QuantReport, quantize
from quantwm.quant.blocks import DINO_WM_LAYOUT, BlockLayout, NormGroup, find_blocks
from quantwm.quant.config import (
    METHOD_REVISIONS,
    METHODS,
    WEIGHT_ACTIVATION_METHODS,
    WEIGHT_ONLY_METHODS,
    Bits,
    QuantConfig,
)
from quantwm.quant.linear import ActQuantizer, QuantLinear
from quantwm.quant.lower import (
    Int8Linear,
    LoweredLinear,
    PackedLinear,
    WeightBytes,
    config_kinds,
    lower,
    weight_bytes,
)
from quantwm.quant.observers import ActObserver
from quantwm.quant.primitives import (
    QParams,
    check_bits,
    choose_qparams,
    dequantize,
    fake_quantize,
)
from quantwm.quant.primitives import quantize as quantize_tensor
from quantwm.quant.size import SizeReport, group_counts, model_size_bits
from quantwm.quant.transforms import fold_into_norm, smooth_scale

__all__ = [
    "METHOD_REVISIONS", "METHODS", "METHOD_RUNNERS", "WEIGHT_ACTIVATION_METHODS",
    "WEIGHT_ONLY_METHODS", "ActObserver", "ActQuantizer", "BlockLayout", "Bits",
    "DINO_WM_LAYOUT", "NormGroup", "PartReport", "QParams", "QuantConfig", "QuantLinear",
    "QuantReport", "SizeReport", "check_bits", "choose_qparams", "dequantize", "fake_quantize",
    "find_blocks", "fold_into_norm", "group_counts", "model_size_bits", "quantize",
    "quantize_tensor", "smooth_scale",
    # quantwm.quant.lower
    "Int8Linear", "LoweredLinear", "PackedLinear", "WeightBytes", "config_kinds", "lower",
    "weight_bytes",
]
