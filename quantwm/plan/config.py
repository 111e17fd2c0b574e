"""Planner configuration: the reference values of PROTOCOL section 2 and the kit's named profiles.

A profile is a function of the environment (Wall and PushT differ in CEM steps and MPC rounds).
``planner_config(env, "reference")`` is exactly the reference setup; ``"cpu"`` is the kit's
default, the smallest change that lets the full study fit on a 2-core CPU; ``"smoke"`` runs in
seconds for tests. Any field can be overridden: ``planner_config("wall", "cpu", samples=300)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from quantwm.utils import check_env_name


@dataclass(frozen=True)
class PlannerConfig:
    """CEM inside MPC, in the normalised action space of the world model.

    ``mpc_rounds`` is the largest "iters" index reported: rounds 0..mpc_rounds are planned
    (``mpc_rounds + 1`` plans), so "50 iters" = success within rounds 0..50 and "0 iters" =
    after the first round (open-loop CEM). Each round executes all ``horizon`` macro-actions.
    """

    horizon: int = 5  # macro-actions per plan (each = frameskip env steps)
    samples: int = 300  # CEM samples per step; sample 0 is the current mean
    topk: int = 30  # elites that set the next mean / std
    cem_steps: int = 10  # CEM optimisation steps per round (reference: Wall 10, PushT 30)
    mpc_rounds: int = 50  # largest iters index (reference: Wall 50, PushT 30)
    init_mean: float = 0.0  # initial CEM mean in normalised action space
    init_std: float = 1.0  # initial CEM std in normalised action space
    proprio_weight: float = 1.0  # objective = visual MSE + proprio_weight * proprio MSE
    execute: str = "mean"  # plan executed: "mean" (the final CEM mean, as the reference) or
    # "best" (the lowest-objective sample seen; avoids averaging two modes, e.g. two ways round)
    seed: int = 0  # per-episode generators are seeded from (seed, episode id)
    max_batch: int = 1024  # most sequences per rollout call (memory/cache, not semantics)
    profile: str = "custom"  # the name of the profile it came from (for records only)

    def __post_init__(self) -> None:
        for name in ("horizon", "samples", "topk", "cem_steps", "max_batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"PlannerConfig.{name} must be a positive int, got {value!r}")
        if not isinstance(self.mpc_rounds, int) or self.mpc_rounds < 0:
            raise ValueError(
                f"PlannerConfig.mpc_rounds must be an int >= 0, got {self.mpc_rounds!r}"
            )
        if self.topk > self.samples:
            raise ValueError(
                f"PlannerConfig.topk ({self.topk}) must not exceed samples ({self.samples})"
            )
        if self.topk < 2:
            raise ValueError(f"PlannerConfig.topk must be >= 2 (elite std), got {self.topk}")
        if not self.init_std > 0:
            raise ValueError(f"PlannerConfig.init_std must be > 0, got {self.init_std!r}")
        if not self.proprio_weight >= 0:
            raise ValueError(
                f"PlannerConfig.proprio_weight must be >= 0, got {self.proprio_weight!r}"
            )
        if self.execute not in ("mean", "best"):
            raise ValueError(
                f"PlannerConfig.execute must be 'mean' or 'best', got {self.execute!r}"
            )
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"PlannerConfig.seed must be an int, got {self.seed!r}")

    @property
    def n_rounds(self) -> int:
        """Number of MPC plans an episode that never succeeds goes through."""
        return self.mpc_rounds + 1

    def replace(self, **changes: object) -> PlannerConfig:
        """A copy with some fields changed (validated again)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown PlannerConfig field(s): {sorted(unknown)}")
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


# PROTOCOL section 2, per environment.
_REFERENCE: dict[str, dict[str, int]] = {
    "wall": {"cem_steps": 10, "mpc_rounds": 50},
    "pusht": {"cem_steps": 30, "mpc_rounds": 30},
}

# The kit's default on a 2-core CPU. Why: the study is ~190 configurations (111 Wall + 87 PushT
# counted from the paper's tables, +1 FP32 each) x 50 episodes, and the worst case (no episode
# succeeds, every round runs) must fit in ~12 hours (43,200 s). One rollout of horizon 5 costs
# the predictor 163 MFLOP (one history frame, both envs); at the reference budget (300 samples
# x 10 / 30 CEM steps x 51 / 31 rounds) the worst case of one configuration is ~3.2 h (Wall) /
# ~5.8 h (PushT) here, ~860 h for the study (benchmarks/plan_speed.py). The cuts, smallest first:
#   * keep horizon 5, the objective, sample 0 = mean, mean 0 / std 1: they define the method;
#   * MPC rounds 0..5 (Wall 50 -> 5, PushT 30 -> 5): the targets and most of the paper's
#     differences between methods are at 0 and 5 iters; 10..50 columns need `reference`;
#   * samples 300 -> 64 (Wall) / 48 (PushT), topk 8 / 6 (the elite fraction 10 % -> 12.5 %,
#     so that the elite std is estimated from >= 6 samples);
#   * CEM steps 10 -> 4 (Wall), 30 -> 3 (PushT): replanning every round makes up for part of it.
# Worst case measured (benchmarks/plan_speed.py, 2 cores): Wall 1.9 min and PushT 1.1 min per
# configuration, 111 x 1.9 + 87 x 1.1 min = 5.0 h. The cuts were sized when PushT's predictor
# saw 3 frames (2.5x the FLOPs per rollout, ~12 h in all, estimated); the time this frees did
# not buy success: twice PushT's samples (`--set samples=96 topk=12`) planned 0.60 @0 / 0.78
# @5 instead of 0.65 / 0.78 over 300 episodes (seeds 0, 1 and 200 of seed 2; paired McNemar
# p = 0.07 / 1.0), so the profile stays and the spare time is the user's to spend with `--set`.
# What the cuts cost, with a perfect model (exact dynamics, true-state objective;
# benchmarks/planning_ceiling.py, evaluation episodes): PushT (50, seeds 0 / 1) reaches 0.90 /
# 0.88 @0 and 0.94 / 0.96 @5 at `cpu`, so the cut budget leaves room for the paper's 0.92 /
# 0.94. Wall (50 episodes, seeds 0 / 1) reaches 0.66 / 0.52 @5 at `cpu` with the straight-line
# distance, which leaves the agent at the wall when the door is off the straight line, and
# 1.00 @5 (0.86 / 0.90 @1) with the door-path coordinate the kit's encoder carries
# (`--objective door-path`): the cut budget is enough there too. With the previous Wall model
# (teacher forcing only), twice the samples and CEM steps (`quantwm eval --set samples=128
# topk=16 cem_steps=8`) lifted @0 (0.22 / 0.14 -> 0.38 / 0.38) but not @5 (0.84 / 0.82 ->
# 0.82 / 0.86): the model, not the search, was the limit; the shipped one reaches 0.96 / 0.92
# @5 at `cpu`.
_CPU: dict[str, dict[str, int]] = {
    "wall": {"samples": 64, "topk": 8, "cem_steps": 4, "mpc_rounds": 5},
    "pusht": {"samples": 48, "topk": 6, "cem_steps": 3, "mpc_rounds": 5},
}

# `cpu_long`: the `cpu` CEM budget over the reference's MPC rounds (Wall 0..50, PushT 0..30), so
# the paper's 10..50 iteration columns exist at a CPU's cost per round (study profile `long`).
_CPU_LONG: dict[str, dict[str, int]] = {
    env: {**_CPU[env], "mpc_rounds": _REFERENCE[env]["mpc_rounds"]} for env in _CPU
}

# Seconds: enough to exercise every code path.
_SMOKE: dict[str, int] = {"samples": 16, "topk": 4, "cem_steps": 2, "mpc_rounds": 1}

PROFILES: tuple[str, ...] = ("cpu", "cpu_long", "reference", "smoke")
DEFAULT_PROFILE = "cpu"


def planner_config(env_name: str, profile: str = DEFAULT_PROFILE, **overrides: object
                   ) -> PlannerConfig:
    """The planner configuration of ``profile`` for ``env_name``, with optional field overrides.

    ``profile`` is one of ``PROFILES``: ``"reference"`` (PROTOCOL section 2 exactly), ``"cpu"``
    (the kit's default, see ``_CPU`` for why), ``"cpu_long"`` (the ``cpu`` CEM budget over the
    reference's MPC rounds) or ``"smoke"`` (tests).
    """
    env = check_env_name(env_name)
    values: dict[str, object] = dict(_REFERENCE[env])
    if profile == "reference":
        pass
    elif profile == "cpu":
        values.update(_CPU[env])
    elif profile == "cpu_long":
        values.update(_CPU_LONG[env])
    elif profile == "smoke":
        values.update(_SMOKE)
    else:
        raise ValueError(f"unknown planner profile {profile!r}; expected one of {PROFILES}")
    values["profile"] = profile
    values.update(overrides)
    fields = {f.name for f in dataclasses.fields(PlannerConfig)}
    unknown = set(values) - fields
    if unknown:
        raise ValueError(f"unknown PlannerConfig field(s): {sorted(unknown)}")
    return PlannerConfig(**values)  # type: ignore[arg-type]
