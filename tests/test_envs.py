"""Properties of the Wall and PushT environments (fast: a few seconds on 2 cores)."""

from __future__ import annotations

import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import quantwm  # noqa: F401  (registers the envs)
from quantwm import envs
from quantwm.envs import pusht, wall
from quantwm.envs.pusht import PushTEnv, pusht_success, render_pusht, tee_corners
from quantwm.envs.wall import WallEnv, wall_is_free, wall_step, wall_success

WALL_OPTS = {"wall_x": 32.0, "door_y": 20.0}
PUSHT_START = np.array([256.0, 420.0, 256.0, 200.0, 0.0, 0.0, 0.0])


def rollout(env: gym.Env, options: dict, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    obs, _ = env.reset(seed=0, options=options)
    states, frames = [env.unwrapped.get_state()], [obs["visual"]]
    for a in actions:
        obs, *_ = env.step(a)
        states.append(env.unwrapped.get_state())
        frames.append(obs["visual"])
    return np.array(states), np.array(frames)


# ---- registration, spaces, checker -------------------------------------------------------------
@pytest.mark.parametrize("name", ["wall", "pusht"])
def test_registered_and_passes_check_env(name: str) -> None:
    assert envs.ENV_IDS[name] in gym.registry
    for render_mode in (None, "rgb_array"):
        env = envs.make(name, render_mode=render_mode)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # advice about Box bounds, not errors
            check_env(env.unwrapped)
        assert isinstance(env.unwrapped, envs.ENV_CLASSES[name])


@pytest.mark.parametrize("env_id", ["quantwm/Wall-v0", "quantwm/PushT-v0"])
def test_gymnasium_makes_the_envs_in_a_fresh_process(env_id: str) -> None:
    """Gymnasium 1.x loads no plugins: the id names the module to import, and that is enough."""
    code = (f"import gymnasium; env = gymnasium.make('quantwm:{env_id}', max_episode_steps=2); "
            "env.reset(seed=0); assert env.step(env.action_space.sample())[3] is False; "
            "assert env.step(env.action_space.sample())[3] is True; "
            f"import quantwm; gymnasium.make('{env_id}')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("name", ["wall", "pusht"])
def test_check_env_with_a_goal_and_a_time_limit(name: str) -> None:
    env = envs.make(name, max_episode_steps=5)
    assert env.spec.max_episode_steps == 5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # advice about Box bounds, not errors
        check_env(env.unwrapped)
        check_env(env)


@pytest.mark.parametrize("name", ["wall", "pusht"])
def test_time_limit_truncates_only_when_asked(name: str) -> None:
    env = envs.make(name, max_episode_steps=3)
    env.reset(seed=0)
    truncated = [env.step(np.zeros(2))[3] for _ in range(3)]
    assert truncated == [False, False, True]
    plain = envs.make(name)  # no limit by default (the planner runs episodes as long as it likes)
    plain.reset(seed=0)
    assert not any(plain.step(np.zeros(2))[3] for _ in range(60))


def test_wall_goal_gives_is_success_reward_and_terminated() -> None:
    env = envs.make("wall")
    _, info = env.reset(options={"state": [10.0, 30.0], "goal": [20.0, 30.0], **WALL_OPTS})
    assert info["is_success"] is False
    np.testing.assert_array_equal(env.unwrapped.goal, [20.0, 30.0])
    results = []
    for _ in range(4):
        _, reward, terminated, truncated, info = env.step([1.0, 0.0])  # 2 px right per step
        results.append((reward, terminated, truncated, info["is_success"]))
    # x = 12, 14, 16 (4 px from the goal: a success, PROTOCOL's 4.5 px), 18
    assert results == [(0.0, False, False, False), (0.0, False, False, False),
                       (1.0, True, False, True), (1.0, True, False, True)]
    # without a goal: no is_success, reward 0, never terminated (what the planner relies on)
    _, info = env.reset(options={"state": [10.0, 30.0], **WALL_OPTS})
    assert "is_success" not in info and env.unwrapped.goal is None
    assert env.step([0.0, 0.0])[1:3] == (0.0, False)


def test_pusht_goal_gives_is_success_and_terminated() -> None:
    env = envs.make("pusht")
    _, info = env.reset(options={"state": PUSHT_START, "goal": PUSHT_START})
    assert info["is_success"] is True
    _, reward, terminated, _, info = env.step([0.0, 0.0])  # at rest: stays at the goal
    assert (reward, terminated, info["is_success"]) == (1.0, True, True)
    far = PUSHT_START.copy()
    far[2] += 60.0
    env.reset(options={"state": PUSHT_START, "goal": far})
    _, reward, terminated, _, info = env.step([0.0, 0.0])
    assert (reward, terminated, info["is_success"]) == (0.0, False, False)


@pytest.mark.parametrize("name", ["wall", "pusht"])
def test_evaluation_episodes_are_legal_starts_and_goals(name: str) -> None:
    from quantwm.data import evaluation_episodes

    episodes = evaluation_episodes(name, n=50, seed=0)
    env = envs.make(name)
    for i in range(len(episodes.ids)):
        opts = {"state": episodes.start_states[i], "goal": episodes.goal_states[i],
                **episodes.env_kwargs(i)}
        env.reset(options=opts)
        np.testing.assert_array_equal(env.unwrapped.get_state(), episodes.start_states[i])


@pytest.mark.parametrize(("name", "p"), [("wall", 2), ("pusht", 4)])
def test_observation_layout(name: str, p: int) -> None:
    env = envs.make(name, img_size=48)
    obs, info = env.reset(seed=3)
    assert obs["visual"].shape == (48, 48, 3) and obs["visual"].dtype == np.uint8
    assert obs["proprio"].shape == (p,) and obs["proprio"].dtype == np.float32
    state = env.unwrapped.get_state()
    assert state.dtype == np.float64 and state.shape == (envs.STATE_DIM[name],)
    np.testing.assert_array_equal(obs["proprio"], env.unwrapped.proprio_of(state))
    np.testing.assert_array_equal(
        obs["visual"], env.unwrapped.render_state(state, **env.unwrapped.episode_params())
    )
    np.testing.assert_array_equal(info["state"], state)


# ---- determinism and exact state round trips ---------------------------------------------------
@pytest.mark.parametrize("name", ["wall", "pusht"])
def test_seeded_reset_and_rollout_are_deterministic(name: str) -> None:
    rng = np.random.default_rng(0)
    high = envs.make(name).action_space.high
    actions = rng.uniform(-high, high, size=(30, 2))
    opts = {"state": PUSHT_START} if name == "pusht" else {"state": [10.0, 30.0], **WALL_OPTS}
    s1, f1 = rollout(envs.make(name), opts, actions)
    s2, f2 = rollout(envs.make(name), opts, actions)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(f1, f2)
    a, b = envs.make(name), envs.make(name)
    np.testing.assert_array_equal(a.reset(seed=7)[0]["visual"], b.reset(seed=7)[0]["visual"])
    np.testing.assert_array_equal(a.unwrapped.get_state(), b.unwrapped.get_state())


@pytest.mark.parametrize("name", ["wall", "pusht"])
def test_state_round_trip_is_exact(name: str) -> None:
    env, other = envs.make(name), envs.make(name)
    env.reset(seed=1)
    for _ in range(7):
        env.step(env.action_space.sample())
    state, params = env.unwrapped.get_state(), env.unwrapped.episode_params()
    other.reset(options={"state": state, **params})
    np.testing.assert_array_equal(other.unwrapped.get_state(), state)
    assert other.unwrapped.episode_params() == params
    # and resetting to a state reproduces the same future from it
    a = np.array([0.3, -0.2])
    np.testing.assert_array_equal(env.unwrapped.step_state(a), other.unwrapped.step_state(a))


def test_wall_params_are_attributes_and_options() -> None:
    env = envs.make("wall")
    env.reset(options={"state": [10.0, 10.0], "wall_x": 25, "door_y": 40})
    assert (env.unwrapped.wall_x, env.unwrapped.door_y) == (25.0, 40.0)
    assert env.unwrapped.episode_params() == {"wall_x": 25.0, "door_y": 40.0}
    fixed = envs.make("wall", wall_x=30, door_y=15)
    fixed.reset(seed=0)
    assert (fixed.unwrapped.wall_x, fixed.unwrapped.door_y) == (30.0, 15.0)
    assert envs.make("pusht").unwrapped.episode_params() == {}


# ---- Wall geometry -----------------------------------------------------------------------------
def test_wall_stops_half_a_pixel_short_of_walls() -> None:
    x0 = 32.0 - 3.0 - 1.5  # 1.5 px left of the wall face, away from the door (door_y=20)
    nxt = wall_step([[x0, 40.0]], [[2.0, 0.0]], 32.0, 20.0)[0]
    np.testing.assert_allclose(nxt, [32.0 - 3.0 - 0.5, 40.0])
    nxt = wall_step([[15.0, 5.5]], [[0.0, -2.0]], 32.0, 20.0)[0]  # top border at y = 4
    np.testing.assert_allclose(nxt, [15.0, 4.5])
    nxt = wall_step([[32.0, 19.0]], [[0.0, -2.0]], 32.0, 20.0)[0]  # in the door, up to its edge
    np.testing.assert_allclose(nxt, [32.0, 16.5])
    nxt = wall_step([[5.0, 5.0]], [[-2.0, -2.0]], 32.0, 20.0)[0]  # corner: stops along the path
    assert np.all(nxt > 4.0) and np.all(nxt <= 5.0)


def test_wall_door_is_passable() -> None:
    env = envs.make("wall")
    env.reset(options={"state": [20.0, 20.0], **WALL_OPTS})
    for _ in range(12):
        env.step([1.0, 0.0])
    assert env.unwrapped.get_state()[0] > 32.0 + 3.0  # went through the door to the right room
    # at the door's edge (|y - door_y| = 3.9, agent centre inside the opening) it passes too
    assert wall_step([[27.0, 23.9]], [[2.0, 0.0]], 32.0, 20.0)[0, 0] == 31.0


def test_wall_never_crossed_outside_the_door() -> None:
    rng = np.random.default_rng(0)
    n = 4000
    wall_x = rng.integers(20, 45, size=n).astype(float)
    door_y = rng.integers(10, 55, size=n).astype(float)
    pos = wall.sample_free_positions(rng, n, wall_x, door_y, margin=0.0)
    for _ in range(30):
        act = rng.uniform(-3.0, 3.0, size=(n, 2))  # includes actions beyond the clip
        new = wall_step(pos, act, wall_x, door_y)
        assert wall_is_free(new, wall_x, door_y).all()
        assert (np.linalg.norm(new - pos, axis=1) <= 2.0 * 2.0 * np.sqrt(2) + 1e-9).all()
        crossed = np.sign(new[:, 0] - wall_x) != np.sign(pos[:, 0] - wall_x)
        # a crossing segment meets the wall's centre line inside the door opening
        t = (wall_x - pos[:, 0]) / np.where(crossed, new[:, 0] - pos[:, 0], 1.0)
        y_at_wall = pos[:, 1] + t * (new[:, 1] - pos[:, 1])
        assert (np.abs(y_at_wall - door_y)[crossed] < 4.0).all()
        pos = new


def test_wall_actions_are_clipped() -> None:
    env = envs.make("wall")
    env.reset(options={"state": [10.0, 30.0], **WALL_OPTS})
    env.step([50.0, 0.0])
    assert env.unwrapped.get_state()[0] == pytest.approx(10.0 + 2.0 * 2.0)


def test_wall_render_shows_walls_and_dot() -> None:
    img = wall.render_wall(np.array([[15.0, 40.0]]), 32.0, 20.0, img_size=65)[0].astype(int)
    assert tuple(img[40, 15]) == (255, 0, 0)  # the dot's centre pixel is red
    assert tuple(img[40, 32]) == (0, 0, 0)  # wall outside the door
    assert tuple(img[20, 32]) == (255, 255, 255)  # the door is open
    assert tuple(img[4, 50]) == (0, 0, 0) and tuple(img[60, 50]) == (0, 0, 0)  # borders


# ---- PushT physics -----------------------------------------------------------------------------
def test_push_moves_the_tee_and_it_settles() -> None:
    env = envs.make("pusht")
    env.reset(options={"state": PUSHT_START})  # agent below the bar's middle, stem pointing down
    before = env.unwrapped.get_state()
    for _ in range(15):
        env.step([0.0, -0.4])  # push up
    pushed = env.unwrapped.get_state()
    assert before[3] - pushed[3] > 50.0  # the block moved up
    for _ in range(5):
        env.step([0.0, 0.4])  # back off
    for _ in range(5):
        env.step([0.0, 0.0])
    rest = env.unwrapped.get_state()
    for _ in range(10):
        env.step([0.0, 0.0])
    np.testing.assert_allclose(env.unwrapped.get_state()[2:5], rest[2:5], atol=1e-6)
    assert np.abs(env.unwrapped.get_state()[5:]).max() < 1e-3  # the agent has stopped too


def test_off_centre_push_turns_the_tee() -> None:
    env = envs.make("pusht")
    env.reset(options={"state": [296.0, 420.0, 256.0, 200.0, 0.0, 0.0, 0.0]})  # under the right arm
    for _ in range(15):
        env.step([0.0, -0.4])
    assert abs(env.unwrapped.get_state()[4]) > 0.2


def test_tee_never_leaves_the_table_and_agent_stays_inside() -> None:
    env = envs.make("pusht")
    rng = np.random.default_rng(0)
    # the stem points up, its tip 23 px below the top wall; the agent rams the T into the wall
    env.reset(options={"state": [256.0, 300.0, 256.0, 150.0, np.pi, 0.0, 0.0]})
    states = [env.unwrapped.step_state([0.0, -1.0]) for _ in range(30)]
    states += [env.unwrapped.step_state(rng.uniform(-1, 1, 2)) for _ in range(100)]
    states = np.array(states)
    corners = tee_corners(states[:, 2:5])
    assert corners.min() > 7.0 - 2.5 and corners.max() < 504.0 + 2.5
    assert states[:, :2].min() >= 22.0 - 3.0 and states[:, :2].max() <= 489.0 + 3.0


def test_pusht_render_shows_the_pose() -> None:
    base = PUSHT_START.copy()
    turned, shifted = base.copy(), base.copy()
    turned[4] += 0.2
    shifted[2] += 16.0  # two pixels at 64 px
    imgs = render_pusht(np.stack([base, turned, shifted]), 64).astype(int)
    assert np.abs(imgs[0] - imgs[1]).sum() > 5000
    assert np.abs(imgs[0] - imgs[2]).sum() > 5000
    big = render_pusht(base[None], 256)[0].astype(int)
    # block frame y in [0, 30] is the bar, [30, 120] the stem; the agent is blue at (256, 420)
    assert tuple(big[int(215 / 2), 128]) == tuple(pusht._BAR.astype(int))
    assert tuple(big[int(280 / 2), 128]) == tuple(pusht._STEM.astype(int))
    assert tuple(big[210, 128]) == tuple(pusht._AGENT.astype(int))
    assert tuple(big[int(100 / 2), 40]) == tuple(pusht._BG.astype(int))


# ---- success thresholds ------------------------------------------------------------------------
def test_wall_success_threshold() -> None:
    goal = np.array([30.0, 30.0])
    assert wall_success(np.array([34.4999, 30.0]), goal)
    assert not wall_success(np.array([34.5, 30.0]), goal)  # exactly 4.5 px: not a success
    assert WallEnv().is_success([30.0, 25.6], goal) and not WallEnv().is_success([30.0, 25.5], goal)


def test_pusht_success_thresholds_and_angle_wrap() -> None:
    goal = np.array([100.0, 100.0, 300.0, 300.0, 0.5, 0.0, 0.0])
    near = goal.copy()
    near[0] += 19.999
    assert pusht_success(near, goal)
    near[0] = goal[0] + 20.0
    assert not pusht_success(near, goal)  # exactly 20 px on agent + block xy
    split = goal.copy()
    split[[0, 2]] += 20.0 / np.sqrt(2) * 1.0001  # 20 px jointly, spread over agent and block
    assert not pusht_success(split, goal)
    turned = goal.copy()
    turned[4] += np.pi / 9 - 1e-6
    assert pusht_success(turned, goal)
    turned[4] = goal[4] + np.pi / 9 + 1e-6
    assert not pusht_success(turned, goal)
    wrapped = goal.copy()
    wrapped[4] = goal[4] + 2 * np.pi - 0.1  # same orientation a full turn later
    assert pusht_success(wrapped, goal)
    a, b = goal.copy(), goal.copy()
    a[4], b[4] = np.pi - 0.05, -np.pi + 0.05  # across the +-pi seam
    assert pusht_success(a, b)
    velocity = goal.copy()
    velocity[5:] = 500.0  # velocities do not count
    assert PushTEnv().is_success(velocity, goal)


def test_vectorised_helpers_match_single_calls() -> None:
    rng = np.random.default_rng(0)
    states = rng.uniform(0, 512, size=(50, 7))
    goals = states + rng.normal(0, 12, size=(50, 7))
    batch = envs.is_success("pusht", states, goals)
    assert batch.shape == (50,) and batch.any() and not batch.all()
    single = [PushTEnv().is_success(s, g) for s, g in zip(states, goals, strict=True)]
    np.testing.assert_array_equal(batch, single)
    assert envs.proprio_of("pusht", states.reshape(5, 10, 7)).shape == (5, 10, 4)
    imgs = envs.render_states("wall", states[:4, :2] / 10 + 5, wall_x=[20, 30, 40, 44], door_y=20)
    assert imgs.shape == (4, 64, 64, 3)


# ---- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["wall", "pusht"])
def test_bad_input_raises_clear_value_errors(name: str) -> None:
    env = envs.make(name)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="finite"):
        env.step([np.nan, 0.0])
    with pytest.raises(ValueError, match="shape"):
        env.reset(options={"state": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match="bogus"):
        env.reset(options={"bogus": 1})
    with pytest.raises(ValueError, match="img_size"):
        envs.make(name, img_size=0)
    with pytest.raises(ValueError, match="unknown environment"):
        envs.make("cartpole")


def test_bad_wall_states_and_layouts() -> None:
    env = envs.make("wall")
    with pytest.raises(ValueError, match="free space"):
        env.reset(options={"state": [32.0, 40.0], **WALL_OPTS})  # inside the wall
    with pytest.raises(ValueError, match="free space"):
        env.reset(options={"state": [2.0, 40.0], **WALL_OPTS})  # beyond the border
    with pytest.raises(ValueError, match="wall_x"):
        env.reset(options={"wall_x": 80.0})
    with pytest.raises(ValueError, match="door_y"):
        env.reset(options={"door_y": "middle"})
    with pytest.raises(ValueError, match="unknown episode parameter"):
        env.unwrapped.render_state([10.0, 10.0], wall_y=3)
    with pytest.raises(ValueError, match="512"):
        envs.make("pusht").reset(options={"state": [600.0, 0, 0, 0, 0, 0, 0]})
    with pytest.raises(ValueError, match="table"):  # the T would stick out of the table
        envs.make("pusht").reset(options={"state": [300.0, 300, 256, 60, np.pi, 0, 0]})


@pytest.mark.parametrize(("state", "named"), [
    ([70.0, 30.0], "x=70 must lie strictly between the borders 4 and 60"),
    ([30.0, -5.0], "y=-5 must lie strictly between the borders 4 and 60"),
    ([4.0, 30.0], "x=4 must lie strictly between"),
    ([1e9, 30.0], "x=1e+09"),
    ([32.0, 40.0], "inside the wall (x in [29, 35]"),
])
def test_wall_rejects_positions_out_of_range(state: list[float], named: str) -> None:
    env = envs.make("wall")
    with pytest.raises(ValueError) as err:
        env.reset(options={"state": state, **WALL_OPTS})
    assert named in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="^goal"):
        env.reset(options={"state": [10.0, 30.0], "goal": state, **WALL_OPTS})


def _pusht(**changes: float) -> np.ndarray:
    state = PUSHT_START.copy()
    for index, value in changes.items():
        state[int(index[1:])] = value
    return state


@pytest.mark.parametrize(("state", "named"), [
    (_pusht(s5=1e12), "agent speed 1e+12 px/s"),
    (_pusht(s5=1500.0, s6=1500.0), "must be at most 2000 px/s"),
    (_pusht(s4=1e6), "block angle 1e+06 must lie in [-628.3, 628.3]"),
    (_pusht(s4=-np.inf), "finite"),
    (_pusht(s0=256.0, s1=250.0), "inside the T"),  # the agent's centre in the stem
    (_pusht(s0=3.0), "in a wall; its centre must lie in [7, 504]^2"),
])
def test_pusht_rejects_impossible_states(state: np.ndarray, named: str) -> None:
    env = envs.make("pusht")
    with pytest.raises(ValueError) as err:
        env.reset(options={"state": state})
    assert named in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="^goal"):
        env.reset(options={"state": PUSHT_START, "goal": state})


def test_pusht_accepts_the_edges_of_what_it_can_be_in() -> None:
    env = envs.make("pusht")
    for state in (_pusht(s5=1400.0, s6=-1400.0), _pusht(s4=-200 * np.pi), _pusht(s4=37.0),
                  _pusht(s0=300.0, s1=232.0)):  # overlaps the bar by 13 px, centre outside
        env.reset(options={"state": state})
        np.testing.assert_array_equal(env.unwrapped.get_state(), state)  # exactly, unwrapped


def test_random_resets_are_legal() -> None:
    env = envs.make("pusht")
    for seed in range(40):
        env.reset(seed=seed)
        state = env.unwrapped.get_state()
        corners = tee_corners(state[2:5])
        assert corners.min() >= 7.0 and corners.max() <= 504.0
        assert pusht.tee_signed_distance(state[:2], state[2:5]) > pusht.AGENT_RADIUS
    wall_env = envs.make("wall")
    for seed in range(40):
        wall_env.reset(seed=seed)
        u = wall_env.unwrapped
        assert wall_is_free(u.get_state()[None], u.wall_x, u.door_y)[0]
