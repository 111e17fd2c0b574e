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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from quantwm.study.grid import FLOAT, TABLE_ENV, Experiment, paper_configs, paper_tables
from quantwm.study.store import ResultStore
from quantwm.study.tables import mcnemar_exact, success_matrix, wilson_interval
from quantwm.utils import spearman

PAPER_EPISODES = 50
CONFIG_KEYS = ["method", "w_bits", "a_bits", "group", "act_granularity",
               "enc_w", "enc_a", "pred_w", "pred_a"]


# ------------------------------------------------------------------------------ the store
def ensure_results(experiments: Sequence[Experiment], store: ResultStore,
                   device: torch.device | str = "cpu", cache_dir: str | Path | None = None,
                   progress: bool = True) -> dict[str, dict[str, Any]]:
    """Run the experiments missing from ``store`` (only those), then return every record by key."""
    from quantwm.study.runner import CACHE_DIR, run_sweep

    todo = store.missing(list(experiments))
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

    ``experiments`` are the table's experiments in the paper's row order (a profile may keep
    only the first rows). Columns: table, env, row, label, the paper's config keys, key, iters,
    n, successes, success, lo, hi, paper.
    """
    configs = paper_configs(table)
    paper = paper_success(table)
    rows = []
    for i, exp in enumerate(experiments):
        if not store.has(exp):
            continue
        rec = store.read(exp)
        cfg = configs.iloc[i]
        iters = [int(k) for k in rec["success"]]
        mat = success_matrix(rec["episodes"]["first_success_round"], iters)
        for j, k in enumerate(iters):
            s, n = int(mat[:, j].sum()), mat.shape[0]
            lo, hi = wilson_interval(s, n)
            p = paper.loc[i].get(k, np.nan) if k in paper.columns else np.nan
            rows.append({"table": table, "env": TABLE_ENV[table], "row": i,
                         "label": row_label(cfg), **{c: cfg[c] for c in CONFIG_KEYS},
                         "variant": variant, "key": exp.key(), "iters": k, "n": n,
                         "successes": s, "success": s / n, "lo": lo, "hi": hi, "paper": p})
    frame = pd.DataFrame(rows)
    if not frame.empty:  # NaN = "not applicable" (no group, bits set per part, ...)
        num = ["w_bits", "a_bits", "group", "enc_w", "enc_a", "pred_w", "pred_a"]
        frame[num] = frame[num].map(lambda v: np.nan if pd.isna(v) else float(v))
    return frame


def episode_outcomes(store: ResultStore, key: str, iters: int) -> np.ndarray:
    """(episodes,) bool: success within rounds 0..iters of the stored experiment ``key``."""
    env = key.split("-")[0]
    import json

    rec = json.loads((store.root / env / f"{key}.json").read_text())
    return success_matrix(rec["episodes"]["first_success_round"], [iters])[:, 0]


def side_by_side(frame: pd.DataFrame) -> pd.DataFrame:
    """Kit cells ``rate [lo, hi]`` beside the paper's rates, one row per configuration."""
    if frame.empty:
        return pd.DataFrame()
    kit = frame.assign(cell=[f"{s:.2f} [{lo:.2f}, {hi:.2f}]" for s, lo, hi in
                             zip(frame["success"], frame["lo"], frame["hi"], strict=True)])
    n = int(frame["n"].max())
    left = kit.pivot_table(index=["row", "label"], columns="iters", values="cell", aggfunc="first")
    left.columns = pd.MultiIndex.from_product([[f"kit (n={n})"],
                                               [f"{c} iters" for c in left.columns]])
    table = int(frame["table"].iloc[0])
    paper = paper_success(table).loc[sorted(frame["row"].unique())]
    paper.index = left.index
    paper.columns = pd.MultiIndex.from_product([[f"paper (n={PAPER_EPISODES})"],
                                                [f"{c} iters" for c in paper.columns]])
    return pd.concat([left, paper.map(lambda v: f"{v:.2f}")], axis=1).droplevel("row")


def table_rows(experiments: Sequence[Experiment], store: ResultStore) -> list[dict[str, Any]]:
    """``paper_style_table`` rows (label, first_success_round) of the stored experiments."""
    out = []
    for exp in experiments:
        if store.has(exp):
            rec = store.read(exp)
            out.append({"label": rec["label"], "key": rec["key"],
                        "first_success_round": rec["episodes"]["first_success_round"]})
    return out


# -------------------------------------------------------------------- paired comparisons
@dataclass(frozen=True)
class PairedComparison:
    """Pooled paired comparison of configurations B against A (same episodes)."""

    pairs: int  # configuration pairs compared
    episodes: int  # pooled episode pairs
    rate_a: float
    rate_b: float
    wins_b: int  # configuration pairs where B's rate is higher
    losses_b: int  # ... lower
    p_value: float  # exact McNemar on the pooled episode pairs

    @property
    def diff(self) -> float:
        return self.rate_b - self.rate_a

    @property
    def significant(self) -> bool:
        return self.p_value < 0.05


def paired_comparison(outcomes: Sequence[tuple[np.ndarray, np.ndarray]]) -> PairedComparison:
    """Pool paired boolean outcomes ``(a, b)`` of several configuration pairs and compare.

    Raises ``ValueError`` when no pair is given.
    """
    if not outcomes:
        raise ValueError("no configuration pairs to compare")
    a = np.concatenate([np.asarray(x, dtype=bool) for x, _ in outcomes])
    b = np.concatenate([np.asarray(y, dtype=bool) for _, y in outcomes])
    wins = sum(int(np.mean(y) > np.mean(x)) for x, y in outcomes)
    losses = sum(int(np.mean(y) < np.mean(x)) for x, y in outcomes)
    return PairedComparison(len(outcomes), len(a), float(a.mean()), float(b.mean()), wins, losses,
                            mcnemar_exact(a, b))


def _is(series: pd.Series, value: Any) -> pd.Series:
    return series.isna() if value is None else series == value


def match_pairs(frame: pd.DataFrame, column: str, a: Any, b: Any,
                where: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """Keys ``(key_a, key_b)`` of configurations that differ only in ``column`` (a -> b).

    ``frame`` is a :func:`study_frame`; ``None`` stands for "not applicable" (NaN), e.g. the
    per-channel ``group``. ``where`` keeps only configurations with these column values.
    """
    cfg = frame.drop_duplicates("key")
    for col, value in (where or {}).items():
        cfg = cfg[_is(cfg[col], value)]
    if cfg.empty:
        return []
    others = [c for c in CONFIG_KEYS if c != column]
    cfg = cfg.assign(sig=cfg[others].map(str).agg("|".join, axis=1))
    left, right = cfg[_is(cfg[column], a)], cfg[_is(cfg[column], b)]
    merged = left.merge(right, on="sig", suffixes=("_a", "_b"))
    return list(zip(merged["key_a"], merged["key_b"], strict=True))


def compare(store: ResultStore, pairs: Sequence[tuple[str, str]], iters: int
            ) -> PairedComparison | None:
    """Pooled paired comparison of stored experiment pairs at ``iters`` (None if no pair)."""
    if not pairs:
        return None
    return paired_comparison([(episode_outcomes(store, a, iters), episode_outcomes(store, b, iters))
                              for a, b in pairs])


def paper_diff(frame: pd.DataFrame, pairs: Sequence[tuple[str, str]], iters: int) -> float:
    """The paper's mean success difference (b - a) over the same configuration pairs."""
    if not pairs:
        return float("nan")
    at = frame[frame["iters"] == iters].set_index("key")["paper"]
    return float(np.mean([at[b] - at[a] for a, b in pairs]))


# ------------------------------------------------------------------------------ verdicts
def _fmt_cmp(c: PairedComparison | None) -> str:
    if c is None:
        return "no pair in this profile"
    sig = "beyond noise" if c.significant else "within noise"
    return (f"{c.rate_a:.2f} -> {c.rate_b:.2f} ({c.diff:+.2f}; {c.wins_b} of {c.pairs} pairs "
            f"better, {c.losses_b} worse; McNemar p = {c.p_value:.2g}, {sig}; "
            f"{c.episodes} paired episodes)")


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
            f"{row['success']:.2f} to lose: at this baseline and size, 'within noise' means the "
            f"study cannot tell, not that quantization is harmless.")


def _judged(word: str, weak: str | None, significant: bool = False, rest: str = "") -> str:
    """``**word**rest``, unless the FP32 baseline is too weak (``weak``: its caveat) and the
    kit's difference is within noise: then it cannot tell agreement from disagreement."""
    if weak and not significant:
        return "**cannot tell** whether it agrees (the FP32 baseline is too weak: see the caveat)"
    return f"**{word}**{rest}"


def _paired_by_env(frame: pd.DataFrame, store: ResultStore,
                   pairs_of: Callable[[pd.DataFrame], list[tuple[str, str]]]
                   ) -> Iterator[tuple[str, pd.DataFrame, int, list, PairedComparison | None,
                                       str | None]]:
    """Per env of ``frame``: (env, its rows, last iters, the pairs ``pairs_of`` finds, their
    paired comparison at the last iters (None without pairs), the FP32 baseline caveat)."""
    for env, sub in frame.groupby("env", sort=False):
        last = int(sub["iters"].max())
        pairs = pairs_of(sub)
        yield env, sub, last, pairs, compare(store, pairs, last), baseline_caveat(sub, last)


def verdict_insight1(frame: pd.DataFrame, store: ResultStore, profile: str) -> str:
    """Insight I: group-wise (G128) weights help at W4 but not at W3 (Tables 1-2)."""
    lines = [f"**Insight I (group-wise weights), from the `{profile}` profile.**", ""]
    if frame.empty:
        return "\n".join(lines + ["No results yet."])
    any_pair = False
    for env, sub in frame.groupby("env", sort=False):
        last = int(sub["iters"].max())
        lines.append(f"*{env}* (success within {last} iters, group 128 vs per-channel):")
        weak = baseline_caveat(sub, last)
        if weak:
            lines.append(weak)
        for bits in (4, 3):
            pairs = match_pairs(sub, "group", None, 128, {"w_bits": bits, "a_bits": FLOAT})
            c = compare(store, pairs, last)
            lines.append(f"- W{bits}: {_fmt_cmp(c)}")
            if c is None:
                continue
            any_pair = True
            p = paper_diff(sub, pairs, last)
            if bits == 4:
                kit_gain = c.diff if c.significant else 0.0
                paper_says = "helps" if p > 0 else "does not help"
                kit_says = ("helps" if kit_gain > 0 else "hurts" if kit_gain < 0
                            else "makes no difference beyond noise")
                ok = (kit_gain > 0) == (p > 0)
                judged = _judged("agrees" if ok else "disagrees", weak, c.significant,
                                 " with the paper at W4")
                lines.append(f"  - the paper's same rows: {p:+.2f} (grouping {paper_says}); "
                             f"here grouping {kit_says}: the kit {judged}.")
            else:
                best = max(c.rate_a, c.rate_b)
                collapsed = best <= 0.2
                judged = _judged("agrees" if collapsed else "disagrees", weak,
                                 rest=" (collapse = <= 0.20)")
                lines.append(f"  - the paper: W3 collapses (near 0) either way; here the better "
                             f"of the two pools reaches {best:.2f}: the kit {judged}.")
        lines.append("")
    if not any_pair:
        lines.append("This profile holds no W4/W3 pairs: run the `quick` or `full` profile.")
    return "\n".join(lines)


def _granularity_pairs(sub: pd.DataFrame) -> list[tuple[str, str]]:
    """(per-tensor, per-token) keys of otherwise equal configurations."""
    return match_pairs(sub, "act_granularity", "per-tensor", "per-token")


def verdict_insight2(frame: pd.DataFrame, store: ResultStore, profile: str) -> str:
    """Insight II: per-token activations give no consistent gain over per-tensor (Tables 3-6)."""
    lines = [f"**Insight II (per-token vs per-tensor activations), from the `{profile}` "
             f"profile.**", ""]
    any_pair = False
    for env, sub, last, pairs, c, weak in _paired_by_env(frame, store, _granularity_pairs):
        lines.append(f"- *{env}*, within {last} iters, per-tensor -> per-token: {_fmt_cmp(c)}")
        if weak:
            lines.append(weak)
        if c is None:
            continue
        any_pair = True
        consistent = c.significant and c.diff > 0 and c.losses_b == 0
        p = paper_diff(sub, pairs, last)
        lines.append(f"  - the paper's same rows: mean {p:+.2f}. The paper finds no consistent "
                     f"gain; here per-token is "
                     f"{'a consistent' if consistent else 'not a consistent'} gain: "
                     f"the kit "
                     f"{_judged('disagrees' if consistent else 'agrees', weak, c.significant)}.")
    if not any_pair:
        lines.append("This profile holds no per-token/per-tensor pair: run `quick` or `full`.")
    return "\n".join(lines)


def _encoder_predictor_pairs(sub: pd.DataFrame) -> list[tuple[str, str]]:
    """(predictor reduced, encoder reduced) keys with the same method and bits, other part 8/8."""
    cfg = sub.drop_duplicates("key")
    enc = cfg[(cfg["pred_w"] == 8) & (cfg["pred_a"] == 8) & (cfg["enc_w"] * cfg["enc_a"] < 64)]
    pairs = []
    for _, r in enc.iterrows():
        m = cfg[(cfg["method"] == r["method"]) & (cfg["enc_w"] == 8) & (cfg["enc_a"] == 8)
                & (cfg["pred_w"] == r["enc_w"]) & (cfg["pred_a"] == r["enc_a"])]
        pairs += [(k, r["key"]) for k in m["key"]]
    return pairs


def verdict_insight3(frame: pd.DataFrame, store: ResultStore, profile: str) -> str:
    """Insight III: the encoder is more sensitive than the predictor (Tables 7-8)."""
    lines = [f"**Insight III (encoder vs predictor sensitivity), from the `{profile}` "
             f"profile.**", ""]
    any_pair = False
    for env, sub, last, pairs, c, weak in _paired_by_env(frame, store, _encoder_predictor_pairs):
        lines.append(f"- *{env}*, within {last} iters, predictor-reduced -> encoder-reduced "
                     f"(same bits): {_fmt_cmp(c)}")
        if weak:
            lines.append(weak)
        if c is None:
            continue
        any_pair = True
        p = paper_diff(sub, pairs, last)
        kit = c.diff if c.significant else 0.0
        verdict = "agrees" if (kit < 0) == (p < 0) else "disagrees"
        lines.append(f"  - the paper's same rows: {p:+.2f} (negative = encoder more sensitive). "
                     f"Here the encoder is {'more' if kit < 0 else 'not more'} sensitive beyond "
                     f"noise: the kit {_judged(verdict, weak, c.significant)}.")
    if not any_pair:
        lines.append("This profile holds no encoder/predictor pair: run `quick` or `full`.")
    return "\n".join(lines)


def verdict_fp32(success: dict[str, dict[str, float]], n: dict[str, int], profile: str) -> str:
    """The FP32 baseline against the paper's FP32 rows (Tables 1 and 2)."""
    paper = paper_tables()
    lines = [f"**FP32 baseline, from the `{profile}` profile.**", ""]
    for env, rates in success.items():
        ref = paper[(paper["method"] == "FP32") & (paper["env"].str.lower() == env)]
        ref = ref.drop_duplicates("iters").set_index("iters")["success"]
        for k, rate in rates.items():
            if int(k) not in ref.index:
                continue
            lo, hi = wilson_interval(round(rate * n[env]), n[env])
            inside = lo <= ref[int(k)] <= hi
            lines.append(f"- *{env}*, {k} iters: kit {rate:.2f} [{lo:.2f}, {hi:.2f}] vs paper "
                         f"{ref[int(k)]:.2f}: **{'consistent' if inside else 'inconsistent'}** "
                         f"with the paper (95 % Wilson interval, n = {n[env]}).")
    return "\n".join(lines)


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
    """Tidy per (experiment, episode, round): latent MSE to the goal, CEM's final planning loss,
    goal distance, and whether the episode had succeeded by that round."""
    rows = []
    for rec in records:
        ep = rec["episodes"]
        for e, first in enumerate(ep["first_success_round"]):
            lat = ep["latent_mse_by_round"][e]
            for r in range(len(lat)):
                rows.append({"key": rec["key"], "label": short_label(rec), "episode": e, "round": r,
                             "latent_mse": lat[r], "plan_loss": ep["final_loss_by_round"][e][r],
                             "goal_distance": ep["goal_distance_by_round"][e][r],
                             "success": first is not None and first <= r})
    return pd.DataFrame(rows).astype({"latent_mse": float, "plan_loss": float,
                                      "goal_distance": float})


def loss_alignment(frame: pd.DataFrame) -> pd.DataFrame:
    """Per configuration: mean latent MSE at round 0 and at the last round, its relative change,
    final success, mean final goal distance, and the per-episode Spearman correlation between
    the final latent MSE and the final goal distance (how well the loss tracks the task)."""
    rows = []
    for (key, label), sub in frame.groupby(["key", "label"], sort=False):
        per_round = sub.groupby("round")["latent_mse"].mean()
        last = sub[sub["round"] == sub.groupby("episode")["round"].transform("max")]
        first, final = float(per_round.iloc[0]), float(per_round.iloc[-1])
        rho = spearman(last["latent_mse"], last["goal_distance"])
        rows.append({"key": key, "label": label, "loss_first": first, "loss_last": final,
                     "loss_change": (final - first) / first if first else np.nan,
                     "success": float(last["success"].mean()),
                     "goal_distance": float(last["goal_distance"].mean()),
                     "rho_loss_distance": rho})
    return pd.DataFrame(rows)


def verdict_insight5(alignment: pd.DataFrame, profile: str, env: str) -> str:
    """Insight V: under aggressive quantization the planning loss stops decreasing and stops
    predicting success."""
    lines = [f"**Insight V (planning objective under quantization), {env}, from the `{profile}` "
             f"profile.**", ""]
    if alignment.empty or "FP32" not in set(alignment["label"]):
        return "\n".join(lines + ["No FP32 result to compare with."])
    fp = alignment[alignment["label"] == "FP32"].iloc[0]
    quant = alignment[alignment["label"] != "FP32"]
    if quant.empty:
        return "\n".join(lines + ["No quantized configuration in this profile."])
    worst = quant.sort_values(["success", "loss_last"], ascending=[True, False]).iloc[0]
    lines.append(f"- FP32: latent MSE to the goal changes {fp['loss_change']:+.0%} from round 0 to "
                 f"the last round; success {fp['success']:.2f}.")
    lines.append(f"- Least successful configuration, {worst['label']}: {worst['loss_change']:+.0%},"
                 f" success {worst['success']:.2f}.")
    if fp["loss_change"] < 0:
        stalls = worst["loss_change"] > 0.5 * fp["loss_change"]
        lines.append(f"- The paper: under aggressive quantization the loss fails to decrease. "
                     f"Here it decreases {'less than' if stalls else 'at least'} half as much "
                     f"as under FP32: the kit **{'agrees' if stalls else 'disagrees'}**.")
    else:
        lines.append("- The FP32 loss itself does not decrease over rounds here, so whether "
                     "quantization stops it decreasing **cannot be decided**.")
    rho_cfg = spearman(alignment["loss_last"], alignment["success"])
    if np.isnan(rho_cfg):
        lines.append("- Too few configurations (or no spread) for a rank correlation between "
                     "final loss and success across configurations.")
    else:
        lines.append(f"- Across {len(alignment)} configurations, Spearman(final latent MSE, "
                     f"success) = {rho_cfg:+.2f} (negative = a lower loss goes with more success)."
                     f" The loss {'predicts' if rho_cfg < -0.3 else 'does not predict'} success "
                     f"across configurations.")
    r_fp, r_q = fp["rho_loss_distance"], quant["rho_loss_distance"].median()
    if not (np.isnan(r_fp) or np.isnan(r_q)):
        worse = r_q < r_fp
        lines.append(f"- Per episode, Spearman(final latent MSE, goal distance): FP32 {r_fp:+.2f}, "
                     f"quantized median {r_q:+.2f}: alignment is "
                     f"{'lower' if worse else 'not lower'} under quantization: "
                     f"the kit **{'agrees' if worse else 'disagrees'}** with "
                     f"'reduced alignment'.")
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

    trajs = load_trajectories(env)
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


def verdict_insight4(errors: dict[str, pd.DataFrame], success: dict[str, dict[str, float]],
                     profile: str) -> str:
    """Insight IV: Wall degrades at the representation level (reconstruction from frame 0),
    PushT at the planning level (images plausible, success drops)."""
    lines = ["**Insight IV (failure modes), rollouts of one validation trajectory per env; "
             f"success from the `{profile}` profile where stored.**", ""]
    ratios = {}
    for env, err in errors.items():
        f0 = err[err["frame"] == 0].set_index("config")["recon_mse"]
        if "FP32" not in f0.index or len(f0) < 2:
            continue
        rel = (f0.drop("FP32") / max(f0["FP32"], 1e-12)).sort_values()
        ratios[env] = float(rel.max())
        lines.append(f"- *{env}*: frame-0 reconstruction error relative to FP32 ranges "
                     f"{rel.min():.2f}x ({rel.index[0]}) to {rel.max():.2f}x ({rel.index[-1]}).")
        for label, rate in success.get(env, {}).items():
            lines.append(f"  - success of {label}: {rate:.2f}")
    if {"wall", "pusht"} <= set(ratios):
        ok = ratios["wall"] > ratios["pusht"]
        lines.append(f"- The paper: Wall's reconstructions degrade from the first frame while "
                     f"PushT's stay plausible. Worst frame-0 degradation: Wall "
                     f"{ratios['wall']:.2f}x, PushT {ratios['pusht']:.2f}x: the kit "
                     f"**{'agrees' if ok else 'disagrees'}** (Wall worse than PushT).")
    else:
        lines.append("- Both environments are needed to compare their failure modes.")
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
def run_fields(study: Any, seed: int = 0) -> dict[str, Any]:
    """The Experiment fields a study profile fixes (planner profile, episodes, seed)."""
    return {"profile": study.planner, "episodes": study.episodes,
            "calib_episodes": study.calibration_episodes, "seed": seed}


def fp32_experiment(env: str, study: Any, seed: int = 0) -> Experiment:
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
                       seed: int = 0) -> dict[str, Experiment]:
    """RTN experiments of Figs. 2-3 (FP32, W8, W4, W3, W8A8, W4A8, W4A4, encoder/predictor
    apart) by label; their keys equal the table rows', so results are shared."""
    labels = list(FIGURE_BITS) if labels is None else list(labels)
    out = {}
    for label in labels:
        enc, pred = FIGURE_BITS[label]
        method = "fp32" if label == "FP32" else "rtn"
        out[label] = Experiment(env, method, enc, pred, **run_fields(study, seed))
    return out


def stored_records(store: ResultStore, env: str, study: Any, seed: int = 0
                   ) -> list[dict[str, Any]]:
    """Every stored record of ``env`` run under the study profile's planner/episodes/seed."""
    fields = run_fields(study, seed)
    return [r for r in store.records() if r["experiment"]["env"] == env
            and all(r["experiment"][k] == v for k, v in fields.items())]
