"""The quantization configuration: one dataclass, validated on construction.

Which methods quantize what (following the study paper's tables):

==============  ============================  =====================================
method          weights                       activations
==============  ============================  =====================================
rtn             min-max                       min-max (optional)
omse            MSE-optimal clip search       min-max (optional)
smoothquant     min-max after smoothing       **required** (weight-activation only)
awq, awq_ref    AWQ scales + clip search      **not allowed** (weight-only)
omniquant(_ref) learned clipping (+ LET)      min-max after LET (optional)
==============  ============================  =====================================

"Required" means: every part whose weights are quantized must also quantize its activations
(SmoothQuant only moves difficulty from activations to weights, which is pointless without
activation quantization). "Not allowed" means: ``a_bits`` must be >= 16 (float) everywhere.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import NamedTuple

from quantwm.quant.primitives import FLOAT_BITS, check_bits, check_group_size

METHODS: tuple[str, ...] = (
    "rtn", "omse", "smoothquant", "awq", "awq_ref", "omniquant", "omniquant_ref",
)
# Bumped whenever a method's numbers change, so that results made before are stale (the result
# store reruns them). 2: OmniQuant trains against the shipped activation quantizer and keeps
# each block's best epoch; awq_ref clips q/k rows as the reference did.
METHOD_REVISIONS: dict[str, int] = {
    "rtn": 1, "omse": 1, "smoothquant": 1, "awq": 1, "awq_ref": 2, "omniquant": 2,
    "omniquant_ref": 1,
}
WEIGHT_ONLY_METHODS: tuple[str, ...] = ("awq", "awq_ref")
WEIGHT_ACTIVATION_METHODS: tuple[str, ...] = ("smoothquant",)
ROLES: tuple[str, ...] = ("encoder", "predictor")
ACT_GRANULARITIES: tuple[str, ...] = ("per_tensor", "per_token")
_NAMES = {
    "rtn": "RTN", "omse": "OMSE", "smoothquant": "SmoothQuant", "awq": "AWQ",
    "awq_ref": "AWQ(ref)", "omniquant": "OmniQuant", "omniquant_ref": "OmniQuant(ref)",
}


class Bits(NamedTuple):
    """Bit widths of one part: weights ``w`` and Linear inputs ``a`` (>= 16 = float)."""

    w: int = FLOAT_BITS
    a: int = FLOAT_BITS

    @property
    def is_float(self) -> bool:
        return self.w >= FLOAT_BITS and self.a >= FLOAT_BITS

    def label(self) -> str:
        return f"W{_b(self.w)}A{_b(self.a)}"


def _b(bits: int) -> str:
    return "32" if bits >= FLOAT_BITS else str(bits)


@dataclass(frozen=True)
class QuantConfig:
    """Everything that defines one quantized model (see the module doc for the methods).

    Bits are ``(w_bits, a_bits)`` per part; 16 or more means float (tables print it as 32).
    ``w_group_size=None`` is per-output-channel weights, an int is per-group along the input
    dim (a last partial group is allowed). ``act_granularity`` is ``"per_tensor"`` (static,
    calibrated min/max) or ``"per_token"`` (dynamic). ``parts`` maps the roles ``encoder`` /
    ``predictor`` to submodule paths of the model.

    Method options: ``alpha`` (SmoothQuant, and OmniQuant's LET init); ``omse_grid``
    ``(r_min, r_max, points)``; ``awq_grid`` (scale exponents ``i / awq_grid``,
    ``i < awq_grid``), ``awq_clip_grid`` / ``awq_max_shrink`` (clip ratios ``1 - i / grid`` for
    ``i < max_shrink * grid``); ``epochs`` (OmniQuant; ``omniquant_ref`` always uses 0),
    ``lr_lwc``, ``lr_let``, ``omni_let`` (None = LET only where activations are quantized, as
    OmniQuant's own weight-only recipes); ``search_rows`` / ``batch_size`` (calibration rows used
    by the block-wise methods AWQ and OmniQuant, and their batch size); ``calib_rows`` (rows for
    the activation statistics, None = all); ``seed``.
    """

    method: str = "rtn"
    encoder: Bits | tuple[int, int] = Bits()
    predictor: Bits | tuple[int, int] = Bits()
    w_group_size: int | None = None
    act_granularity: str = "per_tensor"
    w_symmetric: bool = True
    a_symmetric: bool = False
    alpha: float = 0.5
    omse_grid: tuple[float, float, int] = (0.35, 1.0, 101)
    awq_grid: int = 20
    awq_clip_grid: int = 20
    awq_max_shrink: float = 0.5
    epochs: int = 20
    lr_lwc: float = 1e-2
    lr_let: float = 5e-3
    omni_let: bool | None = None
    search_rows: int = 64
    batch_size: int = 8
    calib_rows: int | None = None
    seed: int = 0
    parts: dict[str, str] = field(
        default_factory=lambda: {"encoder": "encoder", "predictor": "predictor"}
    )

    def __post_init__(self) -> None:
        for role in ROLES:
            object.__setattr__(self, role, _bits(getattr(self, role), role))
        object.__setattr__(self, "w_group_size", check_group_size(self.w_group_size))
        self.validate()

    def __hash__(self) -> int:  # usable as a dict key although ``parts`` is a dict
        values = [getattr(self, f.name) for f in dataclasses.fields(self)]
        return hash(tuple(tuple(sorted(v.items())) if isinstance(v, dict) else v
                          for v in values))

    def bits(self, role: str) -> Bits:
        """The ``(w, a)`` bits of a role (``encoder`` or ``predictor``)."""
        if role not in ROLES:
            raise ValueError(f"unknown part role {role!r}; expected one of {ROLES}")
        return getattr(self, role)

    def replace(self, **changes) -> QuantConfig:
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad value."""
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; expected one of {METHODS}")
        check_group_size(self.w_group_size)
        if self.act_granularity not in ACT_GRANULARITIES:
            raise ValueError(
                f"unknown act_granularity {self.act_granularity!r}; "
                f"expected one of {ACT_GRANULARITIES}"
            )
        for name in ("w_symmetric", "a_symmetric"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        self._validate_method_bits()
        self._validate_options()
        self._validate_parts()

    def _validate_method_bits(self) -> None:
        for role in ROLES:
            b = self.bits(role)
            if self.method in WEIGHT_ONLY_METHODS and b.a < FLOAT_BITS:
                raise ValueError(
                    f"{self.method} is weight-only: {role} a_bits={b.a} must be >= 16 (float); "
                    "use rtn, omse, smoothquant or omniquant for activation quantization"
                )
            if self.method in WEIGHT_ACTIVATION_METHODS and b.w < FLOAT_BITS <= b.a:
                raise ValueError(
                    f"{self.method} is a weight-activation method: {role} has w_bits={b.w} but "
                    f"a_bits={b.a} (float); give a_bits in 2..8 or use a weight-only method"
                )

    def _validate_options(self) -> None:
        alpha = _real(self.alpha, "alpha")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha!r}")
        grid = self.omse_grid
        if not isinstance(grid, tuple | list) or len(grid) != 3 or not all(
                isinstance(v, numbers.Real) and not isinstance(v, bool) for v in grid):
            ok = False
        else:
            lo, hi, n = grid
            ok = 0.0 < lo <= hi <= 1.0 and isinstance(n, numbers.Integral) and n >= 1
        if not ok:
            raise ValueError(
                f"omse_grid must be (r_min, r_max, points) with 0 < r_min <= r_max <= 1 and "
                f"points >= 1, got {self.omse_grid!r}"
            )
        _positive_int(self.awq_grid, "awq_grid")
        _positive_int(self.awq_clip_grid, "awq_clip_grid")
        if not 0.0 <= _real(self.awq_max_shrink, "awq_max_shrink") < 1.0:
            raise ValueError(f"awq_max_shrink must be in [0, 1), got {self.awq_max_shrink!r}")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 0:
            raise ValueError(f"epochs must be a non-negative integer, got {self.epochs!r}")
        for name in ("lr_lwc", "lr_let"):
            if not _real(getattr(self, name), name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.omni_let is not None and not isinstance(self.omni_let, bool):
            raise ValueError(f"omni_let must be True, False or None, got {self.omni_let!r}")
        _positive_int(self.search_rows, "search_rows")
        _positive_int(self.batch_size, "batch_size")
        if self.calib_rows is not None:
            _positive_int(self.calib_rows, "calib_rows")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")

    def _validate_parts(self) -> None:
        if not isinstance(self.parts, dict) or not set(self.parts) <= set(ROLES):
            raise ValueError(f"parts must map roles {ROLES} to module paths, got {self.parts!r}")
        for role, path in self.parts.items():
            if not isinstance(path, str):
                raise ValueError(f"parts[{role!r}] must be a module path string, got {path!r}")

    def label(self) -> str:
        """A short row label, e.g. ``"OMSE E:W32A32 P:W4A8 G128 per-token"``."""
        parts = [_NAMES[self.method]]
        parts += [f"{r[0].upper()}:{self.bits(r).label()}" for r in ROLES if r in self.parts]
        parts.append("G-" if self.w_group_size is None else f"G{self.w_group_size}")
        if any(self.bits(r).a < FLOAT_BITS for r in ROLES if r in self.parts):
            parts.append(self.act_granularity.replace("_", "-"))
        return " ".join(parts)


def _bits(value: Bits | tuple[int, int], role: str) -> Bits:
    if not isinstance(value, tuple) or len(value) != 2:
        raise ValueError(f"{role} must be (w_bits, a_bits), got {value!r}")
    w, a = value
    return Bits(check_bits(w, f"{role} w_bits"), check_bits(a, f"{role} a_bits"))


def _real(value: object, name: str) -> float:
    """``value`` as a finite float, or a ValueError naming ``name`` (strings and bools are not
    numbers here)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _positive_int(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
