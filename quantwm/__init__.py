"""quantwm: post-training quantization of DINO-WM-style world models used for planning.

Importing the package registers the gymnasium environments ``quantwm/Wall-v0`` and
``quantwm/PushT-v0``. Heavier parts (model, planner, quantizers) are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from quantwm import envs as envs  # noqa: F401  (registers the environments)

__version__ = "0.1.0"

_LAZY = {
    "quantize": ("quantwm.quant", "quantize"),
    "QuantConfig": ("quantwm.quant", "QuantConfig"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'quantwm' has no attribute {name!r}")
