"""Equivalent transformations folded into a LayerNorm and the Linears that read it.

For ``y = W LN(x) + b`` with ``LN(x) = gamma * xhat + beta`` and a per-channel scale ``s > 0``
and shift ``d`` (both of size ``in_features``), rewrite the Linear's input as
``u' = (LN(x) - d) / s``, which is again a LayerNorm with

    gamma' = gamma / s,        beta' = (beta - d) / s,

and compensate in every Linear of the group:

    W' = W diag(s),            b' = b + W d.

Then ``W' u' + b' = W (LN(x) - d) + b + W d = y`` exactly (in real arithmetic). SmoothQuant
uses ``d = 0`` and ``s = max|X|^a / max|W|^(1-a)``; AWQ ``d = 0`` and a searched ``s``;
OmniQuant a learned ``(s, d)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


@torch.no_grad()
def fold_into_norm(
    norm: nn.LayerNorm,
    linears: Sequence[nn.Linear],
    scale: torch.Tensor,
    shift: torch.Tensor | None = None,
) -> None:
    """Fold ``(LN(x) - shift) / scale`` into ``norm`` and compensate in ``linears`` (in place)."""
    if norm.weight is None:
        raise ValueError(
            "cannot fold a scale into a LayerNorm without affine weight "
            "(elementwise_affine=False)"
        )
    scale = scale.to(norm.weight)
    if shift is not None:
        shift = shift.to(norm.weight)
        for lin in linears:
            comp = lin.weight @ shift
            if lin.bias is None:
                lin.bias = nn.Parameter(comp, requires_grad=lin.weight.requires_grad)
            else:
                lin.bias.add_(comp)
        if norm.bias is None:
            norm.bias = nn.Parameter(torch.zeros_like(norm.weight), norm.weight.requires_grad)
        norm.bias.sub_(shift)
    norm.weight.div_(scale)
    if norm.bias is not None:
        norm.bias.div_(scale)
    for lin in linears:
        lin.weight.mul_(scale)


def smooth_scale(
    act_absmax: torch.Tensor, weights: Sequence[torch.Tensor], alpha: float
) -> torch.Tensor:
    """SmoothQuant's ``s_j = max|X_j|^a / max_i |W_ij|^(1-a)`` (max over every W of the group).

    Both maxima are floored at 1e-5, and so is ``s``.
    """
    w_absmax = torch.stack([w.detach().abs().amax(dim=0) for w in weights]).amax(dim=0)
    s = act_absmax.clamp(min=1e-5).pow(alpha) / w_absmax.clamp(min=1e-5).pow(1.0 - alpha)
    return s.clamp(min=1e-5)
