"""Paper-style tables: success by iteration with 95 % Wilson intervals and paired flags, as
numbers (a Styler formats them).

50 episodes cannot tell 0.94 from 0.96: each rate comes with its Wilson score interval, and a
row is flagged where it differs from a reference row *on the same episodes* beyond noise
(exact McNemar test: ``scipy.stats.binomtest`` on the discordant episode pairs). Both come from
:mod:`quantwm.study.stats`, re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from quantwm.study.stats import mcnemar_exact, wilson_interval

__all__ = ["mcnemar_exact", "paper_style_table", "success_matrix", "wilson_interval"]


def success_matrix(first_success_round: Sequence[int | None], iters: Sequence[int]) -> np.ndarray:
    """(episodes, len(iters)) bool: episode succeeded within rounds 0..k for each k in iters."""
    rounds = np.array([np.inf if r is None else r for r in first_success_round], dtype=float)
    return rounds[:, None] <= np.asarray(iters, dtype=float)[None, :]


def paper_style_table(rows: Sequence[dict], iters: Sequence[int], reference: int = 0,
                      alpha: float = 0.05) -> pd.DataFrame:
    """Rows ``{"label": str, "first_success_round": [...]}`` as the paper lays them out, every
    number a number.

    Indexed by label (``config``); per iteration k the columns ``(f"{k} iters", success | lo |
    hi | p | flag)``: the success rate within k rounds, its 95 % Wilson interval, the exact
    two-sided McNemar p-value against row ``reference`` (FP32 by convention) on the same
    episodes (NaN for the reference itself and for rows of other episodes) and ``p < alpha``.
    Formatting belongs to a Styler, e.g. ``table.style.format(precision=2)``.
    """
    if not rows:
        raise ValueError("no rows to render")
    mats = [success_matrix(r["first_success_round"], iters) for r in rows]
    ref = mats[reference]
    out = {}
    for j, k in enumerate(iters):
        head = f"{k} iters"
        n = np.array([m.shape[0] for m in mats])
        s = np.array([int(m[:, j].sum()) for m in mats])
        bounds = np.array([wilson_interval(a, b) for a, b in zip(s, n, strict=True)])
        p = [mcnemar_exact(m[:, j], ref[:, j]) if m is not ref and m.shape == ref.shape
             else np.nan for m in mats]
        out[(head, "success")] = s / n
        out[(head, "lo")], out[(head, "hi")] = bounds[:, 0], bounds[:, 1]
        out[(head, "p")] = np.array(p, dtype=float)
        out[(head, "flag")] = out[(head, "p")] < alpha
    table = pd.DataFrame(out, index=pd.Index([r["label"] for r in rows], name="config"))
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    return table
