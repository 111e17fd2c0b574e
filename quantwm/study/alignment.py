"""Does the planning objective still track the task? Insight V on fixed populations.

The paper (Insight V, Fig. 3): under aggressive quantization "the planning loss fails to
decrease and even increases", and the objective becomes "poorly aligned with true task
success". Comparing mean losses over MPC rounds is biased when episodes leave the batch as they
succeed (later rounds would average failures only), so every statistic here is over a **fixed
population**: every episode in every round. An episode that succeeded has stopped acting, and
its record carries the objective and distance it stopped with (records made before the planner
did so are completed the same way on reading).

Per configuration, over its episodes:

- **objective change**: per episode, ``log(objective after the last round / objective at the
  start)`` (the reached latent objective: the planning objective evaluated on the observation
  the plan actually led to); negative = the objective decreased. Records made before the start
  objective was stored use the objective after round 0.
- **alignment**: Spearman's rho of the reached objective against the true distance to the
  goal over all (episode, round) pairs; high = the objective measures progress.

Against FP32 on the same episodes: the paired per-episode difference of the objective change
(:func:`quantwm.study.stats.paired_test`) and the difference in alignment with a paired
bootstrap over episodes (episodes are resampled together with all their rounds, in both
configurations at once). Both come as :class:`quantwm.study.stats.EpisodeTest` so that
:func:`quantwm.study.stats.judge` gives the three-way verdict of the tests declared in
:data:`INSIGHT_V_TESTS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from quantwm.study.stats import Claim, EpisodeTest, judge, minimum_detectable_effect, paired_test
from quantwm.utils import spearman

N_BOOT = 2000


def _carried(rows: list[list[float | None]]) -> np.ndarray:
    """(episodes, rounds) floats with every null after an episode's last value carried
    forward (what the planner now records itself)."""
    out = np.array([[np.nan if v is None else float(v) for v in r] for r in rows], dtype=float)
    for r in range(1, out.shape[1]):
        hole = np.isnan(out[:, r])
        out[hole, r] = out[hole, r - 1]
    return out


@dataclass
class Trajectories:
    """One record's per-episode objective and distance over every round (fixed population)."""

    key: str
    ids: list[str]
    objective: np.ndarray  # (episodes, rounds) reached latent objective
    distance: np.ndarray  # (episodes, rounds) true distance to the goal
    start: np.ndarray  # (episodes,) objective before round 0 (or after round 0, see module)
    success: np.ndarray  # (episodes,) succeeded by the last round

    @classmethod
    def of(cls, record: dict[str, Any]) -> Trajectories:
        ep = record["episodes"]
        obj = _carried(ep["latent_mse_by_round"])
        dist = _carried(ep["goal_distance_by_round"])
        start = ep.get("latent_mse_start")
        start = obj[:, 0] if start is None else np.array(start, dtype=float)
        return cls(record["key"], list(ep["ids"]), obj, dist, start,
                   np.array([f is not None for f in ep["first_success_round"]]))

    @property
    def objective_change(self) -> np.ndarray:
        """Per episode, log(final objective / start objective)."""
        return np.log(self.objective[:, -1] / self.start)

    def alignment(self, episodes: np.ndarray | None = None) -> float:
        """Spearman's rho of objective vs distance over the (episode, round) pairs of
        ``episodes`` (indices, repeats allowed; default all)."""
        idx = np.arange(len(self.ids)) if episodes is None else episodes
        return spearman(self.objective[idx].ravel(), self.distance[idx].ravel())


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """One row per configuration: objective change (median, per episode), alignment, success."""
    t = Trajectories.of(record)
    return {"key": t.key, "episodes": len(t.ids), "rounds": t.objective.shape[1] - 1,
            "objective_change": float(np.median(t.objective_change)),
            "alignment": t.alignment(), "success": float(t.success.mean())}


def compare(fp32: dict[str, Any], quantized: dict[str, Any], seed: int = 0
            ) -> dict[str, EpisodeTest]:
    """Quantized minus FP32 on the same episodes: ``objective_change`` (paired per-episode
    difference of log objective change) and ``alignment`` (difference in rho, paired bootstrap
    over episodes)."""
    a, b = Trajectories.of(fp32), Trajectories.of(quantized)
    if a.ids != b.ids:
        raise ValueError(f"{b.key} and {a.key} were not run on the same episodes")
    change = paired_test([(a.objective_change, b.objective_change)], seed=seed)
    return {"objective_change": change, "alignment": _paired_bootstrap(a, b, seed)}


def _paired_bootstrap(a: Trajectories, b: Trajectories, seed: int) -> EpisodeTest:
    """Difference of alignment (b - a) with a percentile interval from resampling episodes;
    the p-value is the two-sided bootstrap tail at 0, the MDE 2.8 bootstrap SEs."""
    n = len(a.ids)
    rng = np.random.default_rng(seed)
    diff = b.alignment() - a.alignment()
    boots = []
    for _ in range(N_BOOT):
        idx = rng.integers(0, n, size=n)
        boots.append(b.alignment(idx) - a.alignment(idx))
    boots = np.array([x for x in boots if math.isfinite(x)])
    if boots.size < N_BOOT // 2 or not math.isfinite(diff):
        nan = float("nan")
        return EpisodeTest(diff, nan, nan, 1.0, n, 1, nan, nan, "none", 0.0, 0.95,
                           "undefined (no spread in objective or distance)")
    lo, hi = np.quantile(boots, [0.025, 0.975])
    p = min(1.0, 2 * min((boots <= 0).mean(), (boots >= 0).mean()) + 1 / boots.size)
    se = float(boots.std(ddof=1))
    mde = minimum_detectable_effect(se * math.sqrt(n), n)
    return EpisodeTest(float(diff), float(lo), float(hi), float(p), n, 1, mde,
                       se * math.sqrt(n), "bootstrap", 0.0, 0.95,
                       "paired bootstrap over episodes (percentile)")


@dataclass(frozen=True)
class AlignmentTest:
    """One Insight V test, declared before the data: which statistic, the paper's claim."""

    name: str
    statistic: str  # "objective_change" or "alignment"
    paper: str
    claim: Claim


INSIGHT_V_TESTS: tuple[AlignmentTest, ...] = (
    AlignmentTest("V-objective", "objective_change",
                  "under aggressive quantization the planning loss fails to decrease (it "
                  "decreases less than FP32's, per episode)", Claim("increase", margin=0.25)),
    AlignmentTest("V-alignment", "alignment",
                  "the planning objective is poorly aligned with task success (its rank "
                  "correlation with the true distance is lower than FP32's)",
                  Claim("decrease", margin=0.10)),
)

# The aggressive settings the paper names for Insight V (RTN, per-channel, per-tensor).
AGGRESSIVE: dict[str, tuple[str, ...]] = {
    "wall": ("rtn-e3a32-p3a32-gch", "rtn-e4a4-p4a4-gch-pertensor"),
    "pusht": ("rtn-e4a8-p4a8-gch-pertensor",),
}


def insight5_table(records: list[dict[str, Any]], env: str, seed: int = 0) -> pd.DataFrame:
    """Every Insight V test for every aggressive configuration of ``env`` stored beside an FP32
    record of the same run: one row per (configuration, test) with the estimate, interval,
    p, n, MDE and verdict."""
    from quantwm.study.grid import Experiment

    by_model: dict[str, dict[str, Any]] = {}
    for rec in records:
        exp = Experiment.from_dict(rec["experiment"])
        if exp.env == env:
            by_model[exp.model_key()] = rec
    rows = []
    fp = by_model.get("fp32")
    for model_key in AGGRESSIVE.get(env, ()):
        if fp is None or model_key not in by_model:
            continue
        tests = compare(fp, by_model[model_key], seed)
        for t in INSIGHT_V_TESTS:
            r = tests[t.statistic]
            v = judge(r, t.claim)
            rows.append({"env": env, "configuration": by_model[model_key]["label"],
                         "test": t.name, "statistic": t.statistic, "estimate": r.estimate,
                         "lo": r.lo, "hi": r.hi, "p": r.p_value, "n": r.n, "mde": r.mde,
                         "verdict": v.word, "reason": v.reason})
    return pd.DataFrame(rows)
