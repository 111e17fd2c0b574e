"""Study profiles: which experiments a sweep or a notebook runs, on how many episodes.

Table profiles run the paper's Tables 1-8 row by row (plus the figure rows and the width-scaled
group variant of Tables 1-2):

- ``smoke``: 2 rows per table, 2 episodes, the ``smoke`` planner: checks the pipeline (tests);
  its numbers mean nothing.
- ``quick``: every row, 10 episodes, ``cpu`` planner, MPC rounds 0..5. Shows the shape of the
  study in minutes per table; it detects only differences of ~0.6 and more.
- ``full``: every row, 50 evaluation and 50 calibration episodes, ``cpu`` planner, rounds 0..5:
  the paper's protocol size at the CPU planner budget (~2.5-5 h on 2 cores).
- ``reference``: the paper's protocol exactly (the DINO-WM planner, rounds 0..50 / 0..30): a
  GPU's work.

Focused profiles run the configurations the insights turn on (:data:`POWER_ROWS`, each listed
with the insight it serves):

- ``power``: 200 evaluation episodes per configuration, drawn with seed 100, which nothing in
  the kit was tuned on (the models and planner were developed on seeds 0-3). Powered to
  detect differences of ~0.1-0.15 in success (~2-3 h on 2 cores).
- ``long``: the Insight I / III / V rows over MPC rounds 0..50 (Wall) / 0..30 (PushT) at the
  ``cpu`` CEM budget (planner ``cpu_long``), 50 episodes, so the paper's 10..50 iteration
  columns exist; every record holds the objective and true distance of every episode in every
  round (~2-4 h on 2 cores).

``quantwm sweep --profile NAME --dry-run`` prints a profile's experiment count and its expected
and worst-case time on this machine (:mod:`quantwm.study.cost`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from quantwm.study.grid import FLOAT, TABLE_ENV, TABLES, Experiment, table_experiments
from quantwm.utils import check_env_name

# The kit's Linears are 128 / 148 wide (fc2 512 / 592) where the reference's are 384 / 404
# (fc2 1536 / 2048), so G128 equals per-channel on 12 of the 16 encoder Linears here. A group of
# 48 splits the kit's rows as G128 splits the reference's: 3 groups of a 128-wide row (384/128
# = 3), 4 of a 148-wide one (404/128 -> 4, a partial last group in both), 11 of fc2's 512 (12 of
# 1536). quantwm.quant.size.group_counts tabulates it per Linear.
WIDTH_GROUP = 48
POWER_SEED = 100

F = (FLOAT, FLOAT)


@dataclass(frozen=True)
class Row:
    """One configuration of a focused profile and the insight it serves."""

    insight: str
    method: str
    encoder: tuple[int, int]
    predictor: tuple[int, int]
    group: int | None = None
    act_granularity: str = "per_tensor"
    envs: tuple[str, ...] = ("wall", "pusht")


def _weight_rows() -> list[Row]:
    return [Row("I", m, (w, FLOAT), (w, FLOAT), g)
            for m in ("rtn", "omse") for w in (4, 3) for g in (None, 128, WIDTH_GROUP)]


def _act_rows() -> list[Row]:
    return [Row("II", m, (4, a), (4, a), None, gran)
            for m in ("rtn", "omse") for a in (8, 4) for gran in ("per_tensor", "per_token")]


def _part_rows(bits: Sequence[tuple[int, int]]) -> list[Row]:
    return [r for b in bits for r in (Row("III", "rtn", b, F), Row("III", "rtn", F, b))]


# The power profile, per env: FP32; Insight I (group-wise weights: RTN/OMSE W4/W3, per-channel vs
# G128 vs the width-scaled G48); Insight II (per-tensor vs per-token: RTN/OMSE W4A8/W4A4);
# Insight III (encoder-only vs predictor-only RTN at W4A8, W4A4 and W3, the other part float).
# Insight V's aggressive rows (Wall W3 and W4A4, PushT W4A8) are among them.
POWER_ROWS: tuple[Row, ...] = (
    Row("baseline", "fp32", F, F),
    *_weight_rows(),
    *_act_rows(),
    *_part_rows([(4, 8), (4, 4), (3, FLOAT)]),
)

# The long profile, per env: FP32; Insight I (RTN W4/W3, per-channel vs G128 vs G48); Insight III
# (RTN encoder-only vs predictor-only at W4A8 and W4A4); Insight V (RTN W4A8 and W4A4
# per-tensor: the aggressive rows, Wall W3 being an Insight I row).
LONG_ROWS: tuple[Row, ...] = (
    Row("baseline", "fp32", F, F),
    *[Row("I", "rtn", (w, FLOAT), (w, FLOAT), g) for w in (4, 3) for g in (None, 128, WIDTH_GROUP)],
    *_part_rows([(4, 8), (4, 4)]),
    Row("V", "rtn", (4, 8), (4, 8)),
    Row("V", "rtn", (4, 4), (4, 4)),
)


def table_of(exp: Experiment) -> int:
    """The paper table whose kind of configuration ``exp`` is (FP32 is in every table):
    weight-only with both parts alike, Tables 1 / 2 (Wall / PushT); weights and activations
    alike, per-channel, Tables 3 / 5; grouped, Tables 4 / 6; encoder and predictor apart,
    Tables 7 / 8 (whose W8A8 row with both parts alike this puts in Table 3 / 5)."""
    wall = exp.env == "wall"
    if tuple(exp.encoder) != tuple(exp.predictor):
        return 7 if wall else 8
    if exp.encoder[1] == FLOAT:
        return 1 if wall else 2
    if exp.group is None:
        return 3 if wall else 5
    return 4 if wall else 6


@dataclass(frozen=True)
class StudyProfile:
    """How much of the study to run (see the module doc for each profile's purpose and cost)."""

    name: str
    planner: str  # quantwm.plan profile
    episodes: int  # evaluation episodes per experiment
    calibration_episodes: int  # episodes of the 2-round FP32 calibration run
    rows: int | None = None  # table profiles: rows per table (FP32 first), None = all
    focus: tuple[Row, ...] = ()  # focused profiles: the configurations, instead of tables
    seed: int = 0  # evaluation episode and planner seed

    @property
    def focused(self) -> bool:
        return bool(self.focus)

    def run_fields(self, seed: int | None = None) -> dict[str, object]:
        """The Experiment fields this profile fixes."""
        return {"profile": self.planner, "episodes": self.episodes,
                "calib_episodes": self.calibration_episodes,
                "seed": self.seed if seed is None else seed}

    def experiments(self, table: int, variant: str = "paper", seed: int | None = None
                    ) -> list[Experiment]:
        """The experiments of one paper table under this profile: a table profile's rows in
        the paper's order; a focused profile's FP32 and those of its configurations that are of
        the table's kind (:func:`table_of`), e.g. ``power``'s G48 rows in Tables 1-2."""
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}; expected one of {tuple(TABLES)}")
        if self.focused:
            return [e for e in self.focus_experiments(TABLE_ENV[table], seed)
                    if e.is_float or table_of(e) == table]
        exps = table_experiments(table, variant, **self.run_fields(seed))
        return exps if self.rows is None else exps[: self.rows]

    def width_experiments(self, table: int, variant: str = "paper", seed: int | None = None
                          ) -> list[Experiment]:
        """Tables 1-2's grouped rows with the width-scaled group (:data:`WIDTH_GROUP`); a
        focused profile's are among its :meth:`experiments`."""
        if table not in (1, 2) or self.focused:
            return []
        return [replace(e, group=WIDTH_GROUP) for e in self.experiments(table, variant, seed)
                if e.group == 128]

    def focus_experiments(self, env: str, seed: int | None = None) -> list[Experiment]:
        """The focused profile's experiments for one env, in :data:`POWER_ROWS` order."""
        env = check_env_name(env)
        return [Experiment(env, r.method, r.encoder, r.predictor, r.group, r.act_granularity,
                           **self.run_fields(seed))
                for r in self.focus if env in r.envs]

    def study_experiments(self, tables: Sequence[int] = TABLES, envs: Sequence[str] | None = None,
                          variant: str = "paper", figures: bool = True, width: bool = True,
                          seed: int | None = None) -> list[Experiment]:
        """Everything this profile runs for ``tables`` / ``envs``, without duplicates."""
        envs = tuple(check_env_name(e) for e in (envs or ("wall", "pusht")))
        if self.focused:
            out = [e for env in envs for e in self.focus_experiments(env, seed)]
            return list(dict.fromkeys(out))
        from quantwm.study.analysis import figure_experiments

        tables = [t for t in tables if TABLE_ENV[t] in envs]
        out = [e for t in tables for e in self.experiments(t, variant, seed)]
        if width:
            out += [e for t in tables for e in self.width_experiments(t, variant, seed)]
        if figures and self.rows is None:
            for env in dict.fromkeys(TABLE_ENV[t] for t in tables):
                out += figure_experiments(env, self, seed=self.seed if seed is None else seed
                                          ).values()
        return list(dict.fromkeys(out))


STUDY_PROFILES: dict[str, StudyProfile] = {
    "smoke": StudyProfile("smoke", planner="smoke", episodes=2, calibration_episodes=2, rows=2),
    "quick": StudyProfile("quick", planner="cpu", episodes=10, calibration_episodes=10),
    "full": StudyProfile("full", planner="cpu", episodes=50, calibration_episodes=50),
    "power": StudyProfile("power", planner="cpu", episodes=200, calibration_episodes=50,
                          focus=POWER_ROWS, seed=POWER_SEED),
    "long": StudyProfile("long", planner="cpu_long", episodes=50, calibration_episodes=50,
                         focus=LONG_ROWS),
    "reference": StudyProfile("reference", planner="reference", episodes=50,
                              calibration_episodes=50),
}


# What `make report` and `quantwm notebooks` show unless told otherwise, chosen by hand as the
# most powerful table profile the committed store holds whole. A test checks that the store
# holds every experiment of it (a fresh clone's report recomputes nothing) and that Makefile,
# CLI and the notebooks' parameter cells agree.
REPORT_PROFILE = "full"


def profile_of(exp: Experiment) -> str | None:
    """The name of the study profile whose run fields made ``exp`` (None: none of them)."""
    fields = {"profile": exp.profile, "episodes": exp.episodes,
              "calib_episodes": exp.calib_episodes, "seed": exp.seed}
    return next((name for name, p in STUDY_PROFILES.items() if p.run_fields() == fields), None)


def study_profile(name: str) -> StudyProfile:
    if name not in STUDY_PROFILES:
        raise ValueError(f"unknown study profile {name!r}; expected one of {tuple(STUDY_PROFILES)}")
    return STUDY_PROFILES[name]
