"""Paper-style tables: success by iteration with 95 % Wilson intervals and paired flags.

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

__all__ = ["format_rate", "mcnemar_exact", "paper_style_table", "success_matrix",
           "wilson_interval"]


def format_rate(successes: int, n: int) -> str:
    """``0.94 [0.84, 0.98]``."""
    lo, hi = wilson_interval(successes, n)
    return f"{successes / n:.2f} [{lo:.2f}, {hi:.2f}]"


def success_matrix(first_success_round: Sequence[int | None], iters: Sequence[int]) -> np.ndarray:
    """(episodes, len(iters)) bool: episode succeeded within rounds 0..k for each k in iters."""
    rounds = np.array([np.inf if r is None else r for r in first_success_round], dtype=float)
    return rounds[:, None] <= np.asarray(iters, dtype=float)[None, :]


def paper_style_table(rows: Sequence[dict], iters: Sequence[int], reference: int = 0,
                      alpha: float = 0.05) -> pd.DataFrame:
    """Render rows ``{"label": str, "first_success_round": [...]}`` as the paper lays them out.

    Cells are ``rate [lo, hi]``; a ``*`` marks a cell that differs from row ``reference`` (FP32
    by convention) beyond noise on the same episodes (exact McNemar, two-sided, ``alpha``).
    """
    if not rows:
        raise ValueError("no rows to render")
    mats = [success_matrix(r["first_success_round"], iters) for r in rows]
    ref = mats[reference]
    out = []
    for r, m in zip(rows, mats, strict=True):
        n = m.shape[0]
        cells = {}
        for j, k in enumerate(iters):
            text = format_rate(int(m[:, j].sum()), n)
            if m is not ref and m.shape == ref.shape and mcnemar_exact(m[:, j], ref[:, j]) < alpha:
                text += " *"
            cells[f"{k} iters"] = text
        out.append({"config": r["label"], **cells})
    return pd.DataFrame(out).set_index("config")
