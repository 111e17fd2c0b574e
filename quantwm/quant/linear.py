"""The quantized Linear: a fake-quantized weight (computed once) and an input quantizer.

``QuantLinear(x) = Linear(A(x); W_hat, b)`` where ``W_hat = dequantize(quantize(W))`` is stored
(weights are quantized once at construction, never per forward) and ``A`` is one of

- static per-tensor: one (s, z) for the whole input, from the calibration min/max;
- dynamic per-token: (s, z) of each token (row of the last dim) from its own min/max at run time;
- none (activations left in float).

The activation fake-quant is a single chain of in-place elementwise ops on one temporary
(``x / s -> round -> clamp to [qmin - z, qmax - z] -> * s``), with no Python loop over tokens;
per token, one ``amin`` and one ``amax`` over the last dim give every token's range. (Both
avoid two slow CPU paths: ``torch.aminmax(dim=...)`` and ``clamp`` with tensor bounds are each
several times slower than the rest of the chain together.)

With ``inplace=True`` the quantizer overwrites its input instead of allocating a new tensor.
On CPU, allocating (and first touching) a large activation costs about three times the four
elementwise passes themselves, so this is what keeps large planning batches cheap. It is only
safe when the input is a temporary read by this Linear alone, which the block layout declares
(``BlockLayout.private_inputs``); it is skipped whenever autograd needs the input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from quantwm.quant.primitives import (
    FLOAT_BITS,
    QParams,
    check_bits,
    choose_qparams,
    dequantize,
    qparams_from_minmax,
    qrange,
    quantize,
    weight_granularity,
)

ACT_GRANULARITIES = ("per_tensor", "per_token")


class ActQuantizer(nn.Module):
    """Fake-quantizes a Linear's input: static per-tensor or dynamic per-token (see module doc).

    Static per-tensor must be given its range by :meth:`set_range` (from an observer) before use.
    """

    def __init__(self, bits: int, granularity: str = "per_tensor", symmetric: bool = False,
                 inplace: bool = False):
        super().__init__()
        if check_bits(bits, "a_bits") >= FLOAT_BITS:
            raise ValueError("an ActQuantizer needs 2..8 bits; use no quantizer for float inputs")
        if granularity not in ACT_GRANULARITIES:
            raise ValueError(
                f"unknown activation granularity {granularity!r}; expected {ACT_GRANULARITIES}"
            )
        self.bits, self.granularity, self.symmetric = bits, granularity, symmetric
        self.inplace = inplace
        self.qmin, self.qmax = qrange(bits, symmetric)
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("zero_point", torch.zeros(()))
        self.register_buffer("calibrated", torch.tensor(granularity == "per_token"))

    @property
    def static(self) -> bool:
        return self.granularity == "per_tensor"

    @torch.no_grad()
    def set_range(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """Set the static (s, z) from the calibration min and max of the input."""
        qp = qparams_from_minmax(lo, hi, self.bits, self.symmetric, "per_tensor")
        self.scale.copy_(qp.scale)
        self.zero_point.copy_(qp.zero_point)
        self.calibrated.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantized ``x``; overwrites ``x`` itself when ``inplace`` and no gradient is
        needed. With a gradient needed the rounding is straight-through."""
        if torch.is_grad_enabled() and x.requires_grad:
            return x + (self._fake_quant(x.detach(), False) - x).detach()
        return self._fake_quant(x, self.inplace and x.is_contiguous())

    def _fake_quant(self, x: torch.Tensor, inplace: bool) -> torch.Tensor:
        if self.static:
            if not bool(self.calibrated):
                raise RuntimeError("static per-tensor ActQuantizer used before calibration")
            scale, z = float(self.scale), float(self.zero_point)
            y = x.div_(scale) if inplace else x / scale
            # clamp(round(x / s) + z, qmin, qmax) - z == clamp(round(x / s), qmin - z, qmax - z)
            return y.round_().clamp_(self.qmin - z, self.qmax - z).mul_(scale)
        # Each token's (s, z) come from its own min/max, so only one bound can bind:
        # x >= lo gives round(x / s) >= round(lo / s) = -z exactly (round is odd-symmetric), and
        # symmetric codes stay within +-qmax; only the asymmetric top can overshoot, by one code
        # at a rounding tie, hence the single ``minimum``.
        lo, hi = x.amin(dim=-1, keepdim=True), x.amax(dim=-1, keepdim=True)
        qp = qparams_from_minmax(lo, hi, self.bits, self.symmetric, "per_token")
        y = x.div_(qp.scale) if inplace else x / qp.scale
        y.round_()
        if not self.symmetric:
            torch.minimum(y, self.qmax - qp.zero_point, out=y)
        return y.mul_(qp.scale)

    def extra_repr(self) -> str:
        kind = "static" if self.static else "dynamic"
        return (f"bits={self.bits}, {self.granularity} ({kind}), symmetric={self.symmetric}, "
                f"inplace={self.inplace}")


class QuantLinear(nn.Module):
    """A Linear with a stored fake-quantized weight and an optional input quantizer.

    Attributes kept for reports: ``w_bits``, ``w_group_size``, ``w_symmetric``,
    ``w_num_scales`` (number of weight (s, z) pairs) and the buffers ``w_scale``,
    ``w_zero_point`` (reduced qparams shape; empty when the weight stays float).
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        w_bits: int,
        w_group_size: int | None = None,
        w_symmetric: bool = True,
        clip_ratio: float | torch.Tensor | None = None,
        w_qparams: QParams | None = None,
        act: ActQuantizer | None = None,
    ):
        super().__init__()
        check_bits(w_bits, "w_bits")
        self.out_features, self.in_features = weight.shape
        self.w_bits, self.w_group_size, self.w_symmetric = w_bits, w_group_size, w_symmetric
        with torch.no_grad():
            if w_qparams is None:
                w_qparams = choose_qparams(
                    weight, w_bits, weight_granularity(w_group_size), w_group_size,
                    w_symmetric, clip_ratio,
                )
            w_hat = dequantize(quantize(weight, w_qparams), w_qparams)
        self.weight = nn.Parameter(w_hat.detach().clone(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), False)
        empty = torch.zeros(0)
        self.register_buffer("w_scale", _or(w_qparams.scale, empty).detach().clone())
        self.register_buffer("w_zero_point", _or(w_qparams.zero_point, empty).detach().clone())
        self.w_num_scales = w_qparams.num_scales
        self.act = act

    @classmethod
    def from_linear(cls, linear: nn.Linear, w_bits: int, **kwargs) -> QuantLinear:
        """Quantize ``linear``'s weight (see :class:`QuantLinear` for the keyword arguments)."""
        return cls(linear.weight.detach(), linear.bias, w_bits, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act is not None:
            x = self.act(x)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        g = "per-channel" if self.w_group_size is None else f"group={self.w_group_size}"
        return f"in={self.in_features}, out={self.out_features}, w_bits={self.w_bits}, {g}"


def _or(t: torch.Tensor | None, default: torch.Tensor) -> torch.Tensor:
    return default if t is None else t
