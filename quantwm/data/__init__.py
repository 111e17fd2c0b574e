"""quantwm.data: trajectory datasets, train/val split, frame windows, episode sets.

- ``make_trajectories(env_name, n_traj, n_steps, seed) -> Trajectories``; ``Trajectories.save``
  / ``Trajectories.load`` (compressed npz, ``data/<env>/trajectories.npz``);
  ``load_trajectories(env_name)`` reads the shipped dataset (the file plus the extensions
  ``data/<env>/extensions.json`` lists, generated on first use; ``with_extensions=False``: the
  file alone, whose validation split is the same); ``extend_trajectories(trajs, n, seed)``
  appends training trajectories and leaves the validation split (and its episodes) as it was.
- ``FrameWindows(trajs, split, num_frames, frameskip=5, img_size=64)``: a torch Dataset of
  rendered frame windows (imported lazily: it needs torch).
- ``evaluation_episodes(env_name, n=50, seed=0)``, ``calibration_episodes(env_name, n=50,
  seed=1)`` -> ``EpisodeSet`` (evaluation reads the validation split only, so it never waits for
  the extensions; calibration reads the training split, extensions included).
"""

from __future__ import annotations

from typing import Any

from quantwm.data.episodes import EpisodeSet, calibration_episodes, evaluation_episodes
from quantwm.data.trajectories import (
    DEFAULT_SEED,
    DEFAULT_SIZES,
    Trajectories,
    default_path,
    extend_trajectories,
    format_summary,
    load_trajectories,
    make_trajectories,
    summarize,
)


def __getattr__(name: str) -> Any:
    if name == "FrameWindows":
        from quantwm.data.windows import FrameWindows

        return FrameWindows
    raise AttributeError(f"module 'quantwm.data' has no attribute {name!r}")


__all__ = [
    "DEFAULT_SEED",
    "DEFAULT_SIZES",
    "EpisodeSet",
    "FrameWindows",
    "Trajectories",
    "calibration_episodes",
    "default_path",
    "evaluation_episodes",
    "extend_trajectories",
    "format_summary",
    "load_trajectories",
    "make_trajectories",
    "summarize",
]
