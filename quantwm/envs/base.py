"""The common shell of the kit's environments: dict observations, reset options, input checks.

A concrete environment supplies its dynamics and rendering; this class does the gymnasium
plumbing the same way for both:

- observation ``{"visual": uint8 (H, W, 3), "proprio": float32 (P,)}``;
- ``reset(seed=..., options={"state": s, **episode_params})`` puts the env in exactly that state
  (unknown option keys, states of the wrong length, non-finite values and states the env cannot
  be in raise a ``ValueError`` naming the value and the allowed range);
- ``reset(options={"goal": g, ...})`` sets an optional goal state for the episode (checked like
  a state); without one the episode has no goal;
- ``step(action)`` rejects actions of the wrong shape or with NaN/inf (``ValueError``) and clips
  the rest to the action space. Without a goal the reward is 0 and the episode never ends by
  itself (the planner judges success with ``is_success(state, goal_state)`` itself). With a goal,
  ``info["is_success"]`` says whether the state is a success against it (after ``reset`` too),
  the reward is 1.0 on success and 0.0 otherwise, and ``terminated`` is True on success;
- episodes are not truncated unless a step limit is asked for: ``gymnasium.make(id,
  max_episode_steps=N)`` (or ``quantwm.envs.make(name, max_episode_steps=N)``) adds gymnasium's
  ``TimeLimit``, which sets ``truncated`` after N steps;
- ``get_state()`` returns a float64 copy of the state; right after ``reset`` it is bit-for-bit the
  state that was passed in.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np


def as_vector(value: Any, length: int, what: str) -> np.ndarray:
    """``value`` as a finite float64 vector of ``length`` entries, or a ValueError naming it."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be numeric, got {value!r}") from err
    if arr.shape != (length,):
        raise ValueError(f"{what} must have shape ({length},), got shape {arr.shape}: {value!r}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} must be finite, got {arr.tolist()}")
    return arr


def as_scalar(value: Any, what: str, lo: float, hi: float) -> float:
    """``value`` as a finite float in ``[lo, hi]``, or a ValueError naming it."""
    try:
        x = float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be a number, got {value!r}") from err
    if not np.isfinite(x) or not lo <= x <= hi:
        raise ValueError(f"{what} must be a finite number in [{lo}, {hi}], got {value!r}")
    return x


def wrap_angle(angle: np.ndarray | float) -> np.ndarray:
    """Angle(s) wrapped into [-pi, pi)."""
    return (np.asarray(angle, dtype=np.float64) + np.pi) % (2 * np.pi) - np.pi


class KitEnv(gym.Env):
    """Base class of WallEnv and PushTEnv (see the module docstring for the shared contract)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    #: length of the state vector, of the proprio vector, and the names of episode parameters
    state_dim: int = 0
    proprio_dim: int = 0
    param_names: tuple[str, ...] = ()

    def __init__(self, img_size: int = 64, render_mode: str | None = None) -> None:
        if isinstance(img_size, bool) or not isinstance(img_size, int | np.integer):
            raise ValueError(f"img_size must be an integer, got {img_size!r}")
        if not 8 <= int(img_size) <= 1024:
            raise ValueError(f"img_size must be in [8, 1024], got {img_size!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be one of {self.metadata['render_modes']} or None, "
                f"got {render_mode!r}"
            )
        self.img_size = int(img_size)
        self.render_mode = render_mode
        self._goal: np.ndarray | None = None

    # ---- to be provided by the concrete environment ------------------------------------------
    def _resolve_params(self, options: dict[str, Any]) -> dict[str, float]:
        """Episode parameters for this reset (from options, constructor, or sampled)."""
        return {}

    def _sample_state(self, params: dict[str, float]) -> np.ndarray:
        raise NotImplementedError

    def _check_state(self, state: np.ndarray, params: dict[str, float], what: str = "state"
                     ) -> None:
        """Raise ValueError (naming ``what``) if ``state`` is not a legal state under ``params``."""

    def _apply(self, state: np.ndarray, params: dict[str, float]) -> None:
        raise NotImplementedError

    def _advance(self, action: np.ndarray) -> None:
        raise NotImplementedError

    def get_state(self) -> np.ndarray:
        raise NotImplementedError

    def episode_params(self) -> dict[str, float]:
        return {}

    def render_state(self, state: np.ndarray, **params: float) -> np.ndarray:
        raise NotImplementedError

    def proprio_of(self, state: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def is_success(self, state: np.ndarray, goal_state: np.ndarray) -> bool:
        raise NotImplementedError

    # ---- gymnasium API ---------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise ValueError(f"options must be a dict, got {options!r}")
        allowed = ("state", "goal", *self.param_names)
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ValueError(f"unknown reset option(s) {unknown}; allowed: {allowed}")
        params = self._resolve_params(options)
        goal = None
        if options.get("goal") is not None:
            goal = as_vector(options["goal"], self.state_dim, "goal")
            self._check_state(goal, params, "goal")
        if options.get("state") is not None:
            state = as_vector(options["state"], self.state_dim, "state")
            self._check_state(state, params)
        else:
            state = self._sample_state(params)
        self._apply(state.copy(), params)
        self._goal = goal
        return self._observation(), self._info()

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        self._advance(self.clip_action(action))
        info = self._info()
        success = bool(info.get("is_success", False))
        return self._observation(), float(success), success, False, info

    @property
    def goal(self) -> np.ndarray | None:
        """The goal state given at the last reset (a copy), or None."""
        return None if self._goal is None else self._goal.copy()

    def step_state(self, action: Any) -> np.ndarray:
        """``step`` without the observation: clip, advance, return the new state (no rendering).

        For data generation and for executing plans where only the state is needed.
        """
        self._advance(self.clip_action(action))
        return self.get_state()

    def render(self) -> np.ndarray | None:
        if self.render_mode == "rgb_array":
            return self.render_state(self.get_state(), **self.episode_params())
        return None

    # ---- helpers ---------------------------------------------------------------------------
    def clip_action(self, action: Any) -> np.ndarray:
        """The action as float64, clipped to the action space; ValueError on bad shape or NaN."""
        shape = self.action_space.shape
        a = as_vector(action, shape[0], "action") if shape else None
        assert a is not None
        return np.clip(a, self.action_space.low, self.action_space.high).astype(np.float64)

    def _observation(self) -> dict[str, np.ndarray]:
        state = self.get_state()
        return {
            "visual": self.render_state(state, **self.episode_params()),
            "proprio": self.proprio_of(state),
        }

    def _info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"state": self.get_state(), **self.episode_params()}
        if self._goal is not None:
            info["is_success"] = self.is_success(info["state"], self._goal)
        return info
