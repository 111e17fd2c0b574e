"""Where the training data comes from: stage-1 frames with state features, stage-2 windows.

Both read the trajectory datasets of ``quantwm.data`` (``data/<env>/trajectories.npz``), the
training split only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from quantwm.envs import render_states
from quantwm.utils import DATA_DIR, check_env_name


def trajectories_path(env_name: str):
    return DATA_DIR / check_env_name(env_name) / "trajectories.npz"


def load_trajectories(env_name: str, with_extensions: bool = True) -> Any:
    """The ``quantwm.data.Trajectories`` of an env, or an error naming the command to make it.

    With the training trajectories ``data/<env>/extensions.json`` lists (generated on first
    use): the shipped PushT model was trained on them (its ``meta["dataset"]``).
    ``with_extensions=False``: the shipped file alone (stage 1, the encoder, was trained on it).
    """
    from quantwm.data import load_trajectories as load

    path = trajectories_path(env_name)
    if not path.exists():
        raise FileNotFoundError(f"no dataset at {path}; make it with `quantwm data make --env "
                                f"{env_name}` (see quantwm.data)")
    return load(env_name, with_extensions=with_extensions)


#: what ``state_features`` returns per frame, in order
STATE_FEATURES = {"wall": ("agent_x", "agent_y", "wall_x", "door_y", "door_path"),
                  "pusht": ("agent_x", "agent_y", "block_x", "block_y", "cos_angle", "sin_angle")}
#: Wall: how much the door-path coordinate weighs against an agent coordinate (same px units)
DOOR_PATH_WEIGHT = 2.0
_SIDE_SOFTNESS_PX = 2.0


def door_path_coordinate(x: np.ndarray, y: np.ndarray, wall_x: np.ndarray, door_y: np.ndarray
                         ) -> np.ndarray:
    """Wall: the agent's signed distance to the door, ``side(x) * ||(x, y) - door||`` in px.

    ``side`` is -1 in the left room and +1 in the right one (``tanh((x - wall_x) / 2 px)``, so
    it is smooth in the door, where the distance is small anyway). For two points in opposite
    rooms the difference of this coordinate is the length of the shortest path through the
    door centre; in one room it is at most their straight-line distance. Carried in the
    latent (stage 1, ``DOOR_PATH_WEIGHT`` times an agent coordinate), it makes the planning
    objective grow with the path length, where a straight-line distance has a local minimum
    at the wall across from the goal (see ``quantwm.plan.oracle``).
    """
    side = np.tanh((np.asarray(x, np.float64) - wall_x) / _SIDE_SOFTNESS_PX)
    return side * np.hypot(np.asarray(x, np.float64) - wall_x, np.asarray(y, np.float64) - door_y)


def feature_normalization(env_name: str, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, scale)`` that normalise ``state_features``: each feature by its own std, except
    Wall's door-path coordinate, which is put in the agent x's units and weighted by
    ``DOOR_PATH_WEIGHT``."""
    mean, scale = feats.mean(0), feats.std(0) + 1e-6
    if check_env_name(env_name) == "wall":
        names = STATE_FEATURES["wall"]
        scale[names.index("door_path")] = scale[names.index("agent_x")] / DOOR_PATH_WEIGHT
    return mean, scale


def state_features(env_name: str, states: np.ndarray, params: dict[str, np.ndarray]
                   ) -> np.ndarray:
    """The state a single frame shows, as a float vector (before normalisation), in the order
    of ``STATE_FEATURES[env_name]``.

    Wall: agent x, y, wall x, door y and the door-path coordinate (``door_path_coordinate``).
    PushT: agent x, y, block x, y, cos and sin of the block angle (the T has no symmetry, so
    the angle is periodic in 2 pi only).
    """
    env_name = check_env_name(env_name)
    states = np.asarray(states, dtype=np.float64)
    if env_name == "wall":
        wall_x = np.asarray(params["wall_x"], np.float64)
        door_y = np.asarray(params["door_y"], np.float64)
        x, y = states[:, 0], states[:, 1]
        return np.stack([x, y, np.broadcast_to(wall_x, x.shape),
                         np.broadcast_to(door_y, x.shape),
                         door_path_coordinate(x, y, wall_x, door_y)], axis=1)
    angle = states[:, 4]
    return np.concatenate([states[:, :4], np.cos(angle)[:, None], np.sin(angle)[:, None]], 1)


class EnvFrames:
    """Stage-1 frame source: random states of the training split, rendered, with features.

    ``sample(n, rng) -> (images float (n, 3, H, W) in [0, 1], features float (n, F))`` where
    the features are normalised by the split's mean and std.
    """

    def __init__(self, env_name: str, trajs: Any, split: str = "train", img_size: int = 64
                 ) -> None:
        self.env_name = check_env_name(env_name)
        sel = np.asarray(trajs.split) == split
        if not sel.any():
            raise ValueError(f"the {env_name} dataset has no {split!r} trajectories")
        states = np.asarray(trajs.states)[sel]  # (n, T + 1, S)
        n, t1, s = states.shape
        self.states = states.reshape(n * t1, s)
        self.params = {k: np.repeat(np.asarray(v)[sel], t1) for k, v in trajs.params.items()}
        feats = state_features(self.env_name, self.states, self.params)
        self.mean, self.std = feature_normalization(self.env_name, feats)
        self.features = ((feats - self.mean) / self.std).astype(np.float32)
        self.num_features = feats.shape[1]
        self.img_size = img_size

    def sample(self, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = rng.integers(len(self.states), size=n)
        images = render_states(self.env_name, self.states[idx], self.img_size,
                               **{k: v[idx] for k, v in self.params.items()})  # (n, H, W, 3)
        images = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
        return images, torch.from_numpy(self.features[idx])


def frame_windows(env_name: str, trajs: Any, split: str, num_frames: int, frameskip: int,
                  img_size: int) -> Any:
    """``quantwm.data.FrameWindows`` of ``num_frames`` frames (stage-2 data), without the frame
    cache: stage 2 keeps the encoder's latents instead (``FrameWindows.encoded``)."""
    from quantwm.data import FrameWindows

    return FrameWindows(trajs, split, num_frames, frameskip=frameskip, img_size=img_size,
                        cache=False)


def trajectory_frames(env_name: str, trajs: Any, split: str, n: int, frameskip: int,
                      img_size: int, seed: int = 0) -> torch.Tensor:
    """Frames ``(n, T, 3, H, W)`` in [0, 1] of n random ``split`` trajectories, every
    ``frameskip`` steps."""
    idx = np.asarray(trajs.indices(split))
    idx = np.random.default_rng(seed).choice(idx, size=min(n, len(idx)), replace=False)
    states = np.asarray(trajs.states)[idx][:, ::frameskip]  # (n, T, S)
    k, T, S = states.shape
    params = {key: np.repeat(np.asarray(v)[idx], T) for key, v in trajs.params.items()}
    images = render_states(env_name, states.reshape(k * T, S), img_size, **params)
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0).unflatten(0, (k, T))
