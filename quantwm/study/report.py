"""The paper's tables as the reports show them: one numeric table per paper table, styled.

    from quantwm.study import report
    report.setup_display()                        # no table is cut at pandas' max_rows
    sub = frame[frame["table"] == 1]              # frame: analysis.study_frame(...) rows
    display(Markdown(report.table_heading(sub)))
    display(report.style_table(report.paper_table(sub, store)))

:func:`paper_table` keeps every number a number (a DataFrame: the kit's rate and its 95 %
interval, the paper's rate, their difference, the exact paired p-value against FP32 on the same
episodes and its flag, per iteration column); :func:`style_table` only formats it, e.g. the
kit's cell as ``0.40 [0.17, 0.69]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from quantwm.study.store import ResultStore
from quantwm.study.tables import mcnemar_exact

PAPER_EPISODES = 50
CONFIG = "configuration"
# per iteration, in this order; lo/hi are hidden by the Styler (shown inside the kit cell)
CELLS = ("kit", "lo", "hi", "paper", "diff", "p", "flag")
DASH = "–"


def setup_display() -> None:
    """Pandas display options for the reports: every row and column of a table is shown, in
    plain ``display(df)`` and in Stylers (pandas cuts frames longer than 60 rows to 10)."""
    pd.set_option("display.max_rows", None)
    pd.set_option("display.max_columns", None)
    pd.set_option("display.width", None)
    pd.set_option("display.max_colwidth", None)
    pd.set_option("styler.render.max_rows", None)
    pd.set_option("styler.render.max_columns", None)
    pd.set_option("styler.render.max_elements", 10_000_000)


def iteration_columns(frame: pd.DataFrame) -> list[int]:
    """The kit's iteration columns of ``frame`` (a study frame), ascending."""
    return sorted(int(k) for k in frame["iters"].unique())


def _bits(v: float) -> float:
    return np.nan if pd.isna(v) else float(v)


def configuration_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration of ``frame`` (paper order, indexed by the paper's row):
    method, #W, #A (Tables 7-8: E #W, E #A, P #W, P #A), #G (group; NaN = per-channel) and the
    activation granularity (None where activations stay in float)."""
    cfg = frame.drop_duplicates("row").sort_values("row").set_index("row")
    split = cfg["enc_w"].notna().any()
    rows = []
    for row, c in cfg.iterrows():
        out = {"method": c["method"]}
        if split:  # FP32 has no per-part bits in the paper's CSV: 32 everywhere
            w, a = (32.0, 32.0) if c["method"] == "FP32" else (np.nan, np.nan)
            out.update({"E #W": _bits(c["enc_w"]) if pd.notna(c["enc_w"]) else w,
                        "E #A": _bits(c["enc_a"]) if pd.notna(c["enc_a"]) else a,
                        "P #W": _bits(c["pred_w"]) if pd.notna(c["pred_w"]) else w,
                        "P #A": _bits(c["pred_a"]) if pd.notna(c["pred_a"]) else a})
            a_bits = min(out["E #A"], out["P #A"])
        else:
            out.update({"#W": _bits(c["w_bits"]), "#A": _bits(c["a_bits"])})
            a_bits = out["#A"]
        out["#G"] = _bits(c["group"])
        # the paper leaves it unsaid in Tables 7-8; the kit runs them per-tensor (grid.py)
        gran = c["act_granularity"] if isinstance(c["act_granularity"], str) else "per-tensor"
        out["activations"] = gran if a_bits < 32 else None
        rows.append({"row": row, **out})
    return pd.DataFrame(rows).set_index("row")


def paper_table(frame: pd.DataFrame, store: ResultStore | None, alpha: float = 0.05,
                reference: str = "FP32") -> pd.DataFrame:
    """One paper table in the paper's layout, every configuration of ``frame``, all numeric.

    ``frame`` holds :func:`quantwm.study.analysis.study_frame` rows of one table. Columns are
    a two-level index: ``("configuration", method | #W | #A | #G | activations)`` (Tables 7-8:
    the encoder's and the predictor's bits apart), then per iteration ``k``
    ``(f"{k} iters", kit | lo | hi | paper | diff | p | flag)``: the kit's success rate and its
    95 % Wilson interval, the paper's rate, kit - paper, the two-sided exact McNemar p-value of
    the configuration against ``reference`` (FP32) on the same episodes (NaN for the reference
    itself, without it or without a ``store`` to read episodes from) and ``p < alpha``.
    Indexed by the paper's row number; ``("configuration", "label")`` names each row.
    """
    if frame["table"].nunique() != 1:
        raise ValueError(f"one table at a time, got tables {sorted(frame['table'].unique())}")
    frame = frame.sort_values(["row", "iters"])
    configs = configuration_columns(frame)
    ref = frame[frame["method"] == reference]
    ref_key = ref["key"].iloc[0] if not ref.empty and store is not None else None
    out = {(CONFIG, c): configs[c] for c in configs.columns}
    out[(CONFIG, "label")] = frame.drop_duplicates("row").set_index("row")["label"]
    for k in iteration_columns(frame):
        at = frame[frame["iters"] == k].set_index("row")
        head = f"{k} iters"
        out[(head, "kit")] = at["success"]
        out[(head, "lo")] = at["lo"]
        out[(head, "hi")] = at["hi"]
        out[(head, "paper")] = at["paper"].astype(float)
        out[(head, "diff")] = at["success"] - at["paper"].astype(float)
        p = pd.Series(np.nan, index=at.index)
        if ref_key is not None:
            base = _outcomes(store, ref_key, k)
            for row, key in at["key"].items():
                mine = _outcomes(store, key, k)
                if key != ref_key and mine.shape == base.shape:
                    p[row] = mcnemar_exact(mine, base)
        out[(head, "p")] = p
        out[(head, "flag")] = p < alpha
    table = pd.DataFrame(out)
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    table.index.name = "row"
    return table


def _outcomes(store: ResultStore, key: str, iters: int) -> np.ndarray:
    """(episodes,) bool: the stored experiment ``key`` succeeded within ``iters`` rounds."""
    record = store.read_key(key)
    first = record["episodes"]["first_success_round"]
    return np.array([r is not None and r <= iters for r in first], dtype=bool)


def table_heading(frame: pd.DataFrame, alpha: float = 0.05, note: str = "") -> str:
    """Markdown heading of one table: which table, env, how many configurations (``note``
    after them), episodes on each side, what the flag means."""
    t, env = int(frame["table"].iloc[0]), frame["env"].iloc[0]
    n = int(frame["n"].max())
    note = f" ({note})" if note else ""
    return (f"### Table {t} ({env}): {frame['key'].nunique()} configurations{note}\n"
            f"Kit: success within k MPC rounds on {n} episodes, 95 % Wilson interval in "
            f"brackets; paper: {PAPER_EPISODES} episodes, the reference planner; diff = kit - "
            f"paper; p: exact McNemar test against FP32 on the same episodes, `*` where "
            f"p < {alpha:g}.")


def _interval_formatter(lo: float, hi: float):
    return lambda v: DASH if pd.isna(v) else f"{v:.2f} [{lo:.2f}, {hi:.2f}]"


def style_table(table: pd.DataFrame, caption: str | None = None):
    """A pandas Styler of :func:`paper_table`: the kit cell reads ``0.40 [0.17, 0.69]`` (from
    the numeric kit, lo and hi columns; lo and hi hidden), the difference is shaded (blue: kit
    above the paper, red: below), flagged cells are bold, NaN reads ``–``. The table's data
    stay numeric."""
    iters = [h for h in table.columns.get_level_values(0).unique() if h != CONFIG]
    shown = table.copy()
    styler = shown.style
    ints = [c for c in shown.columns if c[0] == CONFIG and c[1].startswith(("#", "E #", "P #"))]
    styler = styler.format("{:.0f}", subset=ints, na_rep=DASH)
    styler = styler.format(lambda v: DASH if v is None or pd.isna(v) else str(v),
                           subset=[(CONFIG, "activations")])
    for h in iters:
        styler = styler.format("{:.2f}", subset=[(h, "paper")], na_rep=DASH)
        styler = styler.format("{:+.2f}", subset=[(h, "diff")], na_rep=DASH)
        styler = styler.format("{:.2g}", subset=[(h, "p")], na_rep=DASH)
        styler = styler.format(lambda f: "*" if f else "", subset=[(h, "flag")])
        for row in shown.index:  # each kit cell formats its own interval
            lo, hi = shown.at[row, (h, "lo")], shown.at[row, (h, "hi")]
            styler = styler.format(_interval_formatter(lo, hi), subset=([row], [(h, "kit")]))
        styler = styler.background_gradient(cmap="RdBu", vmin=-1, vmax=1,
                                            subset=[(h, "diff")])
        flagged = shown[(h, "flag")].to_numpy(bool)
        styler = styler.apply(lambda col, f=flagged: np.where(f, "font-weight: bold", ""),
                              subset=[(h, "kit"), (h, "p"), (h, "flag")])
    hidden = [c for c in shown.columns if c[1] in ("lo", "hi") or c == (CONFIG, "label")]
    styler = styler.hide(hidden, axis="columns")
    styler = styler.hide(axis="index")
    if caption:
        styler = styler.set_caption(caption)
    return styler


def configurations_shown(table: pd.DataFrame) -> int:
    """How many configurations a :func:`paper_table` holds (for checks against the store)."""
    return len(table.index)


def stored_frames(tables: Sequence[int], study, store: ResultStore,
                  variant: str = "paper") -> pd.DataFrame:
    """The study frames of ``tables`` from what ``store`` holds (nothing is run), the
    width-scaled G48 rows of Tables 1-2 after the paper's."""
    from quantwm.study.analysis import study_frame

    parts = [study_frame(t, study.experiments(t, variant) + study.width_experiments(t, variant),
                         store, variant) for t in tables]
    parts = [p for p in parts if not p.empty]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
