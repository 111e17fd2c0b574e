"""Paper-style tables: success by iteration with 95 % Wilson intervals and paired flags.

50 episodes cannot tell 0.94 from 0.96: each rate comes with its Wilson score interval, and a
row is flagged where it differs from a reference row *on the same episodes* beyond noise
(exact McNemar test on the discordant episode pairs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95 % for the default z)."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in 0..{n}, got {successes}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Two-sided exact McNemar p-value for paired binary outcomes of the same episodes."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes need the same episodes, got {a.shape} vs {b.shape}")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


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
