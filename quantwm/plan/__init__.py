"""quantwm.plan: the planning objective, batched CEM, batched MPC and calibration recording.

    from quantwm.plan import planner_config, plan_episodes
    result = plan_episodes(world_model, episodes, planner_config("wall", "cpu"))
    result.success_table()          # {0: ..., 5: ..., 10: ...}
    result.to_frame()               # tidy rows per (episode, round, CEM step)
"""

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

__all__ = [
    "CEMOutput", "DEFAULT_PROFILE", "PROFILES", "PlanResult", "PlannerConfig",
    "calibration_rows", "cem_plan", "episode_seed", "latent_objective", "load_calibration",
    "plan_episodes", "planner_config", "proprio_emb_dim", "record_calibration",
    "rollout_objective", "save_calibration",
]
