"""The planner: profiles, objective, batched CEM + MPC on a world model whose dynamics are known."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from quantwm.plan import (
    PROFILES,
    PlannerConfig,
    calibration_rows,
    latent_objective,
    load_calibration,
    plan_episodes,
    planner_config,
    record_calibration,
    save_calibration,
)
from quantwm.study.tables import success_matrix

# ------------------------------------------------------------------------------ a known world
GAIN = 1.0  # position change per unit action per env step
ACTION_SCALE = 0.3  # raw action = 0.3 x normalised action
FRAMESKIP = 5
N_PATCHES = 4


class PointEnv:
    """A 2-D point: state = proprio = (x, y); each step moves by GAIN x clip(action, -1, 1)."""

    def __init__(self, img_size: int = 8) -> None:
        self.img_size = img_size
        self.state = np.zeros(2)
        self.unwrapped = self

    def reset(self, seed: int | None = None, options: dict | None = None):
        self.state = np.asarray(options["state"], dtype=np.float64).copy()
        return self._obs(), {}

    def step(self, action):
        self.state = self.state + GAIN * np.clip(np.asarray(action, dtype=np.float64), -1, 1)
        return self._obs(), 0.0, False, False, {}

    def _obs(self) -> dict[str, np.ndarray]:
        return {"visual": self.render_state(self.state), "proprio": self.proprio_of(self.state)}

    def get_state(self) -> np.ndarray:
        return self.state.copy()

    def episode_params(self) -> dict[str, float]:
        return {}

    def render_state(self, state, **params) -> np.ndarray:
        img = np.full((self.img_size, self.img_size, 3), 255, dtype=np.uint8)
        img[0, 0, 0] = int(np.clip(state[0], 0, 255))
        return img

    def proprio_of(self, state) -> np.ndarray:
        return np.asarray(state[:2], dtype=np.float32)

    def is_success(self, state, goal_state) -> bool:
        return bool(np.linalg.norm(np.asarray(state)[:2] - np.asarray(goal_state)[:2]) < 0.5)

    def close(self) -> None:
        pass


def make_point_env(env_name: str, img_size: int = 8) -> PointEnv:
    return PointEnv(img_size)


class ToyEncoder(nn.Module):
    """Stands in for the ViT: its output is zero, the latent carries the proprio position."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.new_zeros(images.shape[0], N_PATCHES, 2)


class ToyPredictor(nn.Module):
    """tokens (B, N, 2 + 10 + 2): (position, proprio embedding, position change) -> next latent."""

    def __init__(self, proprio_proj: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("proj", proprio_proj)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pos = tokens[..., :2] + tokens[..., -2:]
        return torch.cat([pos, pos @ self.proj], dim=-1)


class ToyWorldModel(nn.Module):
    """The WorldModel methods the planner uses, with exactly the PointEnv's dynamics (or, with
    ``gain=2, action_high=2``, the real Wall env's dynamics away from walls)."""

    def __init__(self, gain: float = GAIN, action_high: float = 1.0) -> None:
        super().__init__()
        self.gain, self.action_high = gain, action_high
        self.config = SimpleNamespace(img_size=8, frameskip=FRAMESKIP, action_dim=2 * FRAMESKIP,
                                      proprio_emb_dim=10, num_hist=1)
        proj = torch.randn(2, 10, generator=torch.Generator().manual_seed(0)) / 4
        self.encoder = ToyEncoder()
        self.predictor = ToyPredictor(proj)

    def normalize_action(self, a: torch.Tensor) -> torch.Tensor:
        return a / ACTION_SCALE

    def denormalize_action(self, a: torch.Tensor) -> torch.Tensor:
        return a * ACTION_SCALE

    def encode(self, visual: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        B, T = visual.shape[:2]
        zeros = self.encoder(visual.flatten(0, 1)).unflatten(0, (B, T))
        pos = proprio[:, :, None, :2].expand(-1, -1, N_PATCHES, -1)
        return torch.cat([zeros + pos, pos @ self.predictor.proj], dim=-1)

    def rollout(self, z_hist: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        z = z_hist[:, -1]
        frames = []
        for k in range(actions.shape[1]):
            raw = self.denormalize_action(actions[:, k]).view(-1, FRAMESKIP, 2)
            raw = raw.clamp(-self.action_high, self.action_high)
            delta = (self.gain * raw.sum(1))[:, None, :].expand(-1, N_PATCHES, -1)
            z = self.predictor(torch.cat([z, delta], dim=-1))
            frames.append(z)
        return torch.stack(frames, 1)


@dataclass
class Episodes:
    """Duck-typed ``quantwm.data.EpisodeSet``."""

    env_name: str
    start_states: np.ndarray
    goal_states: np.ndarray
    ids: list[str]
    params: dict[str, np.ndarray] = field(default_factory=dict)

    def env_kwargs(self, i: int) -> dict[str, float]:
        return {k: float(v[i]) for k, v in self.params.items()}


def point_episodes(n: int, seed: int = 0, distance: float = 8.0) -> Episodes:
    rng = np.random.default_rng(seed)
    starts = rng.uniform(-5, 5, size=(n, 2))
    angle = rng.uniform(0, 2 * np.pi, size=n)
    goals = starts + distance * np.stack([np.cos(angle), np.sin(angle)], 1)
    return Episodes("wall", starts, goals, [f"pt{seed}-{i}" for i in range(n)])


FAST = PlannerConfig(samples=64, topk=8, cem_steps=4, mpc_rounds=4, seed=3)


def run(episodes: Episodes, config: PlannerConfig = FAST, device: str | torch.device = "cpu"):
    return plan_episodes(ToyWorldModel().to(device), episodes, config, device=device,
                         progress=False, make_env=make_point_env)


# ------------------------------------------------------------------------------ configuration
def test_reference_profile_is_protocol_section_2() -> None:
    wall, pusht = planner_config("wall", "reference"), planner_config("pusht", "reference")
    for c in (wall, pusht):
        assert (c.horizon, c.samples, c.topk, c.init_mean, c.init_std, c.proprio_weight) == (
            5, 300, 30, 0.0, 1.0, 1.0)
    assert (wall.cem_steps, wall.mpc_rounds) == (10, 50)
    assert (pusht.cem_steps, pusht.mpc_rounds) == (30, 30)
    assert set(PROFILES) == {"cpu", "cpu_long", "reference", "smoke"}
    for env in ("wall", "pusht"):  # cpu_long: the cpu CEM budget over the reference's rounds
        long, cpu = planner_config(env, "cpu_long"), planner_config(env, "cpu")
        assert long.replace(mpc_rounds=cpu.mpc_rounds, profile="cpu") == cpu
        assert long.mpc_rounds == planner_config(env, "reference").mpc_rounds
    assert planner_config("wall").profile == "cpu"
    assert planner_config("wall", "cpu", samples=300).samples == 300


@pytest.mark.parametrize("kwargs, match", [
    ({"samples": 0}, "samples"), ({"topk": 40, "samples": 30}, "topk"),
    ({"topk": 1}, "topk"), ({"init_std": 0.0}, "init_std"), ({"mpc_rounds": -1}, "mpc_rounds"),
    ({"horizon": 2.5}, "horizon"), ({"proprio_weight": -1.0}, "proprio_weight"),
    ({"execute": "median"}, "execute"),
])
def test_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PlannerConfig(**kwargs)


def test_profile_errors() -> None:
    with pytest.raises(ValueError, match="fast"):
        planner_config("wall", "fast")
    with pytest.raises(ValueError, match="mars"):
        planner_config("mars", "cpu")
    with pytest.raises(ValueError, match="sample"):
        planner_config("wall", "cpu", sample=3)


def test_objective_visual_plus_weighted_proprio() -> None:
    z = torch.zeros(3, 4, 12)
    goal = torch.zeros(4, 12)
    goal[:, :2] = 1.0  # visual dims: MSE 2/2 = 1
    goal[:, 2:] = 2.0  # proprio dims: MSE 4
    assert torch.allclose(latent_objective(z, goal, 10, 1.0), torch.full((3,), 1.0 + 4.0))
    assert torch.allclose(latent_objective(z, goal, 10, 0.5), torch.full((3,), 1.0 + 2.0))


# ------------------------------------------------------------------------------ planning
def test_planner_reaches_goal_on_known_dynamics(device) -> None:
    res = run(point_episodes(6), device=device)
    assert res.success_at(FAST.mpc_rounds) == 1.0
    assert res.success_by_round.shape == (6, FAST.mpc_rounds + 1)
    # The CEM improves its plan within a round and the latent distance falls across rounds.
    assert np.all(res.loss_best[:, 0, -1] < res.loss_best[:, 0, 0])
    assert np.all(res.latent_mse[:, 0] < res.latent_mse_start)
    frame = res.to_frame()
    assert {"episode", "round", "cem_step", "loss_best", "success"} <= set(frame.columns)
    assert len(frame) == int(res.rounds_run.sum()) * FAST.cem_steps


def test_execute_best_sample_reaches_goal() -> None:
    res = run(point_episodes(4, seed=6), FAST.replace(execute="best"))
    assert res.success_at(FAST.mpc_rounds) == 1.0


def test_batched_equals_one_by_one(device) -> None:
    eps = point_episodes(4, seed=1)
    batched = run(eps, device=device)
    for i in range(4):
        one = run(Episodes("wall", eps.start_states[i:i + 1], eps.goal_states[i:i + 1],
                           eps.ids[i:i + 1]), device=device)
        np.testing.assert_allclose(one.loss_best[0], batched.loss_best[i], rtol=1e-5)
        np.testing.assert_allclose(one.actions[0], batched.actions[i], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(one.success_by_round[0], batched.success_by_round[i])


def test_deterministic_and_seed_matters(device) -> None:
    eps = point_episodes(3, seed=2)
    a, b = run(eps, device=device), run(eps, device=device)
    np.testing.assert_array_equal(a.loss_best, b.loss_best)
    np.testing.assert_array_equal(a.actions, b.actions)
    c = run(eps, FAST.replace(seed=4))
    assert not np.allclose(np.nan_to_num(a.actions), np.nan_to_num(c.actions))


def test_success_bookkeeping() -> None:
    eps = point_episodes(5, seed=3)
    eps.goal_states[0] = eps.start_states[0] + 0.05  # solved by nearly doing nothing
    eps.goal_states[1] = eps.start_states[1] + 500.0  # unreachable
    res = run(eps, FAST.replace(init_std=0.01))
    assert res.success_by_round[0, 0]
    assert res.rounds_run[0] == 1  # left the batch after round 0 ...
    assert res.success_by_round[0].all()  # ... and stays successful
    assert np.isnan(res.loss_best[0, 1:]).all()
    # the population stays fixed: a stopped episode keeps the state, distance and objective it
    # stopped with in every later round, and `planned` says which rounds it planned
    assert not res.planned[0, 1:].any() and res.planned[1].all()
    for a in (res.latent_mse, res.goal_distance, res.states):
        assert np.isfinite(a).all()
        np.testing.assert_array_equal(a[0, 1:], np.repeat(a[0, :1], FAST.n_rounds - 1, axis=0))
    np.testing.assert_array_equal(res.states[0, -1], res.final_states[0])
    assert not res.success_by_round[1].any() and res.rounds_run[1] == FAST.n_rounds
    assert np.all(np.diff(res.success_by_round.astype(int), axis=1) >= 0)
    assert res.success_at(0) == res.success_by_round[:, 0].mean()
    with pytest.raises(ValueError, match="iters"):
        res.success_at(FAST.mpc_rounds + 1)


def test_planner_reaches_goal_in_real_wall_env(device) -> None:
    """The true-state toy (latent = position) steers the real Wall env within one room."""
    pytest.importorskip("quantwm.envs.wall")
    starts = np.array([[10.0, 12.0], [40.0, 50.0], [15.0, 45.0]])
    goals = np.array([[30.0, 40.0], [52.0, 20.0], [25.0, 15.0]])
    params = {"wall_x": np.array([44.0, 30.0, 44.0]), "door_y": np.array([32.0, 20.0, 40.0])}
    eps = Episodes("wall", starts, goals, ["w0", "w1", "w2"], params)
    res = plan_episodes(ToyWorldModel(gain=2.0, action_high=2.0).to(device), eps, FAST,
                        device=device, progress=False)
    assert res.success_at(FAST.mpc_rounds) == 1.0
    assert np.all(res.goal_distance[np.arange(3), res.rounds_run - 1] < 4.5)


def test_record_calibration_roundtrip(tmp_path) -> None:
    cfg = FAST.replace(mpc_rounds=0)
    calib = record_calibration(ToyWorldModel(), point_episodes(3), cfg, rounds=2,
                               max_samples=100, make_env=make_point_env)
    rows = calibration_rows(calib)
    # goals + starts + the observation after each round the episode planned
    assert 3 * 3 <= rows["encoder"] <= 3 * 4
    assert 0 < rows["predictor"] <= 100
    assert all(t.shape[1:] == (N_PATCHES, 14) for t in calib["predictor"])
    assert not any(t.is_inference() for t in calib["predictor"])
    save_calibration(calib, tmp_path / "calib.pt")
    back = load_calibration(tmp_path / "calib.pt")
    assert all(torch.equal(a, b) for a, b in zip(back["predictor"], calib["predictor"],
                                                 strict=True))


def test_cli_arguments() -> None:
    from quantwm.plan import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--env", "pusht", "--profile", "smoke", "--seed", "7"])
    assert (args.env, args.profile, args.seed, args.episodes) == ("pusht", "smoke", 7, 50)
    assert cli.parse_overrides(["samples=100", "proprio_weight=0.5"]) == {
        "samples": 100, "proprio_weight": 0.5}
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        cli.parse_overrides(["samples"])


def test_eval_cli_set_seed_reseeds_only_the_planner(tmp_path) -> None:
    """`quantwm eval --seed 1 --set seed=5`: the episodes of seed 1, planned with seed 5."""
    from quantwm.cli import main
    from quantwm.data import evaluation_episodes
    from quantwm.model import CHECKPOINT_DIR

    if not (CHECKPOINT_DIR / "wall.pt").exists():
        pytest.skip("no shipped wall checkpoint (quantwm train --env wall)")
    out = tmp_path / "eval.json"
    assert main(["eval", "--env", "wall", "--episodes", "2", "--profile", "smoke", "--seed",
                 "1", "--set", "seed=5", "--no-progress", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert (summary["seed"], summary["config"]["seed"]) == (1, 5)
    assert summary["episode_ids"] == [str(i) for i in evaluation_episodes("wall", n=2, seed=1).ids]


def test_wall_oracle_reaches_goal_in_the_same_room() -> None:
    from quantwm.plan.oracle import plan_with_oracle

    eps = Episodes("wall", np.array([[10.0, 12.0]]), np.array([[30.0, 40.0]]), ["o0"],
                   {"wall_x": np.array([44.0]), "door_y": np.array([32.0])})
    (res,) = plan_with_oracle(eps, FAST.replace(mpc_rounds=2))
    assert res.success_at(2) == 1.0


def test_alignment_on_known_dynamics() -> None:
    res = run(point_episodes(4, seed=5), FAST.replace(mpc_rounds=2))
    align = res.alignment()
    assert align["objective_vs_distance"] is not None and align["objective_vs_distance"] > 0.8
    summary = res.summary()
    assert set(summary) >= {"alignment", "success", "config", "seconds", "first_success_round"}
    assert summary["episode_ids"] == [str(i) for i in res.ids]
    rounds = range(res.success_by_round.shape[1])  # success is carried forward:
    np.testing.assert_allclose(success_matrix(summary["first_success_round"], rounds).mean(0),
                               summary["success_by_round"])
    json.dumps(summary)  # JSON-friendly as it is


def test_wall_render_oracle_uses_the_models_objective() -> None:
    from quantwm.plan.oracle import plan_with_oracle

    eps = Episodes("wall", np.array([[10.0, 12.0]]), np.array([[20.0, 20.0]]), ["r0"],
                   {"wall_x": np.array([44.0]), "door_y": np.array([32.0])})
    (res,) = plan_with_oracle(eps, FAST.replace(mpc_rounds=2),
                              world_model=ToyWorldModel(gain=2.0, action_high=2.0))
    assert res.success_at(2) == 1.0


def test_door_path_objective_has_no_minimum_at_the_wall() -> None:
    from quantwm.plan.objective import latent_objective
    from quantwm.plan.oracle import WallOracle

    # goal just right of the wall, far below the door; candidates: just left of the wall
    # across from it (the straight-line minimum) or in the door
    goal, across, door = [38.0, 52.0], [22.0, 52.0], [30.0, 14.0]
    pos = torch.tensor([across, door])

    def objective(weight: float) -> torch.Tensor:
        o = WallOracle(wall_x=30.0, door_y=14.0, door_path_weight=weight)
        return latent_objective(o._latent(pos), o._latent(torch.tensor([goal])), 10)

    straight, path = objective(0.0), objective(2.0)
    assert straight[0] < straight[1]  # the wall across from the goal looks better than the door
    assert path[1] < path[0]  # with the door-path coordinate, the door does


def test_wall_oracle_with_door_path_crosses_the_wall() -> None:
    from quantwm.plan.oracle import plan_with_oracle

    eps = Episodes("wall", np.array([[22.0, 48.0]]), np.array([[40.0, 48.0]]), ["d0"],
                   {"wall_x": np.array([30.0]), "door_y": np.array([30.0])})
    (stuck,) = plan_with_oracle(eps, FAST)
    (res,) = plan_with_oracle(eps, FAST, door_path_weight=2.0)
    assert stuck.success_at(4) == 0.0 and res.success_at(4) == 1.0
