"""quantwm.plan: the planning objective, batched CEM, batched MPC and calibration recording.

    from quantwm.plan import planner_config, plan_episodes
    result = plan_episodes(world_model, episodes, planner_config("wall", "cpu"))
    result.success_table()          # {0: ..., 5: ..., 10: ...}
    result.to_frame()               # tidy rows per (episode, round, CEM step)

The names below are imported on first use (PEP 562): ``quantwm.plan.config`` needs no torch, so
``quantwm eval --help`` does not wait seconds for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from quantwm.utils import lazy_exports

#: public name -> the submodule that defines it
_SOURCES = {
    "calibration_rows": "calibration", "load_calibration": "calibration",
    "record_calibration": "calibration", "save_calibration": "calibration",
    "CEMOutput": "cem", "cem_plan": "cem", "rollout_objective": "cem",
    "DEFAULT_PROFILE": "config", "PROFILES": "config", "PlannerConfig": "config",
    "planner_config": "config",
    "PlanResult": "mpc", "episode_seed": "mpc", "plan_episodes": "mpc",
    "latent_objective": "objective", "proprio_emb_dim": "objective",
}

__all__ = [
    "CEMOutput", "DEFAULT_PROFILE", "PROFILES", "PlanResult", "PlannerConfig",
    "calibration_rows", "cem_plan", "episode_seed", "latent_objective", "load_calibration",
    "plan_episodes", "planner_config", "proprio_emb_dim", "record_calibration",
    "rollout_objective", "save_calibration",
]

if TYPE_CHECKING:
    from quantwm.plan.calibration import (
        calibration_rows,
        load_calibration,
        record_calibration,
        save_calibration,
    )
    from quantwm.plan.cem import CEMOutput, cem_plan, rollout_objective
    from quantwm.plan.config import DEFAULT_PROFILE, PROFILES, PlannerConfig, planner_config
    from quantwm.plan.mpc import PlanResult, episode_seed, plan_episodes
    from quantwm.plan.objective import latent_objective, proprio_emb_dim


__getattr__, __dir__ = lazy_exports(__name__, _SOURCES, __all__)
