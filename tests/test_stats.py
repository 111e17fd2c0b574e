"""Episode-level statistics (quantwm.study.stats): properties checked by simulation, known values,
the three-way verdicts and the declared insight tests applied to a synthetic store."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from quantwm.study import Experiment, analysis
from quantwm.study.stats import (
    CLAIM_KINDS,
    INSIGHT_TESTS,
    Claim,
    Configs,
    Pairs,
    episode_test,
    judge,
    mcnemar_exact,
    minimum_detectable_effect,
    paired_differences,
    paired_test,
    proportion_test,
    spearman,
    wilson_interval,
)
from quantwm.study.store import ResultStore

FAST = {"n_resamples": 1999}  # valid p-values and intervals, cheaper for simulations


def _within(rate: float, target: float, sims: int, sds: float = 3.0) -> bool:
    """``rate`` is within ``sds`` binomial standard errors of ``target`` over ``sims`` draws."""
    return abs(rate - target) <= sds * math.sqrt(target * (1 - target) / sims)


# ------------------------------------------------------------------------- known values
def test_wilson_and_mcnemar_known_values() -> None:
    lo, hi = wilson_interval(47, 50)  # Wilson (1927): 47/50 -> [0.838, 0.979]
    assert math.isclose(lo, 0.838, abs_tol=1e-3) and math.isclose(hi, 0.979, abs_tol=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    a = np.zeros(10, bool)
    six = np.array([True] * 6 + [False] * 4)
    assert math.isclose(mcnemar_exact(a, six), 2 / 2**6)  # 6 discordant, all one way
    b = np.array([True] * 2 + [False] * 8)
    c = np.array([False] * 2 + [True] * 8)
    assert math.isclose(mcnemar_exact(b, c), 2 * (1 + 10 + 45) / 2**10)  # 8 vs 2 discordant
    assert mcnemar_exact(six, six) == 1.0
    with pytest.raises(ValueError, match="same episodes"):
        mcnemar_exact(a, a[:5])
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(11, 10)


def test_sign_flip_test_of_one_boolean_pair_is_the_exact_mcnemar_test() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = rng.random(12) < 0.5, rng.random(12) < 0.7
        assert math.isclose(paired_test([(a, b)]).p_value, mcnemar_exact(a, b), rel_tol=1e-9)


def test_spearman_uses_scipy_and_drops_nan_pairs() -> None:
    x, y = [1.0, 2, 3, 4, 5, np.nan], [5.0, 6, 7, 8, 7, 1]
    assert math.isclose(spearman(x, y), sps.spearmanr(x[:5], y[:5]).statistic)
    assert math.isnan(spearman([1, 2], [2, 1])) and math.isnan(spearman([1, 2, 3], [4, 4, 4]))
    from quantwm.utils import spearman as planner_spearman

    assert planner_spearman is spearman


# ------------------------------------------------------------------------- properties
def test_an_effect_of_the_reported_mde_is_detected_at_the_stated_power() -> None:
    rng, n, sims = np.random.default_rng(1), 20, 300
    mde = minimum_detectable_effect(1.0, n)
    reported, hits = [], 0
    for i in range(sims):
        r = episode_test(rng.normal(mde, 1.0, n), seed=i, **FAST)
        hits += r.p_value < 0.05
        reported.append(r.mde)
    assert _within(hits / sims, 0.8, sims)
    assert abs(np.mean(reported) / mde - 1) < 0.05  # the reported MDE estimates the true one


def test_boolean_pairs_reach_somewhat_less_than_the_stated_power() -> None:
    # one pair of success outcomes: per episode +1 w.p. q+, -1 w.p. q-; effect q+ - q- set to
    # the MDE of the difference's true SD. The exact test on so few distinct values is
    # conservative: its power at the MDE is about 0.7, not 0.8 (documented in episode_test).
    rng, n, sims, q_minus = np.random.default_rng(2), 30, 300, 0.1
    k2 = minimum_detectable_effect(1.0, n) ** 2
    effect = (k2 + math.sqrt(k2**2 + 8 * k2 * (1 + k2) * q_minus)) / (2 * (1 + k2))
    q_plus = q_minus + effect
    sd = math.sqrt(q_plus + q_minus - effect**2)
    assert math.isclose(minimum_detectable_effect(sd, n), effect, rel_tol=1e-6)
    hits = 0
    for i in range(sims):
        u = rng.random(n)
        a = u < q_minus  # A succeeds alone w.p. q-, B alone w.p. q+
        b = (u >= q_minus) & (u < q_minus + q_plus)
        hits += paired_test([(a, b)], seed=i, **FAST).p_value < 0.05
    assert 0.6 <= hits / sims <= 0.8 + 3 * math.sqrt(0.8 * 0.2 / sims)


def test_without_an_effect_p_values_are_uniform_and_intervals_cover() -> None:
    rng, sims = np.random.default_rng(3), 300
    p_values, covered = [], 0
    for i in range(sims):
        r = episode_test(rng.normal(0.3, 1.0, 12), reference=0.3, seed=i, **FAST)
        p_values.append(r.p_value)
        covered += r.lo <= 0.3 <= r.hi
    assert sps.kstest(p_values, "uniform").pvalue > 0.01
    assert _within(covered / sims, 0.95, sims)


def test_boolean_families_keep_their_level_and_coverage() -> None:
    # four configuration pairs of equal success rates on the same 10 episodes: no effect
    rng, sims = np.random.default_rng(4), 300
    rejected = covered = 0
    for i in range(sims):
        skill = rng.random(10)  # episodes differ in difficulty: outcomes correlate across pairs
        a = rng.random((4, 10)) < 0.3 + 0.5 * skill
        b = rng.random((4, 10)) < 0.3 + 0.5 * skill
        r = paired_test(list(zip(a, b, strict=True)), seed=i, **FAST)
        rejected += r.p_value < 0.05
        covered += r.lo <= 0 <= r.hi
    assert rejected / sims <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / sims)
    assert covered / sims >= 0.95 - 3 * math.sqrt(0.05 * 0.95 / sims)


def test_pooling_pairs_is_not_more_evidence_than_the_episodes_give() -> None:
    # the same pair repeated 32 times carries the information of one pair
    a, b = np.array([0, 0, 0, 1, 1, 0, 0, 1, 0, 0], bool), np.array([1, 1, 0, 1, 1, 1, 0, 1, 0, 0],
                                                                 bool)
    one, many = paired_test([(a, b)]), paired_test([(a, b)] * 32)
    assert math.isclose(one.p_value, many.p_value) and (one.lo, one.hi) == (many.lo, many.hi)
    assert many.pairs == 32 and many.n == 10
    # what the old verdicts did: McNemar on the 320 pooled episode pairs
    pooled = mcnemar_exact(np.tile(a, 32), np.tile(b, 32))
    assert pooled < 1e-6 < one.p_value


def test_degenerate_outcomes_get_a_conservative_interval_and_mde() -> None:
    same = np.ones(10, bool)
    r = paired_test([(same, same)])
    rate = 1 - 0.025 ** (1 / 10)  # Clopper-Pearson bound for 0 discordant of 10
    assert r.p_value == 1.0 and r.estimate == 0
    assert math.isclose(r.lo, -rate) and math.isclose(r.hi, rate)
    assert r.sd_source.startswith("conservative")
    assert math.isclose(r.mde, minimum_detectable_effect(math.sqrt(rate), 10))
    flipped = paired_test([(same, ~same)])
    assert flipped.estimate == -1 and flipped.lo == -1 and flipped.p_value == 2 / 2**10
    floats = episode_test(np.full(5, 2.0))
    assert (floats.lo, floats.hi) == (2.0, 2.0) and math.isnan(floats.mde)


def test_proportion_test_mde_is_the_exact_binomial_power() -> None:
    r = proportion_test(9, 10, 0.94)
    assert np.allclose((r.lo, r.hi), wilson_interval(9, 10))
    assert math.isclose(r.p_value, sps.binomtest(9, 10, 0.94).pvalue)
    rejects = [k for k in range(11) if sps.binomtest(k, 10, 0.94).pvalue < 0.05]
    at_mde = sps.binom.pmf(rejects, 10, 0.94 - r.mde).sum()
    just_below = sps.binom.pmf(rejects, 10, 0.94 - r.mde + 0.002).sum()
    assert at_mde >= 0.8 > just_below


# ------------------------------------------------------------------------------ verdicts
def _result(values, **kw):
    return episode_test(np.asarray(values, float), **kw)


def test_verdicts_are_three_way_and_need_evidence() -> None:
    rng = np.random.default_rng(5)
    for kind in CLAIM_KINDS:
        null = {"equal": 0.1, "at_most": 0.2}.get(kind, 0.0)
        v = judge(_result([0.4, -0.1, 0.3], reference=null), Claim(kind, threshold=0.2),
                  reference=0.1)
        assert v.word == "cannot tell", kind
        assert v.text.startswith("cannot tell at n = 3: the smallest effect this run could "
                                 "detect is")
    big = _result(rng.normal(0.5, 0.3, 50))
    assert judge(big, Claim("increase")).word == "agrees"
    assert judge(big, Claim("decrease")).word == "disagrees"
    assert judge(big, Claim("no_increase")).word == "disagrees"
    above = episode_test(rng.normal(0.5, 0.3, 50), reference=0.2)
    assert judge(above, Claim("at_most", threshold=0.2)).word == "disagrees"
    null_values = rng.normal(0.0, 0.1, 200)
    null = _result(null_values)
    assert judge(null, Claim("no_increase")).word == "agrees"
    assert judge(null, Claim("increase")).word == "disagrees"
    assert judge(null, Claim("equal"), reference=0.0).word == "agrees"
    off = episode_test(null_values, reference=0.5)
    assert judge(off, Claim("equal"), reference=0.5).word == "disagrees"
    with pytest.raises(ValueError, match="tested against 0.5"):
        judge(null, Claim("equal"), reference=0.5)  # its p tests 0, not the reference
    assert judge(off, Claim("equal")).word == "cannot tell"  # no reference given
    # a weak FP32 baseline keeps only verdicts that rest on a significant effect
    assert judge(null, Claim("no_increase"), baseline_ok=False).word == "cannot tell"
    assert judge(big, Claim("increase"), baseline_ok=False).word == "agrees"


def test_a_non_significant_p_is_never_agreement() -> None:
    wide = _result([0.5, -0.4, 0.6, -0.3, 0.2, 0.1, -0.5, 0.4, 0.0, -0.2])
    assert wide.p_value > 0.05
    assert judge(wide, Claim("no_increase")).word == "cannot tell"
    assert judge(wide, Claim("equal"), reference=0.0).word == "cannot tell"


def test_bad_input_is_refused_with_one_line() -> None:
    cases = [
        (lambda: paired_test([]), "no configuration pairs"),
        (lambda: paired_test([(np.ones(3), np.ones(4))]), "same units"),
        (lambda: paired_differences([(np.ones(3), np.ones(3)), (np.ones(4), np.ones(4))]),
         "same units"),
        (lambda: episode_test([1.0]), ">= 2 units"),
        (lambda: episode_test([1.0, np.nan]), "finite"),
        (lambda: episode_test([1.0, 2.0], confidence=95), "confidence"),
        (lambda: Claim("bigger"), "unknown claim kind"),
        (lambda: proportion_test(3, 10, 1.5), "reference"),
        (lambda: minimum_detectable_effect(-1, 10), "sd"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message) as info:
            call()
        assert "\n" not in str(info.value)


# ------------------------------------------------------------- the declared insight tests
def test_insight_tests_are_declared_for_every_insight() -> None:
    names = [t.name for t in INSIGHT_TESTS]
    assert len(set(names)) == len(names)
    assert {"FP32", "I-W4", "I-W3-collapse", "II", "III"} <= set(names)
    for t in INSIGHT_TESTS:
        assert set(t.envs) <= {"wall", "pusht"} and t.paper
        assert isinstance(t.family, Pairs | Configs)
    with pytest.raises(AttributeError):
        INSIGHT_TESTS[0].name = "x"  # frozen


def _row(key, method, **cfg):
    base = {"w_bits": np.nan, "a_bits": np.nan, "group": np.nan, "act_granularity": np.nan,
            "enc_w": np.nan, "enc_a": np.nan, "pred_w": np.nan, "pred_a": np.nan}
    return {**base, **cfg, "key": key, "method": method}


def _frame(rows: list[dict], env: str = "wall", paper: dict | None = None) -> pd.DataFrame:
    out = []
    for r in rows:
        for k, success in ((0, 0.5), (5, 0.9)):
            out.append({**r, "env": env, "table": 7, "iters": k, "n": 10, "successes": 9,
                        "success": success, "paper": (paper or {}).get(r["key"], 0.5)})
    return pd.DataFrame(out)


def test_families_find_the_declared_pairs() -> None:
    rows = [_row("fp", "FP32", enc_w=32, enc_a=32, pred_w=32, pred_a=32),
            _row("e4", "RTN", enc_w=4, enc_a=4, pred_w=8, pred_a=8),
            _row("p4", "RTN", enc_w=8, enc_a=8, pred_w=4, pred_a=4),
            _row("e6", "RTN", enc_w=6, enc_a=8, pred_w=8, pred_a=8),
            _row("p6", "RTN", enc_w=8, enc_a=8, pred_w=6, pred_a=8),
            _row("s6", "SmoothQuant", enc_w=6, enc_a=8, pred_w=8, pred_a=8),  # no twin
            _row("b8", "RTN", enc_w=8, enc_a=8, pred_w=8, pred_a=8)]
    frame = _frame(rows)
    iii = next(t for t in INSIGHT_TESTS if t.name == "III")
    assert analysis.family_pairs(frame, iii.family) == [("p4", "e4"), ("p6", "e6")]
    fp = next(t for t in INSIGHT_TESTS if t.name == "FP32")
    assert analysis.family_configs(frame, fp.family) == ["fp"]
    with pytest.raises(ValueError, match="unknown column"):
        analysis.family_pairs(frame, Pairs("bits", 4, 8, (("colour", 1),)))


def _store(tmp_path, outcomes: dict[str, list[int | None]], ids=None) -> ResultStore:
    (tmp_path / "wall").mkdir(parents=True, exist_ok=True)
    for key, first in outcomes.items():
        ep_ids = (ids or {}).get(key, [f"ep{i}" for i in range(len(first))])
        rec = {"key": key, "experiment": Experiment("wall", episodes=len(first)).to_dict(),
               "episodes": {"ids": ep_ids, "first_success_round": first}}
        (tmp_path / "wall" / f"{key}.json").write_text(json.dumps(rec))
    return ResultStore(tmp_path, check_checkpoints=False)


def test_insight_table_and_verdicts_on_a_synthetic_store(tmp_path) -> None:
    n = 40
    rows = [_row("wall-fp", "FP32", enc_w=32, enc_a=32, pred_w=32, pred_a=32)]
    outcomes = {"wall-fp": [0] * n}
    for m in ("RTN", "OMSE"):  # encoder-reduced fails on every episode, predictor-reduced not
        rows += [_row(f"wall-{m}-e", m, enc_w=4, enc_a=4, pred_w=8, pred_a=8),
                 _row(f"wall-{m}-p", m, enc_w=8, enc_a=8, pred_w=4, pred_a=4)]
        outcomes |= {f"wall-{m}-e": [None] * n, f"wall-{m}-p": [3] * (n - 4) + [None] * 4}
    frame = _frame(rows, paper={"wall-fp": 0.94})
    store = _store(tmp_path, outcomes)
    table = analysis.insight_table(frame, store, n_resamples=1999)
    assert list(table["test"]) == ["FP32", "III"]
    iii = table.set_index("test").loc["III"]
    assert iii["count"] == 2 and iii["n"] == n and iii["iters"] == 5
    assert math.isclose(iii["diff"], -(n - 4) / n) and iii["hi"] < 0 and iii["p"] < 0.01
    assert iii["verdict"] == "agrees" and iii["mde"] > 0
    fp = table.set_index("test").loc["FP32"]
    assert fp["diff"] == 1.0 and fp["paper"] == 0.94
    text = analysis.verdict_insight3(frame, store, "synthetic")
    assert "**agrees**" in text and "2 pairs" in text and f"n = {n} episodes" in text
    assert "MDE" in text and "p = " in text
    bad = _store(tmp_path, {"wall-RTN-e": [None] * n}, ids={"wall-RTN-e": ["x"] * n})
    with pytest.raises(ValueError, match="ids differ"):
        analysis.insight_table(frame, bad)


def test_latent_error_is_compared_over_the_same_segments() -> None:
    rng = np.random.default_rng(6)
    segments = [f"s{i}" for i in range(48)]
    base = rng.gamma(2.0, 0.01, (48, 5))

    def record(key, mse, segs=segments):
        return {"key": key, "latent_error": {"segments": segs, "steps": [1, 2, 3, 4, 5],
                                             "mse": mse.tolist()}}

    fp, q = record("fp", base), record("q", base * 1.5 + rng.normal(0, 1e-3, (48, 5)))
    r1 = analysis.latent_error_test(q, fp, step=1, n_resamples=1999)
    assert r1.n == 48 and r1.lo > 0 and r1.p_value < 0.01
    r5 = analysis.latent_error_test(q, fp, step=5, log=True, n_resamples=1999)
    assert abs(r5.estimate - math.log(1.5)) < 0.05
    with pytest.raises(ValueError, match="different segments"):
        analysis.latent_error_test(record("q", base, segments[::-1]), fp)
    with pytest.raises(ValueError, match="step must be one of"):
        analysis.latent_error_test(q, fp, step=7)
    with pytest.raises(ValueError, match="no latent_error"):
        analysis.latent_error_test({"key": "old"}, fp)


def test_mde_is_defined_from_two_units() -> None:
    from quantwm.study.stats import minimum_detectable_effect

    two, three = minimum_detectable_effect(1.0, 2), minimum_detectable_effect(1.0, 3)
    assert math.isfinite(two) and two > three > 0
