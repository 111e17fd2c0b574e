"""Study profiles: how much of the paper's grid a sweep or a notebook runs.

``smoke`` exercises every code path in seconds (tests); ``quick`` runs every row of a table on
few episodes (minutes per table); ``full`` is the paper's protocol size (50 episodes, every
row) at the CPU planner budget (MPC rounds 0..5); ``reference`` is the paper's protocol exactly
(the DINO-WM planner, MPC rounds 0..50 Wall / 0..30 PushT, so every "iters" column): a GPU's
work, thousands of hours on a 2-core CPU. The planner profile behind each is one of
``quantwm.plan.PROFILES``.
"""

from __future__ import annotations

from dataclasses import dataclass

from quantwm.study.grid import Experiment, table_experiments


@dataclass(frozen=True)
class StudyProfile:
    name: str
    planner: str  # quantwm.plan profile
    episodes: int  # evaluation episodes per experiment
    calibration_episodes: int  # episodes of the 2-round FP32 calibration run
    rows: int | None  # rows per table (FP32 first), None = all

    def experiments(self, table: int, variant: str = "paper", seed: int = 0) -> list[Experiment]:
        """The experiments of one paper table under this profile."""
        exps = table_experiments(table, variant, profile=self.planner, episodes=self.episodes,
                                 calib_episodes=self.calibration_episodes, seed=seed)
        return exps if self.rows is None else exps[: self.rows]


STUDY_PROFILES: dict[str, StudyProfile] = {
    "smoke": StudyProfile("smoke", planner="smoke", episodes=2, calibration_episodes=2, rows=2),
    "quick": StudyProfile("quick", planner="cpu", episodes=10, calibration_episodes=10,
                          rows=None),
    "full": StudyProfile("full", planner="cpu", episodes=50, calibration_episodes=50, rows=None),
    "reference": StudyProfile("reference", planner="reference", episodes=50,
                              calibration_episodes=50, rows=None),
}


def study_profile(name: str) -> StudyProfile:
    if name not in STUDY_PROFILES:
        raise ValueError(f"unknown study profile {name!r}; expected one of {tuple(STUDY_PROFILES)}")
    return STUDY_PROFILES[name]
