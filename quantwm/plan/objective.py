"""The planning objective of DINO-WM: MSE between a predicted frame's latent and the goal's.

A latent frame is ``(..., N, D)``: N patch tokens whose first ``D - proprio_dim`` dims are the
visual patch embedding and whose last ``proprio_dim`` dims are the proprio embedding tiled onto
every patch (see docs/architecture.md). The objective is the visual-patch MSE plus
``proprio_weight`` times the proprio-embedding MSE.
"""

from __future__ import annotations

import torch
from torch import Tensor


def latent_objective(z: Tensor, z_goal: Tensor, proprio_dim: int = 10,
                     proprio_weight: float = 1.0) -> Tensor:
    """Objective of latent frames ``z (..., N, D)`` against ``z_goal`` (broadcastable).

    Returns a tensor of shape ``z.shape[:-2]`` (one value per frame); lower is better.
    """
    if z.shape[-1] <= proprio_dim:
        raise ValueError(
            f"latent width {z.shape[-1]} must exceed the proprio embedding width {proprio_dim}"
        )
    sq = (z - z_goal).square_()
    visual = sq[..., :-proprio_dim].mean(dim=(-2, -1))
    if proprio_dim == 0 or proprio_weight == 0:
        return visual
    proprio = sq[..., -proprio_dim:].mean(dim=(-2, -1))
    return visual + proprio_weight * proprio


def proprio_emb_dim(world_model: torch.nn.Module) -> int:
    """The proprio embedding width of a world model (``config.proprio_emb_dim``, default 10)."""
    config = getattr(world_model, "config", None)
    return int(getattr(config, "proprio_emb_dim", 10))
