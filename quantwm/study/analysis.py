"""The computations behind the numbered notebooks: result frames, outliers, loss alignment,
rollouts and the per-insight verdicts.

Everything here is a plain function of the result store, a model or calibration data, so the
notebooks only choose parameters, call these functions and show what they return.

    from quantwm.study.analysis import ensure_results, study_frame
    records = ensure_results(experiments, store, device="cpu")
    frame = study_frame(table=1, experiments=experiments, store=store)
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from quantwm.study.grid import (
    FLOAT,
    TABLE_ENV,
    Experiment,
    config_columns,
    experiment_from_row,
    paper_configs,
    paper_tables,
)
from quantwm.study.stats import (
    INSIGHT_TESTS,
    Configs,
    EpisodeTest,
    InsightTest,
    Pairs,
    episode_test,
    judge,
    paired_test,
    proportion_test,
    wilson_interval,
)
from quantwm.study.store import ResultStore
from quantwm.study.tables import success_matrix

PAPER_EPISODES = 50
CONFIG_KEYS = ["method", "w_bits", "a_bits", "group", "act_granularity",
               "enc_w", "enc_a", "pred_w", "pred_a"]


# ------------------------------------------------------------------------------ the store
def ensure_results(experiments: Sequence[Experiment], store: ResultStore,
                   device: torch.device | str = "cpu", cache_dir: str | Path | None = None,
                   progress: bool = True, run: bool = True) -> dict[str, dict[str, Any]]:
    """Run the experiments missing from ``store`` (only those), then return every record by key.

    ``run=False`` (the focused profiles, hours of background work for ``quantwm sweep``): run
    nothing, say what is missing and return the stored records only."""
    from quantwm.study.runner import CACHE_DIR, run_sweep

    todo = store.missing(list(experiments))
    if todo and not run:
        if progress:
            from quantwm.study.profiles import profile_of

            name = profile_of(todo[0]) or "NAME"
            print(f"{len(todo)} of {len(set(experiments))} experiment(s) not stored yet: shown "
                  f"without them; `quantwm sweep --profile {name} --workers 2` runs them (in "
                  "the background, resumably)")
        return {e.key(): store.read(e) for e in experiments if store.has(e)}
    if todo and progress:
        print(f"running {len(todo)} missing experiment(s) of {len(set(experiments))}")
    for i, exp in enumerate(todo):
        run_sweep([exp], store, device, cache_dir=cache_dir or CACHE_DIR)
        if progress:
            print(f"  [{i + 1}/{len(todo)}] {exp.key()}", flush=True)
    return {e.key(): store.read(e) for e in experiments}


def row_label(row: pd.Series | dict[str, Any]) -> str:
    """The paper's row description: ``RTN W4A32 G128``, ``SmoothQuant E:W4A8 P:W8A8``..."""
    if row["method"] == "FP32":
        return "FP32"
    if pd.notna(row["enc_w"]):
        text = (f"{row['method']} E:W{row['enc_w']}A{row['enc_a']} "
                f"P:W{row['pred_w']}A{row['pred_a']}")
    else:
        text = f"{row['method']} W{row['w_bits']}A{row['a_bits']}"
    text += f" G{row['group']}" if pd.notna(row["group"]) else " G-"
    a_bits = row["a_bits"] if pd.notna(row["a_bits"]) else min(row["enc_a"], row["pred_a"])
    if a_bits < FLOAT and isinstance(row["act_granularity"], str):
        text += f" {row['act_granularity']}"
    return text


def paper_success(table: int) -> pd.DataFrame:
    """The paper's success rates of a table: one row per configuration (paper order), iters cols."""
    df = paper_tables()
    df = df[df["table"] == table].copy()
    df["row"] = df.groupby(CONFIG_KEYS, sort=False, dropna=False).ngroup()
    wide = df.pivot_table(index="row", columns="iters", values="success", aggfunc="first")
    return wide.sort_index()


def study_frame(table: int, experiments: Sequence[Experiment], store: ResultStore,
                variant: str = "paper") -> pd.DataFrame:
    """Tidy rows (configuration x iters) of one paper table: the kit's rate with its Wilson
    interval beside the paper's rate, for the experiments that are in the store.

    Each experiment is matched to the paper's row of the same configuration (``row`` is its
    number, in the paper's order); one the paper does not have (a width-scaled group) gets a
    row after the paper's, its own label and no paper rate. Columns: table, env, row, label,
    the paper's config keys, key, iters, n, successes, success, lo, hi, paper.
    """
    configs = paper_configs(table)
    paper = paper_success(table)
    rows_of = {}  # configuration -> the paper's row
    for i, (_, cfg) in enumerate(configs.iterrows()):
        rows_of.setdefault(_configuration(experiment_from_row(cfg, variant)), i)
    extra = iter(range(len(configs), len(configs) + len(experiments)))
    rows = []
    for exp in experiments:
        if not store.has(exp):
            continue
        rec = store.read(exp)
        i = rows_of.get(_configuration(exp))
        if i is None:  # not one of the paper's rows
            i, cfg, ref = next(extra), config_columns(exp), {}
            label = row_label({c: int(v) if isinstance(v, float) and v.is_integer() else v
                               for c, v in cfg.items()})
        else:
            cfg, ref = configs.iloc[i], paper.loc[i]
            label = row_label(cfg)
        iters = [int(k) for k in rec["success"]]
        mat = success_matrix(rec["episodes"]["first_success_round"], iters)
        for j, k in enumerate(iters):
            s, n = int(mat[:, j].sum()), mat.shape[0]
            lo, hi = wilson_interval(s, n)
            rows.append({"table": table, "env": TABLE_ENV[table], "row": i, "label": label,
                         **{c: cfg[c] for c in CONFIG_KEYS}, "variant": variant,
                         "key": exp.key(), "iters": k, "n": n, "successes": s,
                         "success": s / n, "lo": lo, "hi": hi, "paper": ref.get(k, np.nan)})
    frame = pd.DataFrame(rows)
    if not frame.empty:  # NaN = "not applicable" (no group, bits set per part, ...)
        num = ["w_bits", "a_bits", "group", "enc_w", "enc_a", "pred_w", "pred_a"]
        frame[num] = frame[num].map(lambda v: np.nan if pd.isna(v) else float(v))
    return frame


def _configuration(exp: Experiment) -> tuple[Any, ...]:
    """What makes an experiment one table row: everything but how it was run."""
    return (exp.env, exp.method, tuple(exp.encoder), tuple(exp.predictor), exp.group,
            exp.act_granularity)


def episode_outcomes(store: ResultStore, key: str, iters: int) -> np.ndarray:
    """(episodes,) bool: success within rounds 0..iters of the stored experiment ``key``."""
    rec = store.read_key(key)
    return success_matrix(rec["episodes"]["first_success_round"], [iters])[:, 0]


def table_rows(experiments: Sequence[Experiment], store: ResultStore) -> list[dict[str, Any]]:
    """``paper_style_table`` rows (label, first_success_round) of the stored experiments."""
    out = []
    for exp in experiments:
        if store.has(exp):
            rec = store.read(exp)
            out.append({"label": rec["label"], "key": rec["key"],
                        "first_success_round": rec["episodes"]["first_success_round"]})
    return out


# ------------------------------------------------------------- families and paired tests
def _is(series: pd.Series, value: Any) -> pd.Series:
    return series.isna() if value is None else series == value


def configurations(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration (key and paper representation) of a :func:`study_frame`, with
    the derived columns the insight families use: ``reduced`` ("encoder" / "predictor" when
    only that part has fewer bits, "same" when both parts have the same bits, NaN outside
    Tables 7-8) and ``low_w`` / ``low_a``, the fewer bits of the two parts."""
    cfg = frame.drop_duplicates(["key", *CONFIG_KEYS]).copy()
    if cfg.empty:
        return cfg.assign(reduced=pd.Series(dtype=object), low_w=pd.Series(dtype=float),
                          low_a=pd.Series(dtype=float))
    enc = cfg[["enc_w", "enc_a"]].to_numpy(float)
    pred = cfg[["pred_w", "pred_a"]].to_numpy(float)
    split = ~np.isnan(enc).any(axis=1) & ~np.isnan(pred).any(axis=1)
    enc_low = (enc <= pred).all(axis=1) & (enc < pred).any(axis=1)
    pred_low = (pred <= enc).all(axis=1) & (pred < enc).any(axis=1)
    same = (enc == pred).all(axis=1)
    reduced = np.select([enc_low, pred_low, same], ["encoder", "predictor", "same"], "mixed")
    cfg["reduced"] = np.where(split, reduced, None)
    low = np.minimum(enc, pred)
    cfg["low_w"] = np.where(split, low[:, 0], np.nan)
    cfg["low_a"] = np.where(split, low[:, 1], np.nan)
    return cfg


def _where(cfg: pd.DataFrame, where: Iterable[tuple[str, Any]]) -> pd.DataFrame:
    for col, value in where:
        if col not in cfg.columns:
            raise ValueError(f"unknown column {col!r} in a family; expected one of "
                             f"{[*CONFIG_KEYS, 'reduced', 'low_w', 'low_a']}")
        cfg = cfg[_is(cfg[col], value)]
    return cfg


def family_pairs(frame: pd.DataFrame, family: Pairs) -> list[tuple[str, str]]:
    """Keys ``(key_a, key_b)`` of the configuration pairs of ``family`` in a study frame."""
    cfg = _where(configurations(frame), family.where)
    if cfg.empty:
        return []
    match_on = list(family.match_on or [c for c in CONFIG_KEYS if c != family.column])
    cfg = cfg.assign(sig=cfg[match_on].map(str).agg("|".join, axis=1))
    left, right = cfg[_is(cfg[family.column], family.a)], cfg[_is(cfg[family.column], family.b)]
    merged = left.merge(right, on="sig", suffixes=("_a", "_b"))
    pairs = zip(merged["key_a"], merged["key_b"], strict=True)
    return list(dict.fromkeys((a, b) for a, b in pairs if a != b))


def family_configs(frame: pd.DataFrame, family: Configs) -> list[str]:
    """Keys of the configurations of ``family`` in a study frame."""
    return list(dict.fromkeys(_where(configurations(frame), family.where)["key"]))


def match_pairs(frame: pd.DataFrame, column: str, a: Any, b: Any,
                where: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """Keys ``(key_a, key_b)`` of configurations that differ only in ``column`` (a -> b).

    ``frame`` is a :func:`study_frame`; ``None`` stands for "not applicable" (NaN), e.g. the
    per-channel ``group``. ``where`` keeps only configurations with these column values.
    """
    return family_pairs(frame, Pairs(column, a, b, tuple((where or {}).items())))


def _paper_at(frame: pd.DataFrame, iters: int) -> pd.Series:
    """The paper's rate per configuration key at ``iters`` (first table that has the key)."""
    return frame[frame["iters"] == iters].drop_duplicates("key").set_index("key")["paper"]


def paper_diff(frame: pd.DataFrame, pairs: Sequence[tuple[str, str]], iters: int) -> float:
    """The paper's mean success difference (b - a) over the same configuration pairs."""
    if not pairs:
        return float("nan")
    at = _paper_at(frame, iters)
    return float(np.mean([at.get(b, np.nan) - at.get(a, np.nan) for a, b in pairs]))


def _episodes(store: ResultStore, key: str) -> tuple[list[str], list[int | None]]:
    ep = store.read_key(key)["episodes"]
    return list(ep["ids"]), list(ep["first_success_round"])


def family_outcomes(store: ResultStore, keys: Sequence[str], iters: int) -> dict[str, np.ndarray]:
    """Per key, ``(episodes,)`` bool success within ``iters``; every key must have been run on
    the same episodes in the same order (``ValueError`` naming the first that was not)."""
    out, ids0 = {}, None
    for key in keys:
        ids, first = _episodes(store, key)
        if ids0 is None:
            ids0, key0 = ids, key
        elif ids != ids0:
            raise ValueError(f"{key!r} was not run on the episodes of {key0!r} (ids differ); "
                             f"paired tests need the same episodes in the same order")
        out[key] = success_matrix(first, [iters])[:, 0]
    return out


# ------------------------------------------------------------------------------ verdicts
def baseline_caveat(sub: pd.DataFrame, iters: int, floor: float = 0.5) -> str | None:
    """A warning line when the FP32 row of ``sub`` (one env) plans too poorly to judge by.

    A quantized model cannot lose more success than FP32 has, and a handful of episodes cannot
    resolve small differences; the verdicts then say so instead of reading "within noise" as
    "quantization is harmless".
    """
    fp = sub[(sub["method"] == "FP32") & (sub["iters"] == iters)]
    if fp.empty:
        return None
    row = fp.iloc[0]
    if row["success"] >= floor:
        return None
    paper = "" if pd.isna(row["paper"]) else f" (the paper's DINO-WM: {row['paper']:.2f})"
    return (f"  - caveat: FP32 itself succeeds in {row['successes']} of {row['n']} episodes "
            f"within {iters} iters here{paper}, so a quantized model has at most "
            f"{row['success']:.2f} to lose: at this baseline and size, only a significant "
            f"effect is judged; otherwise the study cannot tell.")


def _test_iters(test: InsightTest, sub: pd.DataFrame) -> list[int]:
    have = sorted(int(k) for k in sub["iters"].unique())
    if test.iters is None:
        return have[-1:]
    return [k for k in test.iters if k in have]


def insight_result(test: InsightTest, frame: pd.DataFrame, store: ResultStore, env: str,
                   iters: int, **options: Any) -> dict[str, Any] | None:
    """One row of :func:`insight_table`: ``test`` on ``env``'s rows of ``frame`` at ``iters``
    (None when the frame holds none of the test's configurations). ``options`` go to
    :func:`quantwm.study.stats.episode_test` (n_resamples, seed, ...)."""
    sub = frame[frame["env"] == env]
    if isinstance(test.family, Pairs):
        pairs = family_pairs(sub, test.family)
        if not pairs:
            return None
        keys = list(dict.fromkeys(k for pair in pairs for k in pair))
        out = family_outcomes(store, keys, iters)
        result = paired_test([(out[a], out[b]) for a, b in pairs], **options)
        paper, count, unit = paper_diff(sub, pairs, iters), len(pairs), "pairs"
        reference = None
    else:
        keys = family_configs(sub, test.family)
        if not keys:
            return None
        out = family_outcomes(store, keys, iters)
        at = _paper_at(sub, iters)
        values = [at.get(k, np.nan) for k in keys]  # rows outside the paper's tables: NaN
        paper = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
        count, unit = len(keys), "configurations"
        if test.claim.kind == "equal":
            if np.isnan(paper):
                return None  # nothing to compare with at these iters
            reference = paper
        else:
            reference = test.claim.threshold
        if len(keys) == 1:
            x = out[keys[0]]
            result = proportion_test(int(x.sum()), x.size, reference)
        else:
            level = np.mean([out[k] for k in keys], axis=0)
            result = episode_test(level, reference=reference, pairs=1, bounds=(0.0, 1.0),
                                  **options)
    caveat = baseline_caveat(sub, iters)
    verdict = judge(result, test.claim, reference=reference, baseline_ok=caveat is None)
    return {"env": env, "test": test.name, "insight": test.insight, "claim": test.paper,
            "family": test.family.describe(), "unit": unit, "count": count, "iters": iters,
            "diff": result.estimate, "lo": result.lo, "hi": result.hi, "p": result.p_value,
            "n": result.n, "mde": result.mde, "sd_source": result.sd_source, "paper": paper,
            "verdict": verdict.word, "reason": verdict.reason, "caveat": caveat,
            "method": result.method}


def insight_table(frame: pd.DataFrame, store: ResultStore,
                  tests: Sequence[InsightTest] = INSIGHT_TESTS, **options: Any) -> pd.DataFrame:
    """Every declared insight test on every env of ``frame`` it applies to: one row per
    (test, env, judged iters) with env, test, insight, claim, family, count (configuration
    pairs, or configurations for a level), iters, diff (the per-episode mean difference B - A,
    or the mean success for a level) with its 95 % interval lo/hi, p, n episodes, mde, the
    paper's value on the same rows, and the three-way verdict with its reason.

    ``frame`` may hold any tables (concatenated :func:`study_frame` s); tests whose
    configurations are absent give no row.
    """
    rows = []
    if not frame.empty:
        for test in tests:
            for env, sub in frame.groupby("env", sort=False):
                if env not in test.envs:
                    continue
                for k in _test_iters(test, sub):
                    row = insight_result(test, sub, store, env, k, **options)
                    if row is not None:
                        rows.append(row)
    columns = ["env", "test", "insight", "claim", "family", "unit", "count", "iters", "diff",
               "lo", "hi", "p", "n", "mde", "sd_source", "paper", "verdict", "reason", "caveat",
               "method"]
    return pd.DataFrame(rows, columns=columns)


def _fmt_mde(mde: float) -> str:
    return "none (no spread)" if np.isnan(mde) else f"{mde:.2f}"


def _kit_says(word: str, reason: str) -> str:
    """``**agrees**: the interval ...`` / ``**cannot tell** whether it agrees at n = 10: ...``."""
    if word == "cannot tell":
        sep = " " if reason.startswith("at n =") else ": "
        return f"**cannot tell** whether it agrees{sep}{reason}"
    return f"**{word}**: {reason}"


def _verdict_line(row: pd.Series | dict[str, Any], level: bool) -> list[str]:
    """Markdown lines for one :func:`insight_table` row (``level``: a success level, not a
    difference)."""
    f = ".2f" if level else "+.2f"
    what = "per-episode mean success" if level else "per-episode mean difference"
    paper = "not reported" if pd.isna(row["paper"]) else format(row["paper"], f)
    lines = [f"- *{row['env']}*, test {row['test']}: {row['family']}, {row['count']} "
             f"{row['unit']}, within {row['iters']} iters: {what} {row['diff']:{f}} "
             f"[{row['lo']:{f}}, {row['hi']:{f}}], p = {row['p']:.2g}, n = {row['n']} "
             f"episodes, MDE {_fmt_mde(row['mde'])}; the paper's same rows: {paper}."]
    if row["caveat"]:
        lines.append(row["caveat"])
    lines.append(f"  - The paper: {row['claim']}. The kit "
                 f"{_kit_says(row['verdict'], row['reason'])}.")
    return lines


def _insight_markdown(frame: pd.DataFrame, store: ResultStore, profile: str, insight: str,
                      title: str, missing: str) -> str:
    lines = [f"**{title}, from the `{profile}` profile.** Episode-level tests declared in "
             f"`quantwm.study.stats.INSIGHT_TESTS`: per episode, the difference B - A averaged "
             f"over the family's configuration pairs; 95 % bootstrap interval over episodes, "
             f"sign-flip permutation p, MDE at 80 % power.", ""]
    if frame.empty:
        return "\n".join(lines + ["No results yet."])
    tests = [t for t in INSIGHT_TESTS if t.insight == insight]
    table = insight_table(frame, store, tests)
    for test in tests:
        rows = table[table["test"] == test.name]
        level = isinstance(test.family, Configs)
        for env in [e for e in frame["env"].unique() if e in test.envs]:
            env_rows = rows[rows["env"] == env]
            if env_rows.empty:
                lines.append(f"- *{env}*, test {test.name}: {test.family.describe()}: no pair "
                             f"in this profile.")
            for _, row in env_rows.iterrows():
                lines += _verdict_line(row, level)
    if table.empty:
        lines += ["", missing]
    return "\n".join(lines)


def verdict_insight1(frame: pd.DataFrame, store: ResultStore, profile: str) -> str:
    """Insight I: group-wise (G128) weights help at W4; at W3 both collapse (Tables 1-2)."""
    return _insight_markdown(frame, store, profile, "I", "Insight I (group-wise weights)",
                             "This profile holds no W4/W3 pairs: run the `quick` or `full` "
                             "profile.")


def verdict_insight2(frame: pd.DataFrame, store: ResultStore, profile: str) -> str:
    """Insight II: per-token activations give no consistent gain over per-tensor (Tables 3-6)."""
    return _insight_markdown(frame, store, profile, "II",
                             "Insight II (per-token vs per-tensor activations)",
                             "This profile holds no per-token/per-tensor pair: run `quick` or "
                             "`full`.")


def verdict_insight3(frame: pd.DataFrame, store: ResultStore, profile: str) -> str:
    """Insight III: the encoder is more sensitive than the predictor (Tables 7-8)."""
    return _insight_markdown(frame, store, profile, "III",
                             "Insight III (encoder vs predictor sensitivity)",
                             "This profile holds no encoder/predictor pair: run `quick` or "
                             "`full`.")


def verdict_fp32(success: dict[str, dict[str, float]], n: dict[str, int], profile: str) -> str:
    """The FP32 baseline against the paper's FP32 rows (Tables 1 and 2): per env and iters, the
    kit's rate with its Wilson interval, an exact binomial test against the paper's rate, the
    MDE, and the three-way verdict of the declared ``FP32`` test."""
    test = next(t for t in INSIGHT_TESTS if t.name == "FP32")
    paper = paper_tables()
    lines = [f"**FP32 baseline, from the `{profile}` profile.**", ""]
    for env, rates in success.items():
        ref = paper[(paper["method"] == "FP32") & (paper["env"].str.lower() == env)]
        ref = ref.drop_duplicates("iters").set_index("iters")["success"]
        for k, rate in rates.items():
            if int(k) not in ref.index:
                continue
            r = proportion_test(round(rate * n[env]), n[env], float(ref[int(k)]))
            v = judge(r, test.claim, reference=float(ref[int(k)]))
            lines.append(f"- *{env}*, {k} iters: kit {rate:.2f} [{r.lo:.2f}, {r.hi:.2f}] "
                         f"(Wilson 95 %, n = {n[env]}) vs paper {ref[int(k)]:.2f}: exact "
                         f"binomial p = {r.p_value:.2g}, MDE {_fmt_mde(r.mde)}. Against "
                         f"'{test.paper}' (within {test.claim.margin:.2f}), the kit "
                         f"{_kit_says(v.word, v.reason)}.")
    return "\n".join(lines)


def latent_error_test(record: dict[str, Any], reference: dict[str, Any], step: int = 1,
                      log: bool = False, **options: Any) -> EpisodeTest:
    """Paired test of a configuration's open-loop latent prediction error against another's
    (FP32, typically) at ``step`` (1..5), over the same validation segments.

    Uses ``record["latent_error"] = {"segments": [...], "steps": [...], "mse": [[...], ...]}``;
    the unit is the segment. The statistic is the mean over segments of ``mse_config -
    mse_reference`` (``log``: of ``log(mse_config / mse_reference)``, a ratio, for errors
    that differ by orders of magnitude). ``options`` go to
    :func:`quantwm.study.stats.episode_test`.
    """
    from quantwm.study.latent import step_errors

    a, b = step_errors(record, reference, step)
    if log:
        if (a <= 0).any() or (b <= 0).any():
            raise ValueError("log=True needs positive latent errors")
        a, b = np.log(a), np.log(b)
    return paired_test([(a, b)], **options)


# ------------------------------------------------------------------------------ outliers
LINEAR_INPUTS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


@torch.no_grad()
def channel_absmax(model: torch.nn.Module, calibration: dict[str, list[torch.Tensor]],
                   parts: Sequence[str] = ("encoder", "predictor"), max_inputs: int | None = 8
                   ) -> dict[str, torch.Tensor]:
    """Max |x| per input channel of every quantized Linear (qkv, proj, fc1, fc2) of each block.

    Keys are ``"<part>.<block>.<linear>"``; values are float tensors ``(in_features,)``.
    ``max_inputs`` caps the calibration tensors used per part (None = all).
    """
    from quantwm.quant import find_blocks
    from quantwm.quant.observers import collect_input_stats

    out: dict[str, torch.Tensor] = {}
    for part_name in parts:
        part = model.get_submodule(part_name)
        mods = {f"{part_name}.{b}.{lin}": blk.get_submodule(lin)
                for b, blk in find_blocks(part) for lin in LINEAR_INPUTS}
        inputs = calibration[part_name][:max_inputs]
        stats = collect_input_stats(part, mods, inputs)
        out.update({k: v.absmax.detach().float().cpu() for k, v in stats.items()})
    return out


@torch.no_grad()
def smoothed(model: torch.nn.Module, calibration: dict[str, list[torch.Tensor]],
             alpha: float = 0.5, parts: Sequence[str] = ("encoder", "predictor"),
             max_inputs: int | None = 8) -> torch.nn.Module:
    """A float copy of ``model`` with SmoothQuant's scales folded into each LayerNorm group.

    The copy computes the same function (up to float rounding); only the activation channels
    that feed ``attn.qkv`` and ``mlp.fc1`` are rescaled.
    """
    from quantwm.quant import DINO_WM_LAYOUT, find_blocks, fold_into_norm, smooth_scale

    model = copy.deepcopy(model)
    stats = channel_absmax(model, calibration, parts, max_inputs)
    for part_name in parts:
        for b, blk in find_blocks(model.get_submodule(part_name)):
            for g in DINO_WM_LAYOUT.groups:
                lins = [blk.get_submodule(p) for p in g.linears]
                absmax = stats[f"{part_name}.{b}.{g.linears[0]}"]
                s = smooth_scale(absmax.to(lins[0].weight), [m.weight for m in lins], alpha)
                fold_into_norm(blk.get_submodule(g.norm), lins, s)
    return model


def outlier_stats(absmax: dict[str, torch.Tensor]) -> pd.DataFrame:
    """Per layer: channels, max, median, max/median ("outlier ratio") and the top-1% share."""
    rows = []
    for name, a in absmax.items():
        a = a.double()
        part = name.split(".")[0]
        lin = next(x for x in LINEAR_INPUTS if name.endswith(x))
        block = name[len(part) + 1: -len(lin) - 1]
        k = max(1, int(round(0.01 * a.numel())))
        rows.append({"layer": name, "part": part, "block": block, "linear": lin,
                     "channels": a.numel(), "max": float(a.max()), "median": float(a.median()),
                     "ratio": float(a.max() / a.median().clamp_min(1e-12)),
                     "top1pct_share": float(a.topk(k).values.sum() / a.sum().clamp_min(1e-12))})
    return pd.DataFrame(rows)


def verdict_outliers(before: pd.DataFrame, after: pd.DataFrame, threshold: float = 5.0) -> str:
    """Fig. 1's claim: pronounced outliers in encoder and predictor that smoothing reduces."""
    lines = ["**Fig. 1 (activation outliers), on the shipped models' calibration data.**", ""]
    merged = before.merge(after[["layer", "ratio"]], on="layer", suffixes=("", "_smooth"))
    for part, sub in merged.groupby("part", sort=False):
        outl = int((sub["ratio"] >= threshold).sum())
        smoothable = sub[sub["linear"].isin(["attn.qkv", "mlp.fc1"])]
        reduced = int((smoothable["ratio_smooth"] < smoothable["ratio"]).sum())
        med_b, med_a = smoothable["ratio"].median(), smoothable["ratio_smooth"].median()
        has = outl >= len(sub) / 2
        helps = reduced >= len(smoothable) / 2
        lines.append(
            f"- *{part}*: {outl} of {len(sub)} Linear inputs have a max/median channel ratio "
            f">= {threshold:g} (largest {sub['ratio'].max():.1f}); the paper reports pronounced "
            f"outliers: the kit **{'agrees' if has else 'disagrees'}**. Smoothing lowers the "
            f"ratio of {reduced} of {len(smoothable)} LayerNorm-fed inputs (median "
            f"{med_b:.1f} -> {med_a:.1f}): **{'agrees' if helps else 'disagrees'}** with "
            f"'smoothing partially mitigates'.")
    return "\n".join(lines)


# ------------------------------------------------------------------------ loss alignment
def short_label(record: dict[str, Any]) -> str:
    """``FP32``, ``RTN W4A32 G-``, ``SmoothQuant E:W4A4 P:W8A8 G- per-token``."""
    e = record["experiment"]
    if e["method"] == "fp32":
        return "FP32"
    b = lambda x: f"W{min(x[0], FLOAT)}A{min(x[1], FLOAT)}"  # noqa: E731
    enc, pred = b(e["encoder"]), b(e["predictor"])
    text = record["label"].split()[0] + (f" {enc}" if enc == pred else f" E:{enc} P:{pred}")
    text += f" G{e['group']}" if e["group"] else " G-"
    if min(e["encoder"][1], e["predictor"][1]) < FLOAT:
        text += " " + e["act_granularity"].replace("_", "-")
    return text


def loss_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Tidy per (experiment, episode, round), over a **fixed population**: the reached latent
    objective (``latent_mse``: the planning objective of the observation the plan led to) and
    the true goal distance for every episode in every round (carried after an episode stopped,
    :mod:`quantwm.study.alignment`), CEM's predicted final loss (``plan_loss``, NaN for rounds
    not planned), whether the round was ``planned`` and whether the episode had succeeded."""
    from quantwm.study.alignment import Trajectories

    frames = []
    for rec in records:
        t = Trajectories.of(rec)
        n, rounds = t.objective.shape
        plan = np.array([[np.nan if v is None else float(v) for v in row]
                         for row in rec["episodes"]["final_loss_by_round"]], dtype=float)
        first = np.array([np.inf if f is None else f
                          for f in rec["episodes"]["first_success_round"]], dtype=float)
        r = np.arange(rounds)
        frames.append(pd.DataFrame({
            "key": rec["key"], "label": short_label(rec),
            "episode": np.repeat(np.arange(n), rounds),
            "round": np.tile(r, n), "latent_mse": t.objective.ravel(), "plan_loss": plan.ravel(),
            "goal_distance": t.distance.ravel(), "planned": np.isfinite(plan).ravel(),
            "success": (first[:, None] <= r[None, :]).ravel()}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["key", "label", "episode", "round", "latent_mse", "plan_loss", "goal_distance",
                 "planned", "success"])


def loss_alignment(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Per configuration, over its fixed population of episodes: the median per-episode
    ``objective_change`` (log of final / start objective; negative = it decreased), the
    ``alignment`` (Spearman of objective vs true distance over every (episode, round)), final
    ``success``, mean final objective ``loss_last`` and mean final ``goal_distance``."""
    from quantwm.study.alignment import Trajectories, summary

    rows = []
    for rec in records:
        t = Trajectories.of(rec)
        rows.append({**summary(rec), "label": short_label(rec),
                     "loss_last": float(t.objective[:, -1].mean()),
                     "goal_distance": float(t.distance[:, -1].mean())})
    cols = ["key", "label", "episodes", "rounds", "objective_change", "alignment", "success",
            "loss_last", "goal_distance"]
    return pd.DataFrame(rows, columns=cols)


def verdict_insight5(records: Sequence[dict[str, Any]], profile: str, env: str) -> str:
    """Insight V on a fixed population of episodes: for each aggressive configuration the
    paper names (Wall W3 and W4A4, PushT W4A8; RTN), paired against FP32 on the same episodes,
    the tests declared in :data:`quantwm.study.alignment.INSIGHT_V_TESTS`."""
    from quantwm.study.alignment import AGGRESSIVE, INSIGHT_V_TESTS, insight5_table

    lines = [f"**Insight V (planning objective under quantization), {env}, from the `{profile}` "
             f"profile.** Every episode counts in every round (an episode that succeeded keeps "
             f"the objective and distance it stopped with).", ""]
    table = insight5_table(list(records), env)
    if table.empty:
        return "\n".join(lines + [f"The kit **cannot tell**: no FP32 record beside the "
                                  f"aggressive configurations "
                                  f"({', '.join(AGGRESSIVE.get(env, ())) or 'none for ' + env})"
                                  f" in this profile: run them (notebook 05 does)."])
    claims = {t.name: t.paper for t in INSIGHT_V_TESTS}
    for conf, sub in table.groupby("configuration", sort=False):
        lines.append(f"- *{conf}* vs FP32, {int(sub['n'].iloc[0])} paired episodes:")
        for _, r in sub.iterrows():
            what = ("per-episode change of log objective, quantized minus FP32"
                    if r["statistic"] == "objective_change" else
                    "Spearman(objective, true distance), quantized minus FP32")
            lines.append(f"  - {claims[r['test']]}: {what} {r['estimate']:+.2f} "
                         f"[{r['lo']:+.2f}, {r['hi']:+.2f}], p = {r['p']:.2g}, detectable "
                         f"{_fmt_mde(r['mde'])}: the kit {_kit_says(r['verdict'], r['reason'])}.")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ rollouts
@dataclass
class Segment:
    """A ground-truth stretch of a validation trajectory, frameskip steps between frames."""

    env: str
    visual: torch.Tensor  # (1, T, 3, H, W) float in [0, 1]
    proprio: torch.Tensor  # (1, T, P) raw
    actions: torch.Tensor  # (1, T - 1, A) raw, action t taken at frame t


def ground_truth_segment(env: str, frames: int = 6, traj: int = 0, start: int = 0,
                         frameskip: int = 5, img_size: int = 64) -> Segment:
    """Frames ``start, start + frameskip, ...`` of validation trajectory ``traj`` and the actions
    between them (raw), rendered from the stored states."""
    from quantwm.data import load_trajectories
    from quantwm.envs import proprio_of, render_states

    trajs = load_trajectories(env, with_extensions=False)  # the validation split is the same
    i = int(trajs.indices("val")[traj])
    steps = start + frameskip * np.arange(frames)
    if steps[-1] > trajs.n_steps:
        raise ValueError(f"{frames} frames from step {start} exceed {trajs.n_steps} steps")
    states = trajs.states[i, steps]
    params = {k: float(v[i]) for k, v in trajs.params.items()}
    images = render_states(env, states, img_size=img_size, **params)
    acts = trajs.actions[i, start: start + frameskip * (frames - 1)]
    acts = acts.reshape(frames - 1, frameskip * acts.shape[-1])
    return Segment(env, torch.from_numpy(images).permute(0, 3, 1, 2).float()[None] / 255.0,
                   torch.from_numpy(proprio_of(env, states)).float()[None],
                   torch.from_numpy(np.ascontiguousarray(acts)).float()[None])


@torch.no_grad()
def open_loop_latents(model: torch.nn.Module, seg: Segment) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode every frame of ``seg`` and roll the predictor out open loop from the first
    ``num_hist`` with the true actions: ``z (1, T, N, D)`` and ``z_pred (1, T - num_hist, N, D)``
    (``z_pred[:, k]`` predicts ``z[:, num_hist + k]``)."""
    dev = next(model.parameters()).device
    vis, prop, act = seg.visual.to(dev), seg.proprio.to(dev), seg.actions.to(dev)
    z = model.encode(vis, prop)
    return z, model.rollout_window(z, model.normalize_action(act))


@torch.no_grad()
def open_loop(model: torch.nn.Module, seg: Segment) -> dict[str, torch.Tensor]:
    """Encode the history frames, roll the predictor out open loop with the true actions and
    decode. Returns ``truth``, ``recon`` (decode(encode(truth))) and ``pred`` (history frames
    reconstructed, then the predicted frames), each ``(T, 3, H, W)``."""
    h = model.config.num_hist
    z, z_pred = open_loop_latents(model, seg)
    recon = model.decode(z)
    pred = torch.cat([recon[:, :h], model.decode(z_pred)], dim=1)
    return {"truth": seg.visual[0], "recon": recon[0].cpu(), "pred": pred[0].cpu()}


def frame_errors(rollouts: dict[str, dict[str, torch.Tensor]]) -> pd.DataFrame:
    """Per configuration and frame: pixel MSE of the reconstruction and of the rollout vs truth."""
    rows = []
    for label, r in rollouts.items():
        for t in range(r["truth"].shape[0]):
            rows.append({"config": label, "frame": t,
                         "recon_mse": float(((r["recon"][t] - r["truth"][t]) ** 2).mean()),
                         "rollout_mse": float(((r["pred"][t] - r["truth"][t]) ** 2).mean())})
    return pd.DataFrame(rows)


def latent_error_table(records: Sequence[dict[str, Any]], env: str, steps: Sequence[int] = (1, 5),
                       **options: Any) -> pd.DataFrame:
    """Per stored configuration of ``env`` (beside its FP32 record): the mean over validation
    segments of ``log(latent error / FP32's)`` at each rollout step, with its 95 % interval, p
    and MDE (:func:`latent_error_test`, paired over segments); ``ratio`` = exp(mean)."""
    recs = [r for r in records if r["experiment"]["env"] == env and "latent_error" in r]
    fp = next((r for r in recs if r["experiment"]["method"] == "fp32"), None)
    rows = []
    for rec in recs:
        if fp is None or rec is fp:
            continue
        row: dict[str, Any] = {"key": rec["key"], "label": short_label(rec)}
        for k in steps:
            t = latent_error_test(rec, fp, step=k, log=True, **options)
            row.update({f"ratio@{k}": float(np.exp(t.estimate)), f"lo@{k}": float(np.exp(t.lo)),
                        f"hi@{k}": float(np.exp(t.hi)), f"p@{k}": t.p_value})
        row["segments"] = t.n
        rows.append(row)
    return pd.DataFrame(rows)


def verdict_insight4(records: Sequence[dict[str, Any]], profile: str) -> str:
    """Insight IV on open-loop latent error (the decoded rollouts above are pictures only):
    :func:`quantwm.study.latent.insight4_test`, declared before the data."""
    from quantwm.study.latent import insight4_test

    lines = ["**Insight IV (failure modes), on open-loop latent error over the same validation "
             f"segments for every configuration, from the `{profile}` profile.**", ""]
    out = insight4_test(list(records))
    if out is None:
        return "\n".join(lines + ["The kit **cannot tell**: no encoder-reduced configuration "
                                  "with a latent error is stored for both envs beside FP32 in "
                                  "this profile."])
    r, v = out["result"], out["verdict"]
    lines += [
        f"- Family: {len(out['family'])} encoder-reduced configuration(s) stored for both envs "
        f"({', '.join(out['family'])}); unit: the validation segment ({r.n} per env).",
        f"- Mean log(latent error / FP32's) at step {out['step']}: Wall "
        f"{out['wall_mean_log_ratio']:+.2f} (x{np.exp(out['wall_mean_log_ratio']):.2f}), PushT "
        f"{out['pusht_mean_log_ratio']:+.2f} (x{np.exp(out['pusht_mean_log_ratio']):.2f}).",
        f"- The paper: encoder quantization collapses Wall's representation from the first frame "
        f"while PushT's stays plausible. Wall minus PushT: {r.estimate:+.2f} "
        f"[{r.lo:+.2f}, {r.hi:+.2f}], p = {r.p_value:.2g}, detectable {_fmt_mde(r.mde)}: the kit "
        f"{_kit_says(v.word, v.reason)}."]
    return "\n".join(lines)


def training_history(meta: dict[str, Any]) -> pd.DataFrame:
    """The stage-2 training history of a checkpoint's ``meta`` (step, minutes, losses)."""
    return pd.DataFrame(meta.get("training", {}).get("history", []))


def model_summary(model: torch.nn.Module) -> dict[str, Any]:
    """One row about a loaded world model: sizes, training length and final/validation losses."""
    meta = getattr(model, "meta", {})
    train = meta.get("training", {})
    row: dict[str, Any] = {
        "env": model.config.env, "parameters": sum(p.numel() for p in model.parameters()),
        "encoder blocks": model.config.enc_depth, "predictor blocks": model.config.pred_depth,
        "history frames": model.config.num_hist, "train steps": train.get("steps"),
        "train minutes": train.get("minutes"), "commit": meta.get("commit")}
    row.update({f"final {k}": v for k, v in train.get("final", {}).items()})
    row.update({f"val {k}": v for k, v in train.get("val", {}).items()})
    return row


# ------------------------------------------------------- experiment lists of the figures
def run_fields(study: Any, seed: int | None = None) -> dict[str, Any]:
    """The Experiment fields a study profile fixes (planner profile, episodes, seed; the
    profile's own seed unless one is given)."""
    seed = getattr(study, "seed", 0) if seed is None else seed
    return {"profile": study.planner, "episodes": study.episodes,
            "calib_episodes": study.calibration_episodes, "seed": seed}


def fp32_experiment(env: str, study: Any, seed: int | None = None) -> Experiment:
    """The FP32 experiment of an environment under a study profile (shared by every table)."""
    return Experiment(env, **run_fields(study, seed))


FIGURE_BITS: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    # label -> (encoder bits, predictor bits), RTN, per-channel weights, per-tensor activations
    "FP32": ((FLOAT, FLOAT), (FLOAT, FLOAT)),
    "W8A32": ((8, FLOAT), (8, FLOAT)),
    "W4A32": ((4, FLOAT), (4, FLOAT)),
    "W3A32": ((3, FLOAT), (3, FLOAT)),
    "W8A8": ((8, 8), (8, 8)),
    "W4A8": ((4, 8), (4, 8)),
    "W4A4": ((4, 4), (4, 4)),
    "E:W4A4 P:W8A8": ((4, 4), (8, 8)),
    "E:W8A8 P:W4A4": ((8, 8), (4, 4)),
}


def figure_experiments(env: str, study: Any, labels: Sequence[str] | None = None,
                       seed: int | None = None) -> dict[str, Experiment]:
    """RTN experiments of Figs. 2-3 (FP32, W8, W4, W3, W8A8, W4A8, W4A4, encoder/predictor
    apart) by label; their keys equal the table rows', so results are shared."""
    labels = list(FIGURE_BITS) if labels is None else list(labels)
    out = {}
    for label in labels:
        enc, pred = FIGURE_BITS[label]
        method = "fp32" if label == "FP32" else "rtn"
        out[label] = Experiment(env, method, enc, pred, **run_fields(study, seed))
    return out


def stored_records(store: ResultStore, env: str, study: Any, seed: int | None = None
                   ) -> list[dict[str, Any]]:
    """Every stored record of ``env`` run under the study profile's planner/episodes/seed."""
    fields = run_fields(study, seed)
    return [r for r in store.records() if r["experiment"]["env"] == env
            and all(r["experiment"][k] == v for k, v in fields.items())]
