"""Batched cross-entropy method: plan action sequences for many episodes at once.

Every CEM step scores E episodes x S samples in one batched ``world_model.rollout`` (chunked to
``config.max_batch`` sequences): the start latents are computed once by the caller and only
indexed here, never re-encoded. Sampling noise comes from one ``torch.Generator`` per episode,
drawn on the CPU, so an episode's plan does not depend on which other episodes share the batch
nor on the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from quantwm.plan.config import PlannerConfig
from quantwm.plan.objective import latent_objective


@dataclass
class CEMOutput:
    """The result of one CEM optimisation for E episodes."""

    actions: Tensor  # (E, horizon, A) the final mean: the plan to execute (normalised actions)
    loss_best: Tensor  # (E, cem_steps) objective of the best sample at each step (CPU)
    loss_mean: Tensor  # (E, cem_steps) objective of sample 0 = the mean entering each step (CPU)
    best_actions: Tensor  # (E, horizon, A) the lowest-objective sample seen in any step
    best_loss: Tensor  # (E,) its objective (CPU)


def rollout_objective(world_model: torch.nn.Module, z_start: Tensor, z_goal: Tensor,
                      actions: Tensor, *, proprio_dim: int, proprio_weight: float,
                      max_batch: int) -> Tensor:
    """Objective of every action sequence: ``actions (E, S, K, A)`` from ``z_start (E, T, N, D)``
    towards ``z_goal (E, N, D)``; returns ``(E, S)``.

    The E x S sequences are flattened and rolled out in chunks of at most ``max_batch``.
    """
    n_ep, n_samples = actions.shape[:2]
    flat = actions.reshape(n_ep * n_samples, *actions.shape[2:])
    out = torch.empty(n_ep * n_samples, device=actions.device, dtype=z_start.dtype)
    for a in range(0, flat.shape[0], max_batch):
        b = min(a + max_batch, flat.shape[0])
        ep = torch.arange(a, b, device=actions.device) // n_samples
        z_pred = world_model.rollout(z_start[ep], flat[a:b])
        out[a:b] = latent_objective(z_pred[:, -1], z_goal[ep], proprio_dim, proprio_weight)
    return out.view(n_ep, n_samples)


def cem_plan(world_model: torch.nn.Module, z_start: Tensor, z_goal: Tensor,
             generators: list[torch.Generator], config: PlannerConfig, action_dim: int,
             proprio_dim: int) -> CEMOutput:
    """Run ``config.cem_steps`` CEM steps for E episodes at once.

    ``z_start (E, T, N, D)`` is the encoded observation history, ``z_goal (E, N, D)`` the goal
    latent, ``generators`` one seeded generator per episode. The plan starts from mean
    ``config.init_mean`` and std ``config.init_std``; at every step sample 0 is the mean itself
    and the top ``config.topk`` samples set the next mean and std.
    """
    n_ep = z_start.shape[0]
    if len(generators) != n_ep or z_goal.shape[0] != n_ep:
        raise ValueError(
            f"need one generator and goal per episode: {n_ep} starts, {len(generators)} "
            f"generators, {z_goal.shape[0]} goals"
        )
    device = z_start.device
    shape = (config.samples, config.horizon, action_dim)
    mean = torch.full((n_ep, config.horizon, action_dim), config.init_mean, device=device)
    std = torch.full_like(mean, config.init_std)
    loss_best = torch.empty(n_ep, config.cem_steps)
    loss_mean = torch.empty(n_ep, config.cem_steps)
    best_actions = mean.clone()
    best_loss = torch.full((n_ep,), float("inf"), device=device)
    for step in range(config.cem_steps):
        noise = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)
        actions = mean.unsqueeze(1) + std.unsqueeze(1) * noise  # (E, S, H, A)
        actions[:, 0] = mean
        loss = rollout_objective(world_model, z_start, z_goal, actions,
                                 proprio_dim=proprio_dim, proprio_weight=config.proprio_weight,
                                 max_batch=config.max_batch)
        top_loss, top_idx = loss.topk(config.topk, dim=1, largest=False, sorted=True)
        elites = actions.gather(1, top_idx[:, :, None, None].expand(-1, -1, *shape[1:]))
        better = top_loss[:, 0] < best_loss
        best_loss = torch.where(better, top_loss[:, 0], best_loss)
        best_actions[better] = elites[better, 0]
        mean = elites.mean(dim=1)
        std = elites.std(dim=1)
        loss_best[:, step] = top_loss[:, 0].cpu()
        loss_mean[:, step] = loss[:, 0].cpu()
    return CEMOutput(actions=mean, loss_best=loss_best, loss_mean=loss_mean,
                     best_actions=best_actions, best_loss=best_loss.cpu())
