"""A small conv decoder from patch latents back to pixels. For looking at latents only."""

from __future__ import annotations

import torch
from torch import nn


class Decoder(nn.Module):
    """``decoder(latents (B, N, dim)) -> images (B, 3, H, W)`` in [0, 1].

    The N = g x g patch tokens are laid out on their g x g grid and upsampled by 2 per stage
    (transposed conv + conv; the last one straight to RGB) until each token covers
    ``patch_size`` pixels.
    """

    def __init__(self, img_size: int, patch_size: int, dim: int, width: int = 64) -> None:
        super().__init__()
        stages = patch_size.bit_length() - 1
        if patch_size != 2**stages:
            raise ValueError(f"decoder needs a power-of-two patch_size, got {patch_size}")
        self.grid = img_size // patch_size
        layers: list[nn.Module] = [nn.Conv2d(dim, 2 * width, kernel_size=1), nn.GELU()]
        ch = 2 * width
        for i in range(stages - 1):
            out = max(width >> i, 16)
            layers += [
                nn.ConvTranspose2d(ch, out, kernel_size=4, stride=2, padding=1), nn.GELU(),
                nn.Conv2d(out, out, kernel_size=3, padding=1), nn.GELU(),
            ]
            ch = out
        # the last (full-resolution) upsampling goes straight to RGB: the costliest stage, kept thin
        layers += [nn.ConvTranspose2d(ch, 3, kernel_size=4, stride=2, padding=1), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        B, N, D = latents.shape
        x = latents.transpose(1, 2).reshape(B, D, self.grid, self.grid)
        return self.net(x)
