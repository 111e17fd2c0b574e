"""A true-state "world model" of Wall, to tell planner failures from model failures.

``WallOracle`` implements the WorldModel methods the planner uses with the environment's exact
dynamics (``quantwm.envs.wall.wall_step``, walls included) on a latent that is the agent
position: the visual part is the position tiled on one patch, the proprio part a fixed linear
embedding of it, so the planning objective is a multiple of the squared distance to the goal.
If the planner reaches the goals with the oracle at a profile but not with the learned model,
the profile's search budget is enough and the model is the problem. With ``door_path_weight``
w > 0 the visual part also holds w times the door-path coordinate
(``quantwm.model.sources.door_path_coordinate``), the latent geometry the kit's encoder is
trained to carry: the objective then grows with the length of the path through the door.

The oracle knows one layout (``wall_x``, ``door_y``), so ``plan_with_oracle`` plans episode by
episode (batched planning equals one-by-one planning, see ``plan_episodes``).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from quantwm.plan.config import PlannerConfig
from quantwm.plan.mpc import PlanResult, plan_episodes

_SCALE = 10.0  # latent = position / 10 px


class _Identity(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x


class WallOracle(nn.Module):
    """Exact Wall dynamics on a position latent ``(B, T, 1, 2 [+ 1] + 10)`` (see module
    docstring)."""

    def __init__(self, wall_x: float, door_y: float, action_mean: Tensor | None = None,
                 action_std: Tensor | None = None, frameskip: int = 5, img_size: int = 64,
                 door_path_weight: float = 0.0) -> None:
        super().__init__()
        self.wall_x, self.door_y = float(wall_x), float(door_y)
        self.door_path_weight = float(door_path_weight)
        self.config = SimpleNamespace(img_size=img_size, frameskip=frameskip,
                                      action_dim=2 * frameskip, proprio_emb_dim=10, num_hist=1)
        proj = torch.randn(2, 10, generator=torch.Generator().manual_seed(0)) / np.sqrt(2.0)
        self.register_buffer("proj", proj)
        mean = torch.zeros(2 * frameskip) if action_mean is None else action_mean
        std = torch.ones(2 * frameskip) if action_std is None else action_std
        self.register_buffer("action_mean", torch.as_tensor(mean, dtype=torch.float32).clone())
        self.register_buffer("action_std", torch.as_tensor(std, dtype=torch.float32).clone())
        self.encoder = _Identity()
        self.predictor = _Identity()

    def normalize_action(self, a: Tensor) -> Tensor:
        return (a - self.action_mean) / self.action_std

    def denormalize_action(self, a: Tensor) -> Tensor:
        return a * self.action_std + self.action_mean

    def _latent(self, pos: Tensor) -> Tensor:  # pos (..., 2) px -> (..., 1, 12 or 13)
        p = pos / _SCALE
        parts = [p]
        if self.door_path_weight > 0:
            from quantwm.model.sources import door_path_coordinate

            h = door_path_coordinate(pos[..., 0].double().cpu().numpy(),
                                     pos[..., 1].double().cpu().numpy(), self.wall_x, self.door_y)
            h = torch.from_numpy(h).to(pos) / _SCALE * self.door_path_weight
            parts.append(h[..., None])
        return torch.cat([*parts, p @ self.proj], dim=-1).unsqueeze(-2)

    def encode(self, visual: Tensor, proprio: Tensor) -> Tensor:
        return self._latent(proprio[..., :2].float())

    def rollout(self, z_hist: Tensor, actions: Tensor) -> Tensor:
        from quantwm.envs.wall import wall_step

        pos = (z_hist[:, -1, 0, :2] * _SCALE).double().cpu().numpy()
        raw = self.denormalize_action(actions).double().cpu().numpy()
        k_steps = raw.shape[1]
        raw = raw.reshape(raw.shape[0], k_steps, self.config.frameskip, 2)
        frames = []
        for k in range(k_steps):
            for f in range(self.config.frameskip):
                pos = wall_step(pos, raw[:, k, f], self.wall_x, self.door_y)
            frames.append(torch.from_numpy(pos).float())
        return self._latent(torch.stack(frames, 1).to(z_hist.device))


class WallRenderOracle(nn.Module):
    """Exact Wall dynamics, scored in a learned model's latent space.

    ``rollout`` moves the true position with ``wall_step``, renders the final frame and encodes
    it with ``world_model.encode``: the planner then optimises the learned objective under
    perfect dynamics. Good results here and bad ones with the learned model point at the
    model's dynamics; bad ones here point at the objective (or the search budget).
    For one episode at a time only: the start position is the proprio of the last observation
    given to ``encode`` (``plan_episodes`` encodes the current observation right before each
    round), and only the last predicted frame is real (the planner's objective reads no other).
    """

    def __init__(self, world_model: nn.Module, wall_x: float, door_y: float) -> None:
        super().__init__()
        self.wm = world_model
        self.wall_x, self.door_y = float(wall_x), float(door_y)
        self.config = world_model.config
        self.encoder, self.predictor = world_model.encoder, world_model.predictor
        self._pos = np.zeros((1, 2))

    def normalize_action(self, a: Tensor) -> Tensor:
        return self.wm.normalize_action(a)

    def denormalize_action(self, a: Tensor) -> Tensor:
        return self.wm.denormalize_action(a)

    def encode(self, visual: Tensor, proprio: Tensor) -> Tensor:
        self._pos = proprio[:, -1, :2].double().cpu().numpy()
        return self.wm.encode(visual, proprio)

    def rollout(self, z_hist: Tensor, actions: Tensor) -> Tensor:
        from quantwm.envs.wall import render_wall, wall_step

        if len(self._pos) != 1:
            raise ValueError("WallRenderOracle plans one episode at a time")
        n, k_steps = actions.shape[:2]
        pos = np.repeat(self._pos, n, axis=0)
        raw = self.denormalize_action(actions).double().cpu().numpy()
        raw = raw.reshape(n, k_steps * self.config.frameskip, 2)
        for f in range(raw.shape[1]):
            pos = wall_step(pos, raw[:, f], self.wall_x, self.door_y)
        img = render_wall(pos, self.wall_x, self.door_y, self.config.img_size)
        visual = torch.from_numpy(img).to(z_hist.device).permute(0, 3, 1, 2).float() / 255.0
        proprio = torch.from_numpy(pos).float().to(z_hist.device)
        z = self.wm.encode(visual[:, None], proprio[:, None])  # (n, 1, N, Dz)
        return z.expand(-1, k_steps, -1, -1)


def plan_with_oracle(episodes: Any, config: PlannerConfig, action_mean: Tensor | None = None,
                     action_std: Tensor | None = None, progress: bool = False,
                     world_model: nn.Module | None = None, door_path_weight: float = 0.0
                     ) -> list[PlanResult]:
    """Plan every Wall episode with its own oracle; one ``PlanResult`` per episode.

    Without ``world_model``: ``WallOracle`` (position latent, Euclidean objective, plus the
    door-path coordinate if ``door_path_weight`` > 0). With it: ``WallRenderOracle`` (exact
    dynamics, that model's encoder and objective; its action statistics are used).
    """
    if episodes.env_name != "wall":
        raise ValueError(f"the oracle knows Wall only, got {episodes.env_name!r}")
    out = []
    for i in range(len(episodes.ids)):
        kw = episodes.env_kwargs(i)
        if world_model is None:
            oracle = WallOracle(kw["wall_x"], kw["door_y"], action_mean, action_std,
                                door_path_weight=door_path_weight)
        else:
            oracle = WallRenderOracle(world_model, kw["wall_x"], kw["door_y"])
        one = SimpleNamespace(
            env_name="wall", ids=[episodes.ids[i]],
            start_states=np.asarray(episodes.start_states)[i:i + 1],
            goal_states=np.asarray(episodes.goal_states)[i:i + 1],
            env_kwargs=lambda _j, kw=kw: kw,
        )
        out.append(plan_episodes(oracle, one, config, progress=progress))
    return out
