"""quantwm.envs: the Wall and PushT environments, their rendering and success checks.

Importing this package (or ``quantwm``) registers ``quantwm/Wall-v0`` and ``quantwm/PushT-v0``
with gymnasium. Gymnasium 1.x loads no plugins by itself (its ``gymnasium.envs`` entry-point
group went in 1.0), so without that import name the module in the id, which gymnasium imports
first::

    env = gymnasium.make("quantwm:quantwm/PushT-v0", max_episode_steps=100)
    obs, info = env.reset(seed=0, options={"goal": goal_state})   # goal optional
    obs, reward, terminated, truncated, info = env.step(action)   # info["is_success"]

With a goal, ``terminated`` (and reward 1.0) come on success; ``max_episode_steps`` adds
gymnasium's ``TimeLimit`` (no limit by default). The planner passes no goal and judges success
itself (``quantwm.envs.base`` has the whole contract).

Besides the gymnasium envs it offers batch helpers keyed by env name, for the planner and the
datasets, that need no env instance:

- ``make(name, **kw)``: ``gymnasium.make`` by short name ("wall" or "pusht"), e.g.
  ``make("wall", max_episode_steps=50)``;
- ``is_success(name, states, goal_states)``: a bool array over any leading shape;
- ``render_states(name, states, img_size=64, **params)``: uint8 images (B, H, W, 3); Wall takes
  ``wall_x`` / ``door_y`` as scalars or (B,) arrays;
- ``proprio_of(name, states)``: float32 proprio over any leading shape;
- ``STATE_DIM``, ``PROPRIO_DIM``, ``ACTION_DIM`` and ``ENV_IDS`` by short name.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from quantwm.envs.pusht import PushTEnv, pusht_proprio, pusht_success, render_pusht
from quantwm.envs.wall import WallEnv, render_wall, wall_proprio, wall_step, wall_success
from quantwm.utils import check_env_name

ENV_IDS: dict[str, str] = {"wall": "quantwm/Wall-v0", "pusht": "quantwm/PushT-v0"}
ENV_CLASSES: dict[str, type] = {"wall": WallEnv, "pusht": PushTEnv}
STATE_DIM: dict[str, int] = {"wall": 2, "pusht": 7}
PROPRIO_DIM: dict[str, int] = {"wall": 2, "pusht": 4}
ACTION_DIM: dict[str, int] = {"wall": 2, "pusht": 2}

for _name, _cls in ENV_CLASSES.items():
    if ENV_IDS[_name] not in gym.registry:
        gym.register(id=ENV_IDS[_name], entry_point=f"{_cls.__module__}:{_cls.__name__}")


def make(name: str, **kwargs: Any) -> gym.Env:
    """``gymnasium.make`` of the kit's env ``name`` ("wall" or "pusht"); kwargs go to the env."""
    return gym.make(ENV_IDS[check_env_name(name)], **kwargs)


def is_success(name: str, states: Any, goal_states: Any) -> np.ndarray:
    """PROTOCOL section 3 success of states against goals, vectorised over leading dims."""
    fn = wall_success if check_env_name(name) == "wall" else pusht_success
    return fn(states, goal_states)


def proprio_of(name: str, states: Any) -> np.ndarray:
    """Proprio (float32) of states, vectorised over leading dims."""
    fn = wall_proprio if check_env_name(name) == "wall" else pusht_proprio
    return fn(states)


def render_states(name: str, states: Any, img_size: int = 64, **params: Any) -> np.ndarray:
    """Images (B, H, W, 3) uint8 of states (B, S); Wall needs ``wall_x`` and ``door_y``."""
    if check_env_name(name) == "wall":
        unknown = sorted(set(params) - {"wall_x", "door_y"})
        missing = sorted({"wall_x", "door_y"} - set(params))
        if unknown or missing:
            raise ValueError(
                f"wall rendering needs wall_x and door_y; missing {missing}, unknown {unknown}"
            )
        return render_wall(states, params["wall_x"], params["door_y"], img_size)
    if params:
        raise ValueError(f"PushT has no episode parameters, got {sorted(params)}")
    return render_pusht(states, img_size)


__all__ = [
    "ACTION_DIM",
    "ENV_CLASSES",
    "ENV_IDS",
    "PROPRIO_DIM",
    "STATE_DIM",
    "PushTEnv",
    "WallEnv",
    "is_success",
    "make",
    "proprio_of",
    "render_states",
    "wall_step",
]
