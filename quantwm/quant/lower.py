"""Lowering a fake-quantized model to integer kernels: ``lower(quantize(model, ...))``.

:func:`quantwm.quant.quantize` returns a model whose :class:`QuantLinear` s hold float weights on
the quantization grid and fake-quantize their inputs in float. :func:`lower` replaces each of
them by a module that stores the integer codes and computes with them:

================  ==============================  ============================================
kind              QuantLinear it takes            kernel (CPU)
================  ==============================  ============================================
``int8_static``   W2..8 per-channel symmetric,    fbgemm ``quantized::linear_with_input_q_dq_``
                  A2..8 static per-tensor         ``qweight_dq_output_fp32``: uint8 x int8,
                                                  int32 accumulation, fp32 output and bias
``int8_dynamic``  W2..8 per-channel symmetric,    the same fbgemm kernel on per-token codes
                  A2..8 dynamic per-token         (zero point 0), then a per-row epilogue
``packed``        W2..8 (per-channel or group,    codes packed two per byte (W2..4) or one
                  any symmetry), A float          per byte (W5..8); dequantized per forward,
                                                  then MKL's float GEMM
================  ==============================  ============================================

Why these (measured on the kit's 2-core AMD EPYC, AVX-512 VNNI, torch 2.13, the predictor's
four Linears at one planner call, 16384 rows; ``benchmarks/deploy_speed.py --kernels`` prints
the table): the whole static int8 Linear above (codes, GEMM, scales, bias) takes ~0.4x the
float32 Linear's CPU time at 1 thread, the fake-quant Linear ~1.0-1.1x. oneDNN's
``qlinear_pointwise`` has a faster GEMM but needs its uint8 input made by separate passes
(~0.45x in all); ``torch._int_mm`` multiplies fast too but takes signed int8 activations and
returns int32, so the zero point, the conversion and the scales each cost a pass;
``aten._weight_int8pack_mm`` is 20-40x slower than float32 here; the fbgemm kernel behind
``quantize_dynamic`` (``linear_dynamic``) is fast but quantizes per tensor from each input's own
range, which is neither of the kit's schemes. Weight-only kernels cannot beat a float GEMM on a
CPU at the planner's batch (the work is the GEMM, not the weight traffic; the int4 kernel,
``_weight_int4pack_mm_for_cpu``, is fast only with bf16 activations), so ``packed`` buys
memory, not speed: it dequantizes the weight (< 1 % of the GEMM's time) and uses MKL. torchao
0.18 adds nothing here: in eager mode its int8 dynamic Linear is slower than float32 and its
weight-only ones run the float GEMM, and its C++ kernels do not load with this torch/Python.

**Numerics.** By default (``rounding="exact"``) the activation codes are computed with the kit's
own formula, ``round(x / s)`` in float32, before the kernel sees them (the kernel then receives
integers with scale 1 and adds the zero point exactly); the weight codes are read back from the
fake-quantized weight (checked bit for bit). The integer GEMM accumulates exactly in int32 (no
overflow: 255 * 128 * K < 2^31 for K < 65,000) and rounds once to float, so a lowered Linear
matches the fake-quant Linear to float rounding, ~1e-7 relative. Through a whole model, a
one-ulp difference upstream now and then moves a later activation across a rounding tie, which
changes that code by one; float32 fake quantization does the same against its own float64
evaluation, and the lowered model stays as close to that float64 evaluation as float32 fake
quantization does (``tests/test_deploy.py``).

``rounding="kernel"`` (static per-tensor only, 8-bit activations) lets fbgemm quantize the
activations itself: two elementwise passes fewer, but fbgemm computes ``nearbyint(x * (1/s) + z)``
in float32, which rounds differently from ``round(x / s) + z`` when ``x / s`` is within float
error of a tie (a few codes per million, each off by one; on such a row the output moves by one
activation step times a weight).

On a CPU without VNNI, fbgemm's uint8 x int8 kernel adds pairs of products in int16 with
saturation (255 * 127 * 2 > 32767); :func:`lower` probes the kernel once and refuses the int8
kinds there instead of returning different numbers.

A lowered model is for inference (no gradients) on CPU; ``packed`` Linears are plain torch and
run on any device. It is rebuilt, not saved: fbgemm's packed weights are not in the
``state_dict`` (save the quantized model or its config, and lower after loading). Requests
without a kernel fail with a one-line ``ValueError`` naming what is missing: grouped or
asymmetric weights with quantized activations, quantized activations with float weights,
integer kernels on a device other than the CPU, a CPU without fbgemm's exact int8 kernel.
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from quantwm.quant.config import QuantConfig
from quantwm.quant.linear import QuantLinear
from quantwm.quant.primitives import (
    FLOAT_BITS,
    expand_to,
    num_groups,
    qparams_from_minmax,
    qrange,
    weight_granularity,
)

KINDS: tuple[str, ...] = ("int8_static", "int8_dynamic", "packed")
ROUNDINGS: tuple[str, ...] = ("exact", "kernel")
FLOAT_BYTES = 4


# ---------------------------------------------------------------------------- what lowers how
def lowering_kind(w_bits: int, a_bits: int, group_size: int | None = None,
                  w_symmetric: bool = True, act_granularity: str = "per_tensor",
                  device: torch.device | str = "cpu") -> str | None:
    """The kind a Linear of this quantization lowers to (None: a float Linear, nothing to do),
    or a one-line ``ValueError`` naming the missing kernel."""
    w_float, a_float = w_bits >= FLOAT_BITS, a_bits >= FLOAT_BITS
    if w_float and a_float:
        return None
    if a_float:
        return "packed"
    label = f"W{'32' if w_float else w_bits}A{a_bits}"
    if w_float:
        raise ValueError(f"no integer kernel for {label}: quantized activations need integer "
                         "weights too (give the part w_bits in 2..8, or leave a_bits float)")
    if group_size is not None:
        raise ValueError(f"no integer kernel for {label} with group-{group_size} weights: "
                         "fbgemm's int8 GEMM scales per output channel only (use per-channel "
                         f"weights, or weight-only W{w_bits}A32 for grouped weights)")
    if not w_symmetric:
        raise ValueError(f"no integer kernel for {label} with asymmetric weights: fbgemm's int8 "
                         "GEMM takes symmetric int8 weight codes (w_symmetric=True)")
    kind = "int8_static" if act_granularity == "per_tensor" else "int8_dynamic"
    check_int8_device(device, label)
    return kind


def config_kinds(config: QuantConfig, device: torch.device | str = "cpu") -> dict[str, str]:
    """Per quantized part of ``config``: the kind its Linears lower to. Raises the one-line
    ``ValueError`` of :func:`lowering_kind` before any quantization work is done."""
    kinds = {}
    for role in config.parts:
        bits = config.bits(role)
        kind = lowering_kind(bits.w, bits.a, config.w_group_size, config.w_symmetric,
                             config.act_granularity, device)
        if kind is not None:
            kinds[role] = kind
    if not kinds:
        raise ValueError(f"nothing to lower: {config.label()} leaves every part in float")
    return kinds


def check_int8_device(device: torch.device | str, what: str = "W8A8") -> None:
    """Raise a one-line ``ValueError`` unless fbgemm's exact int8 GEMM runs on ``device``."""
    device = torch.device(device)
    if device.type != "cpu":
        raise ValueError(f"no integer kernel for {what} on device {device}: the kit's int8 "
                         "kernels are fbgemm's, CPU only (lower on CPU, or use a weight-only "
                         "configuration, whose packed weights run on any device)")
    problem = _fbgemm_problem()
    if problem:
        raise ValueError(f"no integer kernel for {what} on this CPU: {problem}")


@functools.cache
def _fbgemm_problem() -> str:
    """Why fbgemm's int8 GEMM cannot give the kit's numbers here ('' when it can)."""
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        return ("this torch build has no fbgemm engine (supported: "
                f"{', '.join(torch.backends.quantized.supported_engines) or 'none'})")
    # The worst case of full-range codes: without VNNI, pairs of uint8 x int8 products are
    # added in int16 with saturation, 255 * 127 * 2 = 64770 > 32767.
    k = 64
    w = torch.full((8, k), 127.0)
    w[1::2] = -128.0
    x = torch.full((4, k), 255.0)
    packed = _prepack(w, torch.ones(8), None)
    got = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(x, 1.0, 0, packed)
    if not torch.equal(got, x @ w.t()):
        return ("fbgemm's uint8 x int8 kernel saturates (no VNNI), so 8-bit activations would "
                "not match the fake-quant model")
    return ""


def _prepack(codes: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None):
    """fbgemm's packed int8 weight (per-output-channel scales, zero points 0)."""
    n = codes.shape[0]
    with warnings.catch_warnings(), _engine("fbgemm"):
        # quantized tensors are the packing op's only input format (deprecated in torch 2.13)
        warnings.simplefilter("ignore", UserWarning)
        qweight = torch._make_per_channel_quantized_tensor(
            codes.to(torch.int8), scales.double(), torch.zeros(n, dtype=torch.long), 0)
        return torch.ops.quantized.linear_prepack(
            qweight, None if bias is None else bias.detach().float().contiguous())


class _engine:
    def __init__(self, name: str):
        self.name, self.old = name, None

    def __enter__(self) -> None:
        self.old = torch.backends.quantized.engine
        torch.backends.quantized.engine = self.name

    def __exit__(self, *exc: object) -> None:
        torch.backends.quantized.engine = self.old


def weight_codes(m: QuantLinear) -> torch.Tensor:
    """The integer codes ``q`` of a QuantLinear's weight (float tensor of integers, shape of the
    weight): ``weight == (q - z) * s`` bit for bit, or a ``ValueError``."""
    if m.w_bits >= FLOAT_BITS:
        raise ValueError("the weight of this QuantLinear is float: it has no integer codes")
    gran = weight_granularity(m.w_group_size)
    k = m.in_features
    scale = expand_to(m.w_scale, gran, m.w_group_size, k)
    zero = expand_to(m.w_zero_point, gran, m.w_group_size, k)
    w = m.weight.detach()
    q = torch.round(w / scale) + zero
    qmin, qmax = qrange(m.w_bits, m.w_symmetric)
    if not torch.equal((q.clamp(qmin, qmax) - zero) * scale, w):
        raise ValueError("a QuantLinear's weight is not on its quantization grid (was it "
                         "changed after quantize?); lower the output of quantize() as it is")
    return q.clamp(qmin, qmax)


# ------------------------------------------------------------------------------ the modules
class LoweredLinear(nn.Module):
    """Base of the lowered Linears: ``in_features``, ``out_features``, ``kind``, and
    :meth:`storage_bytes` (what the weight costs in memory)."""

    kind = ""

    def storage_bytes(self) -> dict[str, int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, kind={self.kind}"


class Int8Linear(LoweredLinear):
    """A W2..8 A2..8 Linear on fbgemm's uint8 x int8 GEMM (static per-tensor or dynamic
    per-token activations; see the module doc for the numerics)."""

    def __init__(self, m: QuantLinear, rounding: str = "exact"):
        super().__init__()
        act = m.act
        kind = lowering_kind(m.w_bits, act.bits if act is not None else FLOAT_BITS,
                             m.w_group_size, m.w_symmetric, act.granularity if act else "")
        if kind not in ("int8_static", "int8_dynamic"):
            raise ValueError(f"Int8Linear needs quantized weights and activations, got {m}")
        if rounding not in ROUNDINGS:
            raise ValueError(f"unknown rounding {rounding!r}; expected one of {ROUNDINGS}")
        self.kind, self.rounding = kind, rounding
        self.in_features, self.out_features = m.in_features, m.out_features
        self.w_bits, self.a_bits, self.a_symmetric = m.w_bits, act.bits, act.symmetric
        self.inplace = act.inplace
        self.qmin, self.qmax = act.qmin, act.qmax
        codes = weight_codes(m)
        w_scale = m.w_scale.detach().reshape(-1).float()
        bias = None if m.bias is None else m.bias.detach().float()
        # fbgemm's uint8 input: the kit's code minus qmin (its zero point for asymmetric codes)
        self.full_range = self.qmax - self.qmin == 255
        if kind == "int8_static":
            if not bool(act.calibrated):
                raise ValueError("a static per-tensor activation quantizer has no range yet")
            self.scale, z = float(act.scale), int(act.zero_point)
            self.x_zero = z - self.qmin
            self.lo, self.hi = float(self.qmin - z), float(self.qmax - z)
            if rounding == "kernel":
                if not self.full_range:
                    raise ValueError(f"rounding='kernel' needs 8-bit activations (fbgemm clamps "
                                     f"to 0..255), got A{self.a_bits}; use rounding='exact'")
                self.packed = _prepack(codes, w_scale, bias)
            else:  # integer codes in, the activation scale folded into the weight scales
                self.packed = _prepack(codes, w_scale.double() * self.scale, bias)
        else:
            if rounding != "exact":
                raise ValueError("rounding='kernel' applies to static per-tensor activations "
                                 "only; per-token codes are always the kit's own")
            self.x_zero = 0 if not self.a_symmetric else -self.qmin
            self.packed = _prepack(codes, w_scale, None)
            # sum_k (c_k - z) q_jk s_j = out_j - z * s_j sum_k q_jk
            self.register_buffer("col_sum", w_scale * codes.sum(1))
            self.register_buffer("bias", bias)
        self._bytes = {"codes": codes.numel(), "scales": FLOAT_BYTES * codes.shape[0],
                       "bias": 0 if bias is None else FLOAT_BYTES * bias.numel(),
                       # fbgemm keeps one int32 column offset per output channel
                       "offsets": 4 * codes.shape[0]}

    def storage_bytes(self) -> dict[str, int]:
        return dict(self._bytes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "int8_static":
            return self._static(x)
        return self._dynamic(x)

    def _private(self, x: torch.Tensor) -> bool:
        return self.inplace and x.is_contiguous()

    def _static(self, x: torch.Tensor) -> torch.Tensor:
        op = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32
        if self.rounding == "kernel":
            return op(x, self.scale, self.x_zero, self.packed)
        # the kit's round(x / s) (ActQuantizer), then the kernel adds the zero point exactly
        y = x.div_(self.scale) if self._private(x) else x / self.scale
        y.round_()
        if not self.full_range:  # fbgemm clamps to 0..255 only
            y.clamp_(self.lo, self.hi)
        return op(y, 1.0, self.x_zero, self.packed)

    def _dynamic(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = x.amin(dim=-1, keepdim=True), x.amax(dim=-1, keepdim=True)
        qp = qparams_from_minmax(lo, hi, self.a_bits, self.a_symmetric, "per_token")
        y = x.div_(qp.scale) if self._private(x) else x / qp.scale
        y.round_()
        if not self.a_symmetric:  # as ActQuantizer: only the top can overshoot, by one code
            if not self.full_range:  # (at 8 bits fbgemm's own clamp to 0..255 does it)
                torch.minimum(y, self.qmax - qp.zero_point, out=y)
            y.add_(qp.zero_point)  # codes c in 0..qmax, fed with zero point 0
        out = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
            y, 1.0, self.x_zero, self.packed)
        flat = out.view(-1, self.out_features)
        if not self.a_symmetric:
            flat.addr_(qp.zero_point.reshape(-1), self.col_sum, alpha=-1)
        s = qp.scale.reshape(-1, 1)
        if self.bias is None:
            return out.mul_(s)
        torch.addcmul(self.bias, flat, s, out=flat)
        return out


class PackedLinear(LoweredLinear):
    """A weight-only W2..8 Linear: integer codes packed in bytes, dequantized at each forward to
    exactly the fake-quant weight (bit for bit), then a float GEMM."""

    kind = "packed"

    def __init__(self, m: QuantLinear):
        super().__init__()
        if m.act is not None:
            raise ValueError("PackedLinear is weight-only; this QuantLinear quantizes its input")
        codes = weight_codes(m)
        self.in_features, self.out_features = m.in_features, m.out_features
        self.w_bits, self.group_size, self.symmetric = m.w_bits, m.w_group_size, m.w_symmetric
        self.qmin, _ = qrange(m.w_bits, m.w_symmetric)
        u = (codes - self.qmin).to(torch.uint8)  # 0 .. 2^bits - 1
        self.nibbles = m.w_bits <= 4
        if self.nibbles:
            if u.shape[1] % 2:
                u = F.pad(u, (0, 1))
            u = u[:, 0::2] | (u[:, 1::2] << 4)
        self.register_buffer("codes", u.contiguous())
        self.register_buffer("scale", m.w_scale.detach().float().clone())
        zero = None if m.w_symmetric else m.w_zero_point.detach().to(torch.uint8).clone()
        self.register_buffer("zero_point", zero)
        self.bias = None if m.bias is None else nn.Parameter(m.bias.detach().clone(), False)

    def storage_bytes(self) -> dict[str, int]:
        return {"codes": self.codes.numel(), "scales": FLOAT_BYTES * self.scale.numel(),
                "zero_points": 0 if self.zero_point is None else self.zero_point.numel(),
                "bias": 0 if self.bias is None else FLOAT_BYTES * self.bias.numel()}

    def dequantized_weight(self) -> torch.Tensor:
        """``(q - z) * s``: the fake-quant model's weight, bit for bit."""
        n, k = self.out_features, self.in_features
        u = self.codes
        if self.nibbles:
            u = torch.stack((u & 15, u >> 4), dim=-1).view(n, -1)
        q = u[:, :k].to(self.scale.dtype).add_(self.qmin)
        if self.group_size is None:
            if self.zero_point is not None:
                q.sub_(self.zero_point)
            return q.mul_(self.scale)
        g = self.group_size
        groups = num_groups(k, g)
        q = F.pad(q, (0, groups * g - k)).view(n, groups, g)
        if self.zero_point is not None:
            q.sub_(self.zero_point.unsqueeze(-1))
        return q.mul_(self.scale.unsqueeze(-1)).view(n, groups * g)[:, :k]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized_weight(), self.bias)


# ------------------------------------------------------------------------------- the model
@dataclass
class LoweringReport:
    """Attached to a lowered model as ``lowering_report``: the kind of every lowered Linear."""

    rounding: str
    kinds: dict[str, str] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for kind in self.kinds.values():
            out[kind] = out.get(kind, 0) + 1
        return out


def lower(model: nn.Module, rounding: str = "exact") -> nn.Module:
    """A copy of the quantized ``model`` (the output of :func:`quantwm.quant.quantize`) whose
    :class:`QuantLinear` s compute with integer kernels (module doc: kinds and numerics).

    Raises a one-line ``ValueError`` when a QuantLinear has no kernel here, or when nothing is
    quantized. The copy is in eval mode and carries a :class:`LoweringReport`.
    """
    if rounding not in ROUNDINGS:
        raise ValueError(f"unknown rounding {rounding!r}; expected one of {ROUNDINGS}")
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    targets = [(n, m) for n, m in targets if m.w_bits < FLOAT_BITS or m.act is not None]
    if not targets:
        raise ValueError("nothing to lower: the model has no quantized Linear (lower the output "
                         "of quantwm.quant.quantize with some part below 16 bits)")
    for name, m in targets:  # every request is checked before any copy or packing
        act = m.act
        try:
            lowering_kind(m.w_bits, act.bits if act else FLOAT_BITS, m.w_group_size,
                          m.w_symmetric, act.granularity if act else "per_tensor",
                          m.weight.device)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
    lowered = copy.deepcopy(model).eval()
    report = LoweringReport(rounding)
    for name, m in targets:
        new: LoweredLinear = PackedLinear(m) if m.act is None else Int8Linear(m, rounding)
        _set(lowered, name, new.to(m.weight.device))
        report.kinds[name] = new.kind
    lowered.lowering_report = report
    return lowered


def _set(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, attr = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, new)


# ------------------------------------------------------------------------------------ bytes
@dataclass
class WeightBytes:
    """Bytes a model's weights take in memory.

    ``linear``: the transformer blocks' Linears (float: 4 bytes per weight and bias; fake-quant
    QuantLinear: the same, it stores floats; lowered: codes + scales + zero points + bias);
    ``model``: every parameter and buffer, lowered Linears counted by their storage.
    """

    linear: int
    model: int
    by_part: dict[str, int] = field(default_factory=dict)

    def ratio_to(self, other: WeightBytes) -> dict[str, float]:
        return {"linear": self.linear / other.linear, "model": self.model / other.model}


def linear_bytes(module: nn.Module) -> int:
    """Bytes of one Linear-like module (nn.Linear, QuantLinear or lowered)."""
    if isinstance(module, LoweredLinear):
        return sum(module.storage_bytes().values())
    if isinstance(module, nn.Linear | QuantLinear):
        return FLOAT_BYTES * sum(p.numel() for p in (module.weight, module.bias)
                                 if p is not None)
    raise TypeError(f"not a Linear: {type(module).__name__}")


def weight_bytes(model: nn.Module, parts: Mapping[str, str] | None = None) -> WeightBytes:
    """The :class:`WeightBytes` of ``model``; ``by_part`` sums the Linear bytes under each
    ``parts`` path (default: the encoder and the predictor)."""
    parts = dict(parts or {"encoder": "encoder", "predictor": "predictor"})
    linears = {n: m for n, m in model.named_modules()
               if isinstance(m, nn.Linear | QuantLinear | LoweredLinear)}
    inside = {id(t) for m in linears.values()
              for t in (*m.parameters(recurse=False), *m.buffers(recurse=False))}
    rest = sum(t.numel() * t.element_size()
               for t in (*model.parameters(), *model.buffers()) if id(t) not in inside)
    per = {n: linear_bytes(m) for n, m in linears.items()}
    by_part = {role: sum(b for n, b in per.items() if n == path or n.startswith(f"{path}."))
               for role, path in parts.items()}
    return WeightBytes(sum(per.values()), sum(per.values()) + rest, by_part)
