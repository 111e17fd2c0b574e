"""A tiny DINO-WM-shaped model for the quantization tests and benchmark.

``ToyWorldModel`` has an ``encoder`` (Conv2d patch embedding + blocks + final LayerNorm,
``(B, 3, H, W) -> (B, N, dim)``) and a ``predictor`` (position embedding + blocks with a
block-causal frame mask built inside from the token count + final LayerNorm,
``(B, T * N, dim) -> (B, T * N, dim)``). Every block has exactly the kit's layout::

    norm1 -> attn.qkv -> attention -> attn.proj ; norm2 -> mlp.fc1 -> GELU -> mlp.fc2

Width 148 = 128 + 20 and MLP width 592 = 4 * 128 + 80 leave a partial last group at group
size 128. A few channels of every LayerNorm get a large gain and offset ("planted outliers"),
as in trained ViTs, so SmoothQuant and AWQ have something to do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

OUTLIER_CHANNELS = (3, 70, 141)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio * dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class ToyEncoder(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, patch: int = 4, img: int = 16):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.pos = nn.Parameter(0.02 * torch.randn(1, (img // patch) ** 2, dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images).flatten(2).transpose(1, 2) + self.pos
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


class ToyPredictor(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, patches: int, max_frames: int = 3):
        super().__init__()
        self.patches = patches
        self.pos = nn.Parameter(0.02 * torch.randn(1, max_frames * patches, dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def frame_mask(self, n_tokens: int, device: torch.device) -> torch.Tensor:
        """Token i sees token j when j's frame is not later than i's (block-causal)."""
        frame = torch.arange(n_tokens, device=device) // self.patches
        return frame[None, :] <= frame[:, None]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        x = tokens + self.pos[:, :n]
        mask = self.frame_mask(n, tokens.device)
        for blk in self.blocks:
            x = blk(x, mask=mask)
        return self.norm(x)


class ToyWorldModel(nn.Module):
    def __init__(self, dim: int = 148, heads: int = 4, enc_depth: int = 2, pred_depth: int = 2,
                 patches: int = 16, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng():  # seeded without touching the caller's global RNG
            torch.manual_seed(seed)
            self.encoder = ToyEncoder(dim, enc_depth, heads)
            self.predictor = ToyPredictor(dim, pred_depth, heads, patches)
            self.decoder = nn.Linear(dim, 48)  # a Linear outside any block: must stay float
            plant_outliers(self)


@torch.no_grad()
def plant_outliers(model: nn.Module, channels: tuple[int, ...] = OUTLIER_CHANNELS,
                   gain: float = 10.0) -> None:
    """Give a few LayerNorm channels a large gain and offset, and strengthen the blocks."""
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            m.weight.normal_(1.0, 0.1)
            m.bias.normal_(0.0, 0.1)
            m.weight[list(channels)] *= gain
            m.bias[list(channels)] += gain / 4
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 1.0 / m.in_features**0.5)
            nn.init.normal_(m.bias, 0.0, 0.02)


def make_calibration(model: ToyWorldModel, n_batches: int = 3, batch: int = 8,
                     frames: tuple[int, ...] = (1, 2), seed: int = 1) -> dict:
    """Calibration inputs as the planner would record them: images for the encoder, token
    sequences of 1 or 2 frames (different shapes) for the predictor."""
    g = torch.Generator().manual_seed(seed)  # drawn on the CPU, placed on the model's device
    dev = next(model.parameters()).device
    images = [torch.rand(batch, 3, 16, 16, generator=g).to(dev) for _ in range(n_batches)]
    with torch.no_grad():
        z = [model.encoder(x) for x in images]
    tokens = []
    for i, zi in enumerate(z):
        t = frames[i % len(frames)]
        tokens.append(torch.cat([zi] * t, dim=1) + 0.1 * torch.randn(
            batch, t * zi.shape[1], zi.shape[2], generator=g).to(dev))
    return {"encoder": images, "predictor": tokens}
