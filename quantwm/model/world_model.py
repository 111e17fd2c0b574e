"""The DINO-WM-style world model: config, conditioning embeddings and ``WorldModel``.

Shapes used throughout: B batch, T frames, N patches per frame, A action dims
(2 x frameskip), P proprio dims, Dz = enc_dim + proprio_emb_dim (latent width),
D = Dz + action_emb_dim (predictor width).

    z       = encoder patch tokens (enc_dim) ++ proprio embedding tiled on every patch
    tokens  = z ++ action embedding tiled on every patch           (predictor input)
    z_next  = predictor(tokens) without the action dims             (predictor output)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from quantwm.model.decoder import Decoder
from quantwm.model.vit import Encoder, Predictor

# One history frame for both: one PushT frame with its proprio is the whole state (the block
# keeps no momentum, the agent's velocity is in the proprio), and a one-frame PushT predictor
# planned as well as one with DINO-WM's 3 frames at 2.3x less compute per rollout
# (docs/world_models.md); `quantwm train --model num_hist=3` trains DINO-WM's.
_ENV_DEFAULTS: dict[str, dict[str, int]] = {
    "wall": {"proprio_dim": 2, "num_hist": 1},
    "pusht": {"proprio_dim": 4, "num_hist": 1},
}


@dataclass
class WorldModelConfig:
    """Every size of the world model. ``WorldModelConfig.for_env(env)`` gives the defaults."""

    env: str = "wall"
    img_size: int = 64
    patch_size: int = 16
    enc_dim: int = 128
    enc_depth: int = 4
    enc_heads: int = 4
    pred_depth: int = 4
    pred_heads: int = 4
    pred_head_dim: int = 32
    mlp_ratio: float = 4.0
    action_emb_dim: int = 10
    proprio_emb_dim: int = 10
    proprio_dim: int = 2
    action_dim: int = 10  # 2 x frameskip raw actions, concatenated
    num_hist: int = 1
    frameskip: int = 5
    dec_width: int = 128

    @classmethod
    def for_env(cls, env: str, **overrides: Any) -> WorldModelConfig:
        """The env's defaults with ``overrides`` (any field but ``env``) applied."""
        if env not in _ENV_DEFAULTS:
            raise ValueError(f"unknown environment {env!r}; expected one of {list(_ENV_DEFAULTS)}")
        fields = {f.name for f in dataclasses.fields(cls)} - {"env"}
        if unknown := sorted(set(overrides) - fields):
            raise ValueError(f"unknown world-model config field(s) {unknown}; "
                             f"expected some of {sorted(fields)}")
        return cls(env=env, **{**_ENV_DEFAULTS[env], **overrides})

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def latent_dim(self) -> int:
        """Dz: width of a latent token (visual + proprio embedding)."""
        return self.enc_dim + self.proprio_emb_dim

    @property
    def pred_dim(self) -> int:
        """D: width of a predictor token (latent + action embedding)."""
        return self.latent_dim + self.action_emb_dim

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class VectorEmbed(nn.Module):
    """Per-frame embedding of a small vector by ``nn.Conv1d(k=1)`` over time.

    A Conv1d rather than a Linear on purpose: the quantizers only touch ``nn.Linear``, and the
    action/proprio embeddings stay in float as in the reference. ``(B, T, in) -> (B, T, out)``.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_dim, out_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.transpose(1, 2)).transpose(1, 2)


def _tile(z: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """Append the per-frame embedding ``emb (B, T, E)`` to every patch of ``z (B, T, N, C)``."""
    return torch.cat([z, emb.unsqueeze(2).expand(-1, -1, z.shape[2], -1)], dim=-1)


class WorldModel(nn.Module):
    """Encoder, predictor, decoder and the action/proprio embeddings around them.

    Action and proprio normalisation statistics are buffers (set from the training split by
    ``set_normalization``), so a checkpoint carries them.
    """

    def __init__(self, config: WorldModelConfig) -> None:
        super().__init__()
        c = self.config = config
        self.encoder = Encoder(c.img_size, c.patch_size, c.enc_dim, c.enc_depth, c.enc_heads,
                               c.mlp_ratio)
        self.predictor = Predictor(c.num_hist, c.num_patches, c.pred_dim, c.pred_depth,
                                   c.pred_heads, c.pred_head_dim, c.mlp_ratio)
        self.decoder = Decoder(c.img_size, c.patch_size, c.enc_dim, c.dec_width)
        self.action_encoder = VectorEmbed(c.action_dim, c.action_emb_dim)
        self.proprio_encoder = VectorEmbed(c.proprio_dim, c.proprio_emb_dim)
        self.register_buffer("action_mean", torch.zeros(c.action_dim))
        self.register_buffer("action_std", torch.ones(c.action_dim))
        self.register_buffer("proprio_mean", torch.zeros(c.proprio_dim))
        self.register_buffer("proprio_std", torch.ones(c.proprio_dim))
        self.meta: dict[str, Any] = {}  # training metadata, filled by quantwm.model.load
        self.apply(_init_weights)

    @property
    def device(self) -> torch.device:
        """Where the model lives (inputs of ``encode`` / ``rollout`` must be there too)."""
        return self.action_mean.device

    # ----------------------------------------------------------------------------- normalisation
    def set_normalization(self, action_mean: torch.Tensor, action_std: torch.Tensor,
                          proprio_mean: torch.Tensor, proprio_std: torch.Tensor) -> None:
        """Store the training split's statistics (std is floored to avoid division by ~0)."""
        for name, value in [("action_mean", action_mean), ("action_std", action_std),
                            ("proprio_mean", proprio_mean), ("proprio_std", proprio_std)]:
            buf = getattr(self, name)
            value = torch.as_tensor(value, dtype=buf.dtype).to(buf.device)
            if value.shape != buf.shape:
                raise ValueError(f"{name} has shape {tuple(value.shape)}, expected "
                                 f"{tuple(buf.shape)}")
            buf.copy_(value.clamp_min(1e-6) if name.endswith("std") else value)

    def normalize_action(self, action: torch.Tensor) -> torch.Tensor:
        return (action - self.action_mean) / self.action_std

    def denormalize_action(self, action: torch.Tensor) -> torch.Tensor:
        return action * self.action_std + self.action_mean

    def normalize_proprio(self, proprio: torch.Tensor) -> torch.Tensor:
        return (proprio - self.proprio_mean) / self.proprio_std

    # ---------------------------------------------------------------------------- the four verbs
    def encode(self, visual: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        """Observations -> latent ``z (B, T, N, Dz)``.

        ``visual (B, T, 3, H, W)``: float in [0, 1] (or uint8 0..255); ``proprio (B, T, P)``:
        raw values as the environment gives them (normalised here).
        """
        c = self.config
        self._check(visual, "visual", (None, None, 3, c.img_size, c.img_size))
        B, T = visual.shape[:2]
        self._check(proprio, "proprio", (B, T, c.proprio_dim))
        if visual.dtype == torch.uint8:
            visual = visual.float() / 255.0
        patches = self.encoder(visual.flatten(0, 1)).unflatten(0, (B, T))  # (B, T, N, enc_dim)
        return _tile(patches, self.proprio_encoder(self.normalize_proprio(proprio)))

    def predict(self, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Teacher-forced one-step prediction of every frame in one pass.

        ``z (B, T, N, Dz)`` with T <= num_hist, ``action (B, T, A)`` normalised (action t is
        taken at frame t) -> ``z_next (B, T, N, Dz)``: output t predicts frame t + 1 and,
        through the block-causal mask, depends on frames 0..t only.
        """
        c = self.config
        self._check(z, "z", (None, None, c.num_patches, c.latent_dim))
        B, T = z.shape[:2]
        if not 1 <= T <= c.num_hist:
            raise ValueError(f"predict got {T} frames; the predictor takes 1..{c.num_hist}")
        self._check(action, "action", (B, T, c.action_dim))
        tokens = _tile(z, self.action_encoder(action)).flatten(1, 2)  # (B, T*N, D)
        out = self.predictor(tokens).unflatten(1, (T, c.num_patches))
        return out[..., : c.latent_dim]

    def rollout(self, z_hist: torch.Tensor, actions: torch.Tensor,
                hist_actions: torch.Tensor | None = None) -> torch.Tensor:
        """Autoregressive prediction of K frames from H history frames.

        ``z_hist (B, H, N, Dz)``; ``actions (B, K, A)`` normalised, ``actions[:, 0]`` taken at the
        last history frame; ``hist_actions (B, H - 1, A)`` the actions taken between the history
        frames (needed only when H > 1). Each step runs the predictor on the window of the last
        ``num_hist`` frames and appends its last output. Returns ``(B, K, N, Dz)``.
        """
        c = self.config
        self._check(z_hist, "z_hist", (None, None, c.num_patches, c.latent_dim))
        B, H = z_hist.shape[:2]
        self._check(actions, "actions", (B, None, c.action_dim))
        if H > 1:
            if hist_actions is None:
                raise ValueError(f"rollout from {H} history frames needs hist_actions "
                                 f"(B, {H - 1}, {c.action_dim})")
            self._check(hist_actions, "hist_actions", (B, H - 1, c.action_dim))
            actions = torch.cat([hist_actions, actions], dim=1)
        act_emb = self.action_encoder(actions)  # (B, H - 1 + K, E): one per input frame
        frames = list(z_hist.unbind(1))
        for _ in range(actions.shape[1] - H + 1):
            end = len(frames)
            start = max(0, end - c.num_hist)
            window = _tile(torch.stack(frames[start:end], 1), act_emb[:, start:end])
            out = self.predictor(window.flatten(1, 2))[:, -c.num_patches:, : c.latent_dim]
            frames.append(out)
        return torch.stack(frames[H:], 1)

    def rollout_window(self, z: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Open loop over a recorded window: from the first ``num_hist`` frames of
        ``z (B, T, N, Dz)``, with the window's normalised ``actions (B, >= T - 1, A)``
        (``actions[:, t]`` taken at frame t), predict frames num_hist..T-1:
        ``(B, T - num_hist, N, Dz)``."""
        h, T = self.config.num_hist, z.shape[1]
        hist = actions[:, : h - 1] if h > 1 else None
        return self.rollout(z[:, :h], actions[:, h - 1: T - 1], hist_actions=hist)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``z (B, T, N, >= enc_dim)`` -> images ``(B, T, 3, H, W)`` in [0, 1]."""
        c = self.config
        self._check(z, "z", (None, None, c.num_patches, None))
        if z.shape[-1] < c.enc_dim:
            raise ValueError(f"z has width {z.shape[-1]} < enc_dim {c.enc_dim}")
        B, T = z.shape[:2]
        patches = self.encoder.unstandardize(z[..., : c.enc_dim].flatten(0, 1))
        return self.decoder(patches).unflatten(0, (B, T))

    # ------------------------------------------------------------------------------------ sizes
    def predictor_flops(self, num_frames: int = 1) -> int:
        """FLOPs (2 x multiply-adds) of one predictor forward of one sample of T frames.

        Counts the Linears, the attention matmuls (QK^T and AV; the block-causal mask is not
        exploited by SDPA here) and nothing else (norms, softmax, GELU are O(L x D)).
        """
        c = self.config
        L = num_frames * c.num_patches
        inner = c.pred_heads * c.pred_head_dim
        hidden = int(round(c.pred_dim * c.mlp_ratio))
        linear = L * (c.pred_dim * 3 * inner + inner * c.pred_dim + 2 * c.pred_dim * hidden)
        attention = 2 * L * L * inner
        return 2 * c.pred_depth * (linear + attention)

    @staticmethod
    def _check(x: torch.Tensor, name: str, shape: tuple[int | None, ...]) -> None:
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        ok = x.ndim == len(shape) and all(s is None or s == d for s, d in zip(shape, x.shape,
                                                                              strict=True))
        if not ok:
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {want}")


def _init_weights(module: nn.Module) -> None:
    """nanoGPT-style init: Linear weights N(0, 0.02), biases zero."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
