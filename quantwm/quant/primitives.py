"""Affine fake-quantization primitives: one family for every method and granularity.

An affine quantizer with ``b`` bits maps a real ``x`` to an integer code and back::

    q     = clamp(round(x / s) + z, qmin, qmax)
    x_hat = (q - z) * s

- symmetric:  z = 0, [qmin, qmax] = [-2^(b-1), 2^(b-1) - 1], s = r * max|x| / qmax
- asymmetric: [qmin, qmax] = [0, 2^b - 1], with lo = min(r * min x, 0), hi = max(r * max x, 0)
  (the range always contains 0, so zero is exactly representable and z lies in [qmin, qmax]),
  s = (hi - lo) / qmax, z = round(-lo / s)

where ``r`` is an optional clipping ratio (1 = plain min-max). Inside the clipping range
(``[-r max|x|, r max|x|]`` symmetric, ``[lo, hi]`` asymmetric) the error ``|x_hat - x|`` is at
most ``s / 2``; outside it the value is clamped to the nearest end of the grid.

The statistics (min, max) are reduced over a *block* of elements that share one (s, z):

==============  =========================================================  ==================
granularity     block                                                      qparams shape
==============  =========================================================  ==================
per_tensor      the whole tensor                                           ``()``
per_channel     one output row of a weight ``(out, in)``: reduce the last  ``(..., 1)``
per_token       one row of an activation ``(..., tokens, d)``: reduce last ``(..., 1)``
per_group       ``group_size`` consecutive elements of the last dim        ``(..., n_groups)``
==============  =========================================================  ==================

``per_channel`` and ``per_token`` are the same reduction (over the last dim); the two names say
whether a weight or an activation is meant. ``per_group`` splits the last (input) dim into
``ceil(d / group_size)`` groups; when ``group_size`` does not divide ``d`` the **last group is
partial** (e.g. d = 404, g = 128 gives groups of 128, 128, 128 and 20) and its (s, z) come from
its own ``d mod g`` elements only. A group size larger than ``d`` is one partial group, i.e.
per-channel.

``bits >= 16`` means "leave in float": :func:`fake_quantize` is then the identity. Valid bits are
2..8 and any integer >= 16; 1, 9..15 and non-integers raise ``ValueError``.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

Granularity = Literal["per_tensor", "per_channel", "per_group", "per_token"]
GRANULARITIES: tuple[str, ...] = ("per_tensor", "per_channel", "per_group", "per_token")
FLOAT_BITS = 16
DEFAULT_GROUP_SIZE = 128
_EPS = 1e-8


def check_bits(bits: int, name: str = "bits") -> int:
    """Return ``bits`` (as an ``int``; numpy integers are accepted) if it is 2..8 or >= 16
    (float), else raise a ``ValueError`` naming it."""
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        raise ValueError(f"{name} must be an integer in 2..8 or >= 16 (float), got {bits!r}")
    bits = int(bits)
    if not (2 <= bits <= 8 or bits >= FLOAT_BITS):
        raise ValueError(
            f"{name}={bits} is not supported: use 2..8 bits, or >= {FLOAT_BITS} to leave in float"
        )
    return bits


def is_float_bits(bits: int) -> bool:
    """True when ``bits`` means "leave in float" (>= 16)."""
    return check_bits(bits) >= FLOAT_BITS


def check_group_size(group_size: int | None) -> int | None:
    """Return a valid group size (``None`` = no grouping) or raise a ``ValueError`` naming it."""
    if group_size is None:
        return None
    if (isinstance(group_size, bool) or not isinstance(group_size, numbers.Integral)
            or group_size <= 0):
        raise ValueError(f"group size must be a positive integer or None, got {group_size!r}")
    return int(group_size)


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer code range: signed ``[-2^(b-1), 2^(b-1)-1]`` or unsigned ``[0, 2^b-1]``."""
    check_bits(bits)
    if symmetric:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


@dataclass
class QParams:
    """Scale and zero point of one affine quantizer, in the reduced shape of its granularity.

    ``scale`` / ``zero_point`` are float tensors (the zero point holds integer values) of shape
    ``()`` for per-tensor, ``(..., 1)`` for per-channel / per-token and ``(..., n_groups)`` for
    per-group. For float bits (>= 16) both are ``None`` and every operation is the identity.
    """

    bits: int
    symmetric: bool
    granularity: str
    group_size: int | None
    scale: torch.Tensor | None
    zero_point: torch.Tensor | None

    @property
    def is_float(self) -> bool:
        return self.bits >= FLOAT_BITS

    @property
    def qmin(self) -> int:
        return qrange(self.bits, self.symmetric)[0]

    @property
    def qmax(self) -> int:
        return qrange(self.bits, self.symmetric)[1]

    @property
    def num_scales(self) -> int:
        """How many (scale, zero point) pairs the quantizer stores."""
        return 0 if self.scale is None else self.scale.numel()


def _check_granularity(granularity: str, group_size: int | None) -> int | None:
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}; expected one of {GRANULARITIES}")
    if granularity == "per_group":
        if group_size is None:
            raise ValueError("per_group granularity needs a group_size, got None")
        return check_group_size(group_size)
    return None


def num_groups(dim: int, group_size: int) -> int:
    """``ceil(dim / group_size)``: the number of groups, the last one possibly partial."""
    return -(-dim // group_size)


def group_view(x: torch.Tensor, group_size: int, pad_value: float = 0.0) -> torch.Tensor:
    """View the last dim of ``x`` as ``(n_groups, group_size)``, padding a partial last group.

    ``(..., d) -> (..., ceil(d / g), g)``; the ``g * n_groups - d`` padded slots hold
    ``pad_value`` (choose +-inf to keep a min/max reduction exact, 0 for sums).
    """
    d = x.shape[-1]
    pad = num_groups(d, group_size) * group_size - d
    if pad:
        x = F.pad(x, (0, pad), value=pad_value)
    return x.reshape(*x.shape[:-1], -1, group_size)


def expand_to(t: torch.Tensor, granularity: str, group_size: int | None, dim: int) -> torch.Tensor:
    """Broadcast a reduced-shape tensor (scale, zero point, bound) to a last dim of ``dim``."""
    if granularity == "per_group":
        return t.repeat_interleave(group_size, dim=-1)[..., :dim]
    return t


def reduce_minmax(
    x: torch.Tensor, granularity: str, group_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of ``x`` over each block of ``granularity`` (reduced qparams shape)."""
    group_size = _check_granularity(granularity, group_size)
    if granularity == "per_tensor":
        return x.amin(), x.amax()
    if granularity == "per_group":
        hi = group_view(x, group_size, float("-inf")).amax(dim=-1)
        lo = group_view(x, group_size, float("inf")).amin(dim=-1)
        return lo, hi
    return x.amin(dim=-1, keepdim=True), x.amax(dim=-1, keepdim=True)


def qparams_from_minmax(
    lo: torch.Tensor,
    hi: torch.Tensor,
    bits: int,
    symmetric: bool,
    granularity: str,
    group_size: int | None = None,
    clip_ratio: float | torch.Tensor | None = None,
) -> QParams:
    """(s, z) from block minima/maxima, optionally shrunk by ``clip_ratio`` (see module doc).

    Differentiable in ``clip_ratio`` (OmniQuant's learnable clipping relies on it).
    """
    if check_bits(bits) >= FLOAT_BITS:
        return QParams(bits, symmetric, granularity, group_size, None, None)
    if clip_ratio is not None:
        lo, hi = lo * clip_ratio, hi * clip_ratio
    qmin, qmax = qrange(bits, symmetric)
    if symmetric:
        scale = torch.maximum(hi.abs(), lo.abs()).div(qmax).clamp(min=_EPS)
        zero_point = torch.zeros_like(scale)
    else:
        lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
        scale = (hi - lo).div(qmax).clamp(min=_EPS)
        zero_point = torch.round(-lo / scale).detach().clamp(qmin, qmax)
    return QParams(bits, symmetric, granularity, group_size, scale, zero_point)


def choose_qparams(
    x: torch.Tensor,
    bits: int,
    granularity: str = "per_channel",
    group_size: int | None = DEFAULT_GROUP_SIZE,
    symmetric: bool = True,
    clip_ratio: float | torch.Tensor | None = None,
) -> QParams:
    """Min-max (optionally clipped) qparams of ``x`` at ``granularity``.

    ``group_size`` is used only for ``per_group`` (a partial last group is allowed);
    ``clip_ratio`` is a float or a tensor broadcastable to the qparams shape.
    """
    check_bits(bits)
    group_size = _check_granularity(granularity, group_size)
    if bits >= FLOAT_BITS:
        return QParams(bits, symmetric, granularity, group_size, None, None)
    lo, hi = reduce_minmax(x, granularity, group_size)
    return qparams_from_minmax(lo, hi, bits, symmetric, granularity, group_size, clip_ratio)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest with a straight-through gradient (d round(x) / dx := 1)."""
    return (x.round() - x).detach() + x


def quantize(x: torch.Tensor, qp: QParams, ste: bool = False) -> torch.Tensor:
    """Integer codes ``clamp(round(x / s) + z, qmin, qmax)`` (float dtype; identity if float)."""
    if qp.is_float:
        return x
    scale = expand_to(qp.scale, qp.granularity, qp.group_size, x.shape[-1])
    zero = expand_to(qp.zero_point, qp.granularity, qp.group_size, x.shape[-1])
    r = round_ste(x / scale) if ste else torch.round(x / scale)
    return torch.clamp(r + zero, qp.qmin, qp.qmax)


def dequantize(q: torch.Tensor, qp: QParams) -> torch.Tensor:
    """Real values ``(q - z) * s`` of integer codes (identity if float)."""
    if qp.is_float:
        return q
    scale = expand_to(qp.scale, qp.granularity, qp.group_size, q.shape[-1])
    zero = expand_to(qp.zero_point, qp.granularity, qp.group_size, q.shape[-1])
    return (q - zero) * scale


def fake_quantize(
    x: torch.Tensor,
    bits: int,
    granularity: str = "per_channel",
    group_size: int | None = DEFAULT_GROUP_SIZE,
    symmetric: bool = True,
    clip_ratio: float | torch.Tensor | None = None,
    qparams: QParams | None = None,
    ste: bool = False,
) -> torch.Tensor:
    """``dequantize(quantize(x))`` with min-max qparams of ``x`` (or the given ``qparams``).

    Returns ``x`` itself when ``bits >= 16``. With ``ste=True`` the rounding passes gradients
    straight through, so the result is differentiable in ``x`` and in ``clip_ratio``.
    """
    check_bits(bits)
    if bits >= FLOAT_BITS:
        return x
    if qparams is None:
        qparams = choose_qparams(x, bits, granularity, group_size, symmetric, clip_ratio)
    return dequantize(quantize(x, qparams, ste=ste), qparams)


def weight_granularity(group_size: int | None) -> str:
    """``per_group`` when a group size is given, else ``per_channel`` (one scale per row)."""
    return "per_channel" if group_size is None else "per_group"
