"""The result store: one JSON file per finished experiment, written atomically.

A sweep asks the store what is done and runs only the rest, so an interrupted sweep resumes
and loses nothing; a result is either whole on disk or absent (never half-written), and an
experiment's file name is its key, so rerunning cannot duplicate it.

Each result records the SHA-1 of the checkpoint it was made with and the revision of its
quantization method (``quantwm.quant.METHOD_REVISIONS``). After a model is retrained or a
method's code changes what it computes, the old results are *stale*: ``has`` and ``missing``
treat them as not done, so the next sweep reruns them (and replaces the files) instead of mixing
two models or two versions of a method in one table.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from quantwm.study.grid import Experiment
from quantwm.utils import DATA_DIR, atomic_write_json

RESULTS_DIR = DATA_DIR / "results"


class ResultStore:
    """Results of experiments under ``root/<env>/<key>.json``."""

    def __init__(self, root: str | Path = RESULTS_DIR, check_checkpoints: bool = True) -> None:
        self.root = Path(root)
        self.check_checkpoints = check_checkpoints

    def path(self, experiment: Experiment) -> Path:
        return self.root / experiment.env / f"{experiment.key()}.json"

    def has(self, experiment: Experiment) -> bool:
        """Whether a current result is stored (one made with another checkpoint is stale)."""
        path = self.path(experiment)
        return path.exists() and not self.is_stale(json.loads(path.read_text()))

    def is_stale(self, record: dict[str, Any]) -> bool:
        """Whether ``record`` was made with another checkpoint than the one now shipped, or
        with an older revision of its quantization method."""
        exp = Experiment.from_dict(record["experiment"])
        if record.get("method_revision", 1) != exp.method_revision:
            return True
        made_with = record.get("checkpoint")
        if not self.check_checkpoints or made_with is None:
            return False
        from quantwm.model import checkpoint_digest

        try:
            return checkpoint_digest(record["experiment"]["env"]) != made_with["sha1"]
        except FileNotFoundError:
            return False  # no checkpoint to compare with: keep what is there

    def write(self, experiment: Experiment, result: dict[str, Any]) -> Path:
        """Store ``result`` for ``experiment`` atomically (replacing an older one)."""
        record = {"experiment": experiment.to_dict(), "key": experiment.key(), **result}
        path = self.path(experiment)
        atomic_write_json(path, record)
        return path

    def read(self, experiment: Experiment) -> dict[str, Any]:
        path = self.path(experiment)
        if not path.exists():
            raise ValueError(f"no result for {experiment.key()} under {self.root}")
        return json.loads(path.read_text())

    def missing(self, experiments: list[Experiment]) -> list[Experiment]:
        """The experiments without a current stored result, in order, without duplicates."""
        seen: set[str] = set()
        todo = []
        for e in experiments:
            if e.key() not in seen and not self.has(e):
                todo.append(e)
            seen.add(e.key())
        return todo

    def records(self) -> Iterator[dict[str, Any]]:
        for path in sorted(self.root.glob("*/*.json")):
            yield json.loads(path.read_text())

    def frame(self) -> pd.DataFrame:
        """One row per (experiment, iters) with the success rate and the experiment fields."""
        rows = []
        for rec in self.records():
            exp = rec["experiment"]
            base = {k: exp[k] for k in ("env", "method", "group", "act_granularity", "profile",
                                        "episodes", "seed")}
            base.update(enc_w=exp["encoder"][0], enc_a=exp["encoder"][1],
                        pred_w=exp["predictor"][0], pred_a=exp["predictor"][1], key=rec["key"])
            for iters, rate in rec["success"].items():
                rows.append({**base, "iters": int(iters), "success": rate})
        return pd.DataFrame(rows)
