"""What a sweep will cost on this machine, before it runs, from what earlier runs measured.

Every stored record holds its planning seconds, the rounds each episode planned (from
``first_success_round``) and its torch thread count. From them:

- **throughput**: seconds of one episode-round (one CEM plan + 25 env steps) per env, CEM
  budget and episode count, the median over stored records at one thread (records at t threads
  count t times their seconds: a worker of a ``--workers`` sweep has one thread). An experiment
  takes the throughput measured at the episode count nearest its own (on a log scale; an exact
  tie goes to the larger): what an episode-round costs moves with the batch and with what else
  the machine ran, and the nearest measured run is the best guess. In the committed store a
  Wall episode-round cost 0.78 s in the 10-episode ``quick`` records, 0.58 s in the 50-episode
  ``long`` ones and 1.46 s in the 200-episode ``power`` ones (a 2-worker sweep beside other
  work); priced at the median over all records, ``power`` came out at half its time
  (``benchmarks/cost_accuracy.py`` checks the estimate against the stored records);
- **expected rounds** of an experiment: from a stored record of the same quantized model (any
  episode count) the mean number of rounds an episode plans, extended past its last round by
  its last survival rate; without one, from the env's FP32 record (optimistic for a weak
  configuration);
- **quantization seconds**: the median of stored records of the same method and env.

Expected and worst-case (every episode plans every round) seconds follow, and a sweep's wall
time is their sum divided by the workers; with no stored record of an env, its time is unknown
(NaN). The figures are estimates: the machine's load moves
them by +-30 %.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from quantwm.study.grid import Experiment
from quantwm.study.store import ResultStore

# a budget: (samples, cem_steps), which sets the cost of one round
Budget = tuple[int, int]


def _budget(env: str, planner: str) -> Budget:
    from quantwm.plan import planner_config

    c = planner_config(env, planner)
    return c.samples, c.cem_steps


def _rounds_run(record: dict[str, Any]) -> list[int]:
    rounds = len(record["success_by_round"])
    return [rounds if f is None else int(f) + 1 for f in record["episodes"]["first_success_round"]]


def measured_seconds(record: dict[str, Any]) -> tuple[float, float]:
    """(planning, quantization) seconds of a record at one thread: a record made at t threads
    counts t times its seconds. KeyError / TypeError / ValueError for a record without them."""
    threads = int(record.get("provenance", {}).get("torch_threads", 1))
    seconds = record["seconds"]
    return float(seconds["plan"]) * threads, float(seconds.get("quantize", 0.0)) * threads


@dataclass
class CostModel:
    """Per-env measured costs (see the module doc)."""

    # (env, budget) -> {episodes of the record: one episode-round at one thread}
    round_seconds: dict[tuple[str, Budget], dict[int, float]]
    survival: dict[tuple[str, str], np.ndarray]  # (env, model_key) -> P(still active at r)
    quantize_seconds: dict[tuple[str, str], float]  # (env, method)

    @classmethod
    def from_records(cls, records: Iterable[dict[str, Any]]) -> CostModel:
        per_round: dict[tuple[str, Budget], dict[int, list[float]]] = defaultdict(
            lambda: defaultdict(list))
        survival: dict[tuple[str, str], tuple[int, np.ndarray]] = {}
        quant: dict[tuple[str, str], list[float]] = defaultdict(list)
        for rec in records:
            try:
                exp = Experiment.from_dict(rec["experiment"])
                rounds = _rounds_run(rec)
                plan_s, quantize_s = measured_seconds(rec)
            except (KeyError, TypeError, ValueError):
                continue  # an incomplete or foreign record says nothing about cost
            cfg = rec.get("planner", {})
            budget = (int(cfg.get("samples", 0)), int(cfg.get("cem_steps", 0)))
            if sum(rounds):
                per_round[(exp.env, budget)][len(rounds)].append(plan_s / sum(rounds))
            n_rounds = len(rec["success_by_round"])
            active = np.array([[r < k for k in rounds] for r in range(n_rounds)]).mean(axis=1)
            key = (exp.env, exp.model_key())
            if key not in survival or survival[key][0] < len(rounds):  # most episodes wins
                survival[key] = (len(rounds), active)
            if not exp.is_float:
                quant[(exp.env, exp.method)].append(quantize_s)
        return cls({k: {n: statistics.median(v) for n, v in by_n.items()}
                    for k, by_n in per_round.items()},
                   {k: v for k, (_, v) in survival.items()},
                   {k: statistics.median(v) for k, v in quant.items()})

    def seconds_per_round(self, env: str, planner: str, episodes: int | None = None) -> float:
        """One episode-round at one thread, measured on the episode count nearest ``episodes``
        (None: the largest measured); scaled by samples x CEM steps from another measured
        budget of the env when this one was never run."""
        budget = _budget(env, planner)
        scale = 1.0
        by_n = self.round_seconds.get((env, budget))
        if by_n is None:
            known = [(b, n) for (e, b), n in self.round_seconds.items() if e == env and b[0] > 0]
            if not known:
                return float("nan")  # nothing measured yet: the time is unknown, not zero
            (samples, steps), by_n = max(known, key=lambda kv: kv[0][0] * kv[0][1])
            scale = budget[0] * budget[1] / (samples * steps)
        if episodes is None:
            return scale * by_n[max(by_n)]
        if episodes < 1:
            raise ValueError(f"episodes={episodes!r}: expected an integer >= 1 (or None)")
        # log-distance |log(n / episodes)| compared exactly, as the ratio larger / smaller
        nearest = min(by_n, key=lambda n: (Fraction(max(n, episodes), min(n, episodes)), -n))
        return scale * by_n[nearest]

    def expected_rounds(self, exp: Experiment, n_rounds: int) -> float:
        """Mean rounds an episode of ``exp`` plans, of at most ``n_rounds``."""
        active = self.survival.get((exp.env, exp.model_key()))
        if active is None:
            active = self.survival.get((exp.env, "fp32"), np.ones(1))
        if len(active) < n_rounds:
            active = np.concatenate([active, np.full(n_rounds - len(active), active[-1])])
        return float(active[:n_rounds].sum())

    def experiment_seconds(self, exp: Experiment) -> tuple[float, float]:
        """(expected, worst-case) seconds of one experiment at one thread."""
        from quantwm.plan import planner_config

        n_rounds = planner_config(exp.env, exp.profile).n_rounds
        per_round = self.seconds_per_round(exp.env, exp.profile, exp.episodes)
        quant = 0.0 if exp.is_float else self.quantize_seconds.get((exp.env, exp.method), 0.0)
        expected = exp.episodes * self.expected_rounds(exp, n_rounds) * per_round
        return quant + expected, quant + exp.episodes * n_rounds * per_round


def sweep_cost(experiments: Sequence[Experiment], store: ResultStore, workers: int = 1
               ) -> dict[str, float]:
    """Expected and worst-case wall seconds of running ``experiments`` with ``workers``
    one-thread workers, measured from ``store``'s records (see the module doc)."""
    model = CostModel.from_records(store.records())
    exp_s = worst_s = 0.0
    for e in experiments:
        a, b = model.experiment_seconds(e)
        exp_s, worst_s = exp_s + a, worst_s + b
    w = max(1, min(workers, len(experiments)))
    return {"experiments": len(experiments), "expected_s": exp_s / w, "worst_s": worst_s / w}


def format_hours(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "unknown"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"
