"""Batched MPC: plan with CEM for every still-active episode at once, act in the real envs.

Each round: the current observations of the active episodes (encoded once, at the end of the
previous round) and their goal latents (encoded once per evaluation) go into one batched CEM;
the final CEM mean is denormalised with the model's statistics and all ``horizon`` macro-actions
(``frameskip`` env steps each) are executed in the real environments; success is checked in the
real environment against the goal state, and an episode that succeeded leaves the batch: it
stops acting, so it stays where it succeeded.

The population stays fixed over rounds: for an episode that has stopped, every later round
records the state it stopped in, its true distance to the goal and its latent objective
(``states``, ``goal_distance``, ``latent_mse`` are never NaN), and ``planned`` says which
rounds were actually planned. Means over rounds are then means over the same episodes, not
over the ones still failing.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from quantwm.plan.cem import cem_plan
from quantwm.plan.config import PlannerConfig
from quantwm.plan.objective import latent_objective, proprio_emb_dim
from quantwm.utils import spearman


@dataclass
class PlanResult:
    """What batched MPC recorded for n episodes over R + 1 rounds (R = ``config.mpc_rounds``).

    Arrays are indexed (episode, round[, ...]). The planner's own records (``loss_best``,
    ``loss_mean``, ``actions``) are NaN for rounds an episode did not plan (it had already
    succeeded); what the episode *is* (``states``, ``goal_distance``, ``latent_mse``) is carried
    forward from the round it stopped in, and ``success_by_round`` stays True once reached.
    """

    env_name: str
    ids: list[str]
    config: PlannerConfig
    success_by_round: np.ndarray  # (n, R+1) bool: succeeded within rounds 0..r
    loss_best: np.ndarray  # (n, R+1, cem_steps) objective of the best CEM sample per step
    loss_mean: np.ndarray  # (n, R+1, cem_steps) objective of the CEM mean entering each step
    latent_mse: np.ndarray  # (n, R+1) objective(observation latent, goal latent) after round r
    # (for every round: after the episode stopped, the value it stopped with)
    latent_mse_start: np.ndarray  # (n,) the same before round 0
    goal_distance: np.ndarray  # (n, R+1) ||state[:4] - goal[:4]|| after round r (true state)
    actions: np.ndarray  # (n, R+1, horizon, action_dim) executed raw actions (before env clip)
    states: np.ndarray  # (n, R+1, state_dim) env state after round r
    final_states: np.ndarray  # (n, state_dim) env state when the episode stopped
    rounds_run: np.ndarray  # (n,) number of rounds the episode planned
    seconds: float = 0.0  # wall time of the whole evaluation
    round_seconds: list[float] = field(default_factory=list)  # wall time of each round
    plan_seconds: list[float] = field(default_factory=list)  # of which CEM (world model)

    @property
    def n_episodes(self) -> int:
        return len(self.ids)

    @property
    def planned(self) -> np.ndarray:
        """(n, R+1) bool: whether the episode planned (was still active) in round r."""
        return np.arange(self.success_by_round.shape[1])[None, :] < self.rounds_run[:, None]

    def success_at(self, iters: int) -> float:
        """Success rate within rounds 0..iters ("iters" as in the paper's tables)."""
        last = self.success_by_round.shape[1] - 1
        if not 0 <= iters <= last:
            raise ValueError(f"iters must be in 0..{last} (the rounds planned), got {iters}")
        return float(self.success_by_round[:, iters].mean())

    def first_success_round(self) -> list[int | None]:
        """Per episode, the first round after which it had succeeded (None: never)."""
        return [int(np.argmax(row)) if row.any() else None for row in self.success_by_round]

    def success_table(self, iters: list[int] | None = None) -> dict[int, float]:
        """{iters: success rate}; by default 0, 5, 10, 20, ... up to the last round."""
        last = self.success_by_round.shape[1] - 1
        if iters is None:
            iters = [k for k in (0, 5, 10, 20, 30, 40, 50) if k <= last]
            if last not in iters:
                iters.append(last)
        return {k: self.success_at(k) for k in iters}

    def to_frame(self) -> pd.DataFrame:
        """Tidy rows, one per (episode, round, CEM step) actually planned."""
        rows: list[dict[str, Any]] = []
        for i, ep in enumerate(self.ids):
            for r in range(int(self.rounds_run[i])):
                for s in range(self.loss_best.shape[2]):
                    rows.append({
                        "env": self.env_name, "episode": ep, "round": r, "cem_step": s,
                        "loss_best": float(self.loss_best[i, r, s]),
                        "loss_mean": float(self.loss_mean[i, r, s]),
                        "latent_mse": float(self.latent_mse[i, r]),
                        "goal_distance": float(self.goal_distance[i, r]),
                        "success": bool(self.success_by_round[i, r]),
                    })
        return pd.DataFrame(rows)

    def rounds_frame(self) -> pd.DataFrame:
        """Tidy rows, one per (episode, round) for every round 0..R (success carried forward)."""
        n, n_rounds = self.success_by_round.shape
        return pd.DataFrame({
            "env": self.env_name,
            "episode": np.repeat(self.ids, n_rounds),
            "round": np.tile(np.arange(n_rounds), n),
            "success": self.success_by_round.reshape(-1),
            "planned": self.planned.reshape(-1),
            "final_loss_best": self.loss_best[:, :, -1].reshape(-1),
            "latent_mse": self.latent_mse.reshape(-1),
            "goal_distance": self.goal_distance.reshape(-1),
        })

    def alignment(self) -> dict[str, float | None]:
        """Spearman correlations over every planned (episode, round), for diagnosis.

        ``objective_vs_distance``: the objective of the reached observation (latent MSE to the
        goal) against the true distance to the goal; high means the latent objective measures
        progress. ``predicted_vs_reached``: the planner's final best objective (what the model
        predicted the plan would reach) against the latent MSE actually reached; low means the
        model's rollouts do not match the env.
        """
        planned = self.planned
        lat = self.latent_mse[planned]
        out: dict[str, float | None] = {
            "objective_vs_distance": _or_none(spearman(lat, self.goal_distance[planned])),
            "predicted_vs_reached": _or_none(spearman(self.loss_best[:, :, -1][planned], lat)),
        }
        out["mean_predicted_final_objective"] = float(np.mean(self.loss_best[:, :, -1][planned]))
        out["mean_reached_objective"] = float(np.mean(lat))
        return out

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly summary: config, success by iters, timing, alignment, and per
        episode (``episode_ids``) the round it first succeeded in, so that two runs on the same
        episodes can be compared pairwise (``quantwm.study.mcnemar_exact``)."""
        return {
            "alignment": self.alignment(),
            "env": self.env_name,
            "episodes": self.n_episodes,
            "config": self.config.to_dict(),
            "success": {str(k): v for k, v in self.success_table().items()},
            "success_by_round": self.success_by_round.mean(axis=0).tolist(),
            "mean_final_loss_by_round": _nanmean_columns(self.loss_best[:, :, -1]),
            "seconds": self.seconds,
            "round_seconds": self.round_seconds,
            "plan_seconds": self.plan_seconds,
            "episode_ids": [str(i) for i in self.ids],
            "first_success_round": self.first_success_round(),
        }


def _or_none(value: float) -> float | None:
    """NaN -> None (JSON has no NaN)."""
    return None if np.isnan(value) else value


def _nanmean_columns(a: np.ndarray) -> list[float | None]:
    """Column means ignoring NaN; None for a column without any value."""
    return [float(np.nanmean(c)) if np.isfinite(c).any() else None for c in a.T]


def episode_seed(seed: int, episode_id: str) -> int:
    """A stable 63-bit seed from the planner seed and an episode id (no Python hash salt)."""
    digest = hashlib.sha256(f"quantwm.plan/{seed}/{episode_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _default_make_env(env_name: str, img_size: int) -> Any:
    from quantwm.envs import make

    return make(env_name, img_size=img_size)


def _obs_tensors(obs: list[dict[str, np.ndarray]], device: torch.device | str
                 ) -> tuple[Tensor, Tensor]:
    """Stack env observations: ``visual (B, 1, 3, H, W)`` in [0, 1], ``proprio (B, 1, P)``."""
    visual = torch.from_numpy(np.stack([o["visual"] for o in obs])).to(device)
    visual = visual.permute(0, 3, 1, 2).float().div_(255.0).unsqueeze(1)
    proprio = torch.from_numpy(np.stack([o["proprio"] for o in obs]).astype(np.float32))
    return visual, proprio.to(device).unsqueeze(1)


def _model_attr(world_model: torch.nn.Module, name: str, default: Any) -> Any:
    return getattr(getattr(world_model, "config", None), name, default)


def plan_episodes(world_model: torch.nn.Module, episodes: Any, config: PlannerConfig,
                  device: torch.device | str = "cpu", progress: bool = True,
                  make_env: Callable[..., Any] | None = None) -> PlanResult:
    """Evaluate ``world_model`` by batched CEM + MPC on an ``EpisodeSet``.

    ``make_env(env_name, img_size=...)`` builds one environment (default
    ``quantwm.envs.make``); each episode gets its own, reset to its start state and params.
    The model is used as is (put it on ``device`` first); it is not modified.
    """
    from tqdm.auto import tqdm

    make_env = make_env or _default_make_env
    device = torch.device(device)
    n = len(episodes.ids)
    if n == 0:
        raise ValueError("the episode set is empty")
    img_size = int(_model_attr(world_model, "img_size", 64))
    frameskip = int(_model_attr(world_model, "frameskip", 5))
    action_dim = int(_model_attr(world_model, "action_dim", 2 * frameskip))
    pdim = proprio_emb_dim(world_model)
    weight = config.proprio_weight
    n_rounds = config.n_rounds
    t_start = time.perf_counter()

    envs = [make_env(episodes.env_name, img_size=img_size) for _ in range(n)]
    obs: list[dict[str, np.ndarray]] = []
    goal_obs: list[dict[str, np.ndarray]] = []
    goals = np.asarray(episodes.goal_states, dtype=np.float64)
    for i, env in enumerate(envs):
        kwargs = episodes.env_kwargs(i)
        o, _ = env.reset(options={"state": np.asarray(episodes.start_states[i]), **kwargs})
        obs.append(o)
        u = env.unwrapped
        goal_obs.append({"visual": u.render_state(goals[i], **kwargs),
                         "proprio": u.proprio_of(goals[i])})
    generators = [torch.Generator().manual_seed(episode_seed(config.seed, str(ep)))
                  for ep in episodes.ids]

    state_dim = len(envs[0].unwrapped.get_state())
    success = np.zeros((n, n_rounds), dtype=bool)
    loss_best = np.full((n, n_rounds, config.cem_steps), np.nan)
    loss_mean = np.full_like(loss_best, np.nan)
    latent_mse = np.full((n, n_rounds), np.nan)
    goal_distance = np.full((n, n_rounds), np.nan)
    actions_rec = np.full((n, n_rounds, config.horizon, action_dim), np.nan)
    states = np.full((n, n_rounds, state_dim), np.nan)
    final_states = np.stack([env.unwrapped.get_state() for env in envs]).astype(np.float64)
    rounds_run = np.zeros(n, dtype=np.int64)
    round_seconds: list[float] = []
    plan_seconds: list[float] = []

    was_training = world_model.training
    world_model.eval()
    try:
        with torch.inference_mode():
            z_goal = world_model.encode(*_obs_tensors(goal_obs, device))[:, -1]  # (n, N, D)
            z_cur = world_model.encode(*_obs_tensors(obs, device))  # (n, 1, N, D)
            latent_mse_start = latent_objective(z_cur[:, -1], z_goal, pdim, weight).cpu().numpy()
            active = np.arange(n)
            bar = tqdm(range(n_rounds), desc=f"MPC {episodes.env_name}", disable=not progress,
                       leave=False)
            for r in bar:
                t_round = time.perf_counter()
                idx = torch.as_tensor(active, device=device)
                out = cem_plan(world_model, z_cur[idx], z_goal[idx],
                               [generators[i] for i in active], config, action_dim, pdim)
                plan = out.actions if config.execute == "mean" else out.best_actions
                raw = world_model.denormalize_action(plan).float().cpu().numpy()
                plan_seconds.append(time.perf_counter() - t_round)
                loss_best[active, r] = out.loss_best.numpy()
                loss_mean[active, r] = out.loss_mean.numpy()
                actions_rec[active, r] = raw
                steps = raw.reshape(len(active), config.horizon * frameskip, -1)
                for j, i in enumerate(active):
                    env = envs[i]
                    for a in steps[j]:
                        o, *_ = env.step(a)
                    obs[i] = o
                    state = np.asarray(env.unwrapped.get_state(), dtype=np.float64)
                    states[i, r] = final_states[i] = state
                    success[i, r] = bool(env.unwrapped.is_success(state, goals[i]))
                    k = min(4, state_dim)
                    goal_distance[i, r] = float(np.linalg.norm(state[:k] - goals[i, :k]))
                rounds_run[active] += 1
                z_new = world_model.encode(*_obs_tensors([obs[i] for i in active], device))
                z_cur[idx] = z_new
                latent_mse[active, r] = latent_objective(
                    z_new[:, -1], z_goal[idx], pdim, weight).cpu().numpy()
                active = active[~success[active, r]]
                round_seconds.append(time.perf_counter() - t_round)
                bar.set_postfix(active=len(active), success=f"{1 - len(active) / n:.2f}")
                if len(active) == 0:
                    break
    finally:
        world_model.train(was_training)
        for env in envs:
            env.close()
    success = np.logical_or.accumulate(success, axis=1)
    for i in range(n):  # a stopped episode stays where it stopped
        last = int(rounds_run[i]) - 1
        if 0 <= last < n_rounds - 1:
            for a in (latent_mse, goal_distance, states):
                a[i, last + 1:] = a[i, last]
    return PlanResult(
        env_name=episodes.env_name, ids=[str(i) for i in episodes.ids], config=config,
        success_by_round=success, loss_best=loss_best, loss_mean=loss_mean,
        latent_mse=latent_mse, latent_mse_start=latent_mse_start, goal_distance=goal_distance,
        actions=actions_rec, states=states, final_states=final_states, rounds_run=rounds_run,
        seconds=time.perf_counter() - t_start, round_seconds=round_seconds,
        plan_seconds=plan_seconds,
    )
