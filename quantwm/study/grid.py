"""The paper's experiment grids, declared once as data: ``data/paper_tables.csv``.

Each row of the CSV is one (configuration, iteration) cell of the paper's Tables 1-8. The grid
of a table is the set of distinct configurations in it; an :class:`Experiment` is one such
configuration on one environment with the planner profile, episode count and seed that run it.
The same configuration can appear in several tables (FP32 everywhere, RTN W8A8 in Tables 3 and
7): its key does not depend on the table, so it is run once and shown in each.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd

from quantwm.utils import DATA_DIR, check_env_name

PAPER_TABLES = DATA_DIR / "paper_tables.csv"
TABLES = tuple(range(1, 9))
TABLE_ENV = {1: "wall", 2: "pusht", 3: "wall", 4: "wall", 5: "pusht", 6: "pusht", 7: "wall",
             8: "pusht"}
FLOAT = 32  # how the tables print "not quantized"

# The paper's method names -> the kit's. "paper" follows the reference code as it was run
# (AWQ with stale weight scales on LN->fc1 only, OmniQuant with 0 epochs); "designed" runs the
# methods as their authors designed them. See quantwm.quant.config for the method list.
METHOD_VARIANTS = {
    "paper": {"FP32": "fp32", "RTN": "rtn", "OMSE": "omse", "AWQ": "awq_ref",
              "SmoothQuant": "smoothquant", "OmniQuant": "omniquant_ref"},
    "designed": {"FP32": "fp32", "RTN": "rtn", "OMSE": "omse", "AWQ": "awq",
                 "SmoothQuant": "smoothquant", "OmniQuant": "omniquant"},
}


@dataclass(frozen=True)
class Experiment:
    """One quantized (or FP32) world model evaluated by the MPC planner.

    Bits are ``(weight, activation)`` per part, 32 meaning float. ``group`` None is per-channel
    weights; ``act_granularity`` is "per_tensor" (static) or "per_token" (dynamic).
    """

    env: str
    method: str = "fp32"
    encoder: tuple[int, int] = (FLOAT, FLOAT)
    predictor: tuple[int, int] = (FLOAT, FLOAT)
    group: int | None = None
    act_granularity: str = "per_tensor"
    profile: str = "cpu"
    episodes: int = 50
    seed: int = 0
    calib_episodes: int = 50

    def __post_init__(self) -> None:
        object.__setattr__(self, "env", check_env_name(self.env))
        object.__setattr__(self, "encoder", tuple(int(b) for b in self.encoder))
        object.__setattr__(self, "predictor", tuple(int(b) for b in self.predictor))
        for name in ("episodes", "calib_episodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.method != "fp32":
            self.quant_config()  # validates method, bits, group and granularity

    @property
    def is_float(self) -> bool:
        return self.method == "fp32"

    @property
    def method_revision(self) -> int:
        """The revision of the method's code (``quantwm.quant.METHOD_REVISIONS``; FP32: 1)."""
        from quantwm.quant.config import METHOD_REVISIONS

        return 1 if self.is_float else METHOD_REVISIONS[self.method]

    @property
    def calibration_revision(self) -> int | None:
        """The draw of calibration episodes a result of this experiment depends on
        (``quantwm.data.episodes.CALIBRATION_REVISION``); None where quantizing it needs no
        recorded inputs (FP32, RTN / OMSE weights with dynamic or float activations)."""
        from quantwm.data.episodes import CALIBRATION_REVISION
        from quantwm.quant.apply import needs_calibration

        if self.is_float or not needs_calibration(self.quant_config()):
            return None
        return CALIBRATION_REVISION[self.env]

    def quant_config(self, **options: Any):
        """The :class:`quantwm.quant.QuantConfig` of this experiment (None for FP32)."""
        if self.is_float:
            return None
        from quantwm.quant import QuantConfig

        return QuantConfig(method=self.method, encoder=self.encoder, predictor=self.predictor,
                           w_group_size=self.group, act_granularity=self.act_granularity,
                           **options)

    def model_key(self) -> str:
        """Identifies the quantized model alone (for caching it across planner settings)."""
        if self.is_float:
            return "fp32"
        e, p = self.encoder, self.predictor
        group = f"g{self.group}" if self.group else "gch"
        # the granularity matters wherever any part quantizes its activations
        act = "" if min(e[1], p[1]) >= FLOAT else f"-{self.act_granularity.replace('_', '')}"
        return f"{self.method}-e{e[0]}a{e[1]}-p{p[0]}a{p[1]}-{group}{act}"

    def key(self) -> str:
        """A readable, stable file name for this experiment's result."""
        run = f"{self.profile}-n{self.episodes}-c{self.calib_episodes}-s{self.seed}"
        digest = hashlib.sha1(repr(dataclasses.astuple(self)).encode()).hexdigest()[:6]
        return f"{self.env}-{self.model_key()}-{run}-{digest}"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["encoder"], d["predictor"] = list(self.encoder), list(self.predictor)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Experiment:
        d = dict(d)
        d["encoder"], d["predictor"] = tuple(d["encoder"]), tuple(d["predictor"])
        return cls(**d)


@cache
def _paper_frame(path: str) -> pd.DataFrame:
    df = pd.read_csv(path, dtype={"group": "Int64"})
    for col in ("w_bits", "a_bits", "enc_w", "enc_a", "pred_w", "pred_a"):
        df[col] = df[col].astype("Int64")
    return df


def paper_tables(path: str | Path = PAPER_TABLES) -> pd.DataFrame:
    """The paper's Tables 1-8 as tidy rows (a copy; safe to modify)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"paper tables not found at {path}")
    return _paper_frame(str(path)).copy()


def check_table(table: int) -> int:
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; the paper has tables {TABLES}")
    return int(table)


def paper_configs(table: int) -> pd.DataFrame:
    """One row per configuration of a table, in the paper's row order."""
    df = paper_tables()
    df = df[df["table"] == check_table(table)]
    keys = ["method", "w_bits", "a_bits", "group", "act_granularity",
            "enc_w", "enc_a", "pred_w", "pred_a"]
    return df.drop_duplicates(keys)[["table", "env", *keys]].reset_index(drop=True)


def experiment_from_row(row: pd.Series, variant: str = "paper", **run: Any) -> Experiment:
    """The kit's experiment for one paper configuration row (``run``: profile, episodes, seed)."""
    if variant not in METHOD_VARIANTS:
        raise ValueError(f"unknown method variant {variant!r}; expected {tuple(METHOD_VARIANTS)}")
    method = METHOD_VARIANTS[variant][row["method"]]
    if pd.notna(row["enc_w"]):  # Tables 7-8: encoder and predictor bits set apart
        encoder = (int(row["enc_w"]), int(row["enc_a"]))
        predictor = (int(row["pred_w"]), int(row["pred_a"]))
    else:
        encoder = predictor = (int(row["w_bits"]), int(row["a_bits"]))
    if method == "fp32":
        encoder = predictor = (FLOAT, FLOAT)
    group = None if pd.isna(row["group"]) else int(row["group"])
    gran = row["act_granularity"] if isinstance(row["act_granularity"], str) else "per-tensor"
    return Experiment(env=TABLE_ENV[int(row["table"])], method=method, encoder=encoder,
                      predictor=predictor, group=group,
                      act_granularity=gran.replace("-", "_"), **run)


_PAPER_NAME = {v: k for variant in ("designed", "paper") for k, v in
               METHOD_VARIANTS[variant].items()}


def config_columns(exp: Experiment) -> dict[str, Any]:
    """The paper's configuration columns of an experiment (method, w_bits, a_bits, group,
    act_granularity, enc_w, enc_a, pred_w, pred_a), NaN where the paper leaves them empty."""
    nan = float("nan")
    split = tuple(exp.encoder) != tuple(exp.predictor)
    out = {"method": _PAPER_NAME.get(exp.method, exp.method),
           "w_bits": nan if split else float(exp.encoder[0]),
           "a_bits": nan if split else float(exp.encoder[1]),
           "group": nan if exp.group is None else float(exp.group),
           # as the paper's CSV spells it: also on weight-only rows, empty on split rows
           "act_granularity": nan if split else exp.act_granularity.replace("_", "-"),
           "enc_w": float(exp.encoder[0]) if split else nan,
           "enc_a": float(exp.encoder[1]) if split else nan,
           "pred_w": float(exp.predictor[0]) if split else nan,
           "pred_a": float(exp.predictor[1]) if split else nan}
    if exp.is_float:
        out.update(w_bits=float(FLOAT), a_bits=float(FLOAT))
    return out


def table_experiments(table: int, variant: str = "paper", **run: Any) -> list[Experiment]:
    """The experiments that make one of the paper's tables, FP32 first, in the paper's order."""
    return [experiment_from_row(row, variant, **run) for _, row in paper_configs(table).iterrows()]


def paper_iters(env: str) -> list[int]:
    """The iteration columns the paper reports for an environment."""
    return [0, 5, 10, 20, 30, 40, 50] if check_env_name(env) == "wall" else [0, 5, 10, 20, 30]
