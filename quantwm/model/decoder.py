"""A small conv decoder from patch latents back to pixels. For looking at latents only."""

from __future__ import annotations

import torch
from torch import nn


class Decoder(nn.Module):
    """``decoder(latents (B, N, dim)) -> images (B, 3, H, W)`` in [0, 1].

    The N = g x g patch tokens are laid out on their g x g grid, mixed with their neighbours by
    a 3 x 3 conv, and each token then paints its own ``patch_size`` x ``patch_size`` pixels
    with a transposed conv of stride ``patch_size`` (MAE's per-patch pixel head, made conv).
    Kept this light on purpose: it costs about a fifth of the encoder, so stage-1 training
    (where it shapes the encoder through a reconstruction loss) stays cheap on a CPU.
    """

    def __init__(self, img_size: int, patch_size: int, dim: int, width: int = 128) -> None:
        super().__init__()
        self.grid = img_size // patch_size
        self.net = nn.Sequential(
            nn.Conv2d(dim, width, kernel_size=1), nn.GELU(),
            nn.Conv2d(width, width, kernel_size=3, padding=1), nn.GELU(),
            nn.ConvTranspose2d(width, 3, kernel_size=patch_size, stride=patch_size),
            nn.Sigmoid(),
        )

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        B, N, D = latents.shape
        x = latents.transpose(1, 2).reshape(B, D, self.grid, self.grid)
        return self.net(x)
