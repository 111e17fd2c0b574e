"""Transformer parts: one pre-LN ``Block``, the ViT encoder and the block-causal predictor.

Every linear map that the quantizers act on lives in a ``Block`` under fixed names:
``norm1 -> attn.qkv -> attention -> attn.proj`` and ``norm2 -> mlp.fc1 -> GELU -> mlp.fc2``.
Nothing else inside a block is an ``nn.Linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention: ``qkv`` (dim -> 3 * heads * head_dim), SDPA, ``proj`` back."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.qkv = nn.Linear(dim, 3 * inner)
        self.proj = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, L, _ = x.shape
        qkv = self.qkv(x).view(B, L, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, L, head_dim)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).reshape(B, L, self.heads * self.head_dim)
        return self.proj(y)


class MLP(nn.Module):
    """``fc1 -> GELU -> fc2``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(round(dim * mlp_ratio)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask)
        x = x + self.mlp(self.norm2(x))
        return x


def block_causal_mask(num_frames: int, tokens_per_frame: int, device: torch.device | str
                      ) -> torch.Tensor | None:
    """Boolean (L, L) mask, True where query token i may attend to key token j.

    A token sees every token of its own frame and of earlier frames. With one frame there is
    nothing to hide and ``None`` is returned (SDPA then takes its fastest path).
    """
    if num_frames == 1:
        return None
    frame = torch.arange(num_frames * tokens_per_frame, device=device) // tokens_per_frame
    return frame[:, None] >= frame[None, :]


class Encoder(nn.Module):
    """ViT image encoder whose patch tokens are the latent state (no CLS token).

    ``encoder(images (B, 3, H, W) in [0, 1]) -> (B, N, dim)`` with N = (H / patch)^2.
    """

    def __init__(self, img_size: int, patch_size: int, dim: int, depth: int, heads: int,
                 mlp_ratio: float) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.img_size, self.patch_size = img_size, patch_size
        self.num_patches = (img_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, dim // heads, mlp_ratio)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        # fixed output standardisation, set per environment (see train.set_latent_standardization)
        self.register_buffer("out_shift", torch.zeros(self.num_patches, dim))
        self.register_buffer("out_scale", torch.ones(()))
        nn.init.normal_(self.pos_embed, std=0.02)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images * 2.0 - 1.0)  # (B, dim, h, w), pixels centred on 0
        x = x.flatten(2).transpose(1, 2) + self.pos_embed  # (B, N, dim)
        for block in self.blocks:
            x = block(x)
        return (self.norm(x) - self.out_shift) * self.out_scale

    def unstandardize(self, z: torch.Tensor) -> torch.Tensor:
        """Undo the output standardisation: the final norm's output (what the decoder reads)."""
        return z / self.out_scale + self.out_shift


class Predictor(nn.Module):
    """Pre-LN ViT over (frames x patches) tokens with a block-causal frame mask.

    ``predictor(tokens (B, T * N, dim)) -> (B, T * N, dim)``; T is read from the input length
    (T <= num_frames), the mask is built on the input's device.
    """

    def __init__(self, num_frames: int, num_patches: int, dim: int, depth: int, heads: int,
                 head_dim: int, mlp_ratio: float) -> None:
        super().__init__()
        self.num_frames, self.num_patches = num_frames, num_patches
        self.pos_embed = nn.Parameter(torch.zeros(1, num_frames * num_patches, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, head_dim, mlp_ratio)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        nn.init.normal_(self.pos_embed, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        L = tokens.shape[1]
        T = L // self.num_patches
        if L % self.num_patches or not 1 <= T <= self.num_frames:
            raise ValueError(f"predictor got {L} tokens; expected T * {self.num_patches} "
                             f"with 1 <= T <= {self.num_frames}")
        mask = block_causal_mask(T, self.num_patches, tokens.device)
        x = tokens + self.pos_embed[:, :L]
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)
