"""Results at a glance: every declared insight test, judged on the most powerful stored run.

For each of the paper's claims (the FP32 baseline, Insights I-V) the summary takes the most
powerful study profile whose results hold the test's configurations (:data:`PREFERENCE`: the
200-episode ``power`` profile first, ``quick``'s 10 episodes last) and reports the kit's effect
with its 95 % interval, the smallest effect that run could detect, the three-way verdict and
why the kit's model may differ from the paper's DINO-WM (:data:`WHY_DIFFERENT`).

    from quantwm.study.summary import summary_table
    summary_table(ResultStore())          # one row per (test, env)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from quantwm.study.grid import FLOAT, Experiment, config_columns, paper_tables
from quantwm.study.profiles import STUDY_PROFILES, StudyProfile
from quantwm.study.store import ResultStore

# Which stored run judges a test: the most episodes first; `long` first for Insight V (its
# records follow every episode over the paper's 10..50 columns).
PREFERENCE: dict[str, tuple[str, ...]] = {
    "success": ("power", "full", "long", "quick"),
    "latent": ("power", "full", "quick"),
    "alignment": ("long", "power", "full", "quick"),
}

# Why the kit's small models may disagree with the paper's DINO-WM, per insight.
WHY_DIFFERENT: dict[str, str] = {
    "baseline": "the kit's models are small ViTs trained here (4 blocks, width 128) and plan at "
                "the cpu budget (64 / 48 CEM samples, rounds 0..5), not DINOv2 + the reference "
                "planner",
    "I": "the kit's Linears are 128-148 wide (the reference's 384-404), so G128 equals "
         "per-channel on 12 of 16 encoder Linears; the width-scaled G48 splits them as G128 "
         "splits the reference's",
    "II": "activation outliers differ (notebook 01 measures the kit's: milder than the paper's "
          "DINOv2 features), and per-tensor ranges come from 2-round FP32 calibration",
    "III": "the kit's encoder is a 4-block ViT trained with a reconstruction objective, not "
           "frozen DINOv2: its features may be less brittle to rounding",
    "IV": "measured on open-loop latent error over 64 validation segments, not on one decoded "
          "rollout; the kit's decoder is small",
    "V": "the kit plans 6 rounds at the cpu budget (50 / 30 in the long profile), and the "
         "objective is the reached latent distance on a fixed population of episodes",
}

def preference_for(profile: str) -> dict[str, tuple[str, ...]]:
    """The profiles a summary reads: :data:`PREFERENCE`, or the ``smoke`` profile alone (a
    pipeline check, whose numbers mean nothing)."""
    if profile == "smoke":
        return {k: ("smoke",) for k in PREFERENCE}
    return dict(PREFERENCE)


def records_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """A :func:`quantwm.study.analysis.study_frame`-shaped frame (configuration x iters, with
    the paper's columns) for any stored records, in or outside the paper's tables: the
    insight tests' families select from it. ``paper`` is the paper's rate where the
    configuration is one of its rows (first table that has it), else NaN."""
    from quantwm.study.stats import wilson_interval
    from quantwm.study.tables import success_matrix

    paper = paper_tables()
    rows = []
    for rec in records:
        exp = Experiment.from_dict(rec["experiment"])
        cfg = config_columns(exp)
        iters = [int(k) for k in rec["success"]]
        mat = success_matrix(rec["episodes"]["first_success_round"], iters)
        ref = _paper_rows(paper, exp.env, cfg)
        for j, k in enumerate(iters):
            s, n = int(mat[:, j].sum()), mat.shape[0]
            lo, hi = wilson_interval(s, n)
            p = ref.get(k, np.nan)
            rows.append({"table": np.nan, "env": exp.env, "row": np.nan, "label": rec["label"],
                         **cfg, "variant": "", "key": rec["key"], "iters": k, "n": n,
                         "successes": s, "success": s / n, "lo": lo, "hi": hi, "paper": p})
    return pd.DataFrame(rows)


def _paper_rows(paper: pd.DataFrame, env: str, cfg: dict[str, Any]) -> dict[int, float]:
    sub = paper[paper["env"].str.lower() == env]
    for col in ("method", "w_bits", "a_bits", "group", "act_granularity", "enc_w", "enc_a",
                "pred_w", "pred_a"):
        v = cfg[col]
        if cfg["method"] == "FP32" and col != "method":
            continue
        if col == "act_granularity" and cfg["a_bits"] == FLOAT:
            continue  # weight-only: the granularity does not apply
        sub = sub[sub[col].isna()] if pd.isna(v) else sub[sub[col] == v]
    sub = sub.drop_duplicates("iters")
    return dict(zip(sub["iters"].astype(int), sub["success"].astype(float), strict=True))


def profile_records(store: ResultStore | Iterable[dict[str, Any]], profile: StudyProfile
                    ) -> list[dict[str, Any]]:
    """The records (of a store, or given) made under a profile's run fields (planner, episodes,
    calibration, seed), both envs."""
    fields = profile.run_fields()
    records = store.records() if isinstance(store, ResultStore) else store
    return [r for r in records if all(r["experiment"].get(k) == v for k, v in fields.items())]


def summary_table(store: ResultStore, preference: dict[str, Sequence[str]] = PREFERENCE,
                  **options: Any) -> pd.DataFrame:
    """One row per (insight test, env): the most powerful stored run that has the test's
    configurations, the kit's estimate with interval, p, n, MDE, the verdict and why the kit
    may differ. ``options`` go to the statistics (n_resamples, seed)."""
    from quantwm.study.alignment import INSIGHT_V_TESTS, insight5_table
    from quantwm.study.analysis import insight_table
    from quantwm.study.latent import insight4_test

    stored = list(store.records())  # read once; each profile takes its own
    records = {name: profile_records(stored, STUDY_PROFILES[name])
               for name in dict.fromkeys(p for ps in preference.values() for p in ps)}
    frames = {name: records_frame(recs) for name, recs in records.items() if recs}
    rows: dict[tuple[str, str], dict[str, Any]] = {}

    for name in preference["success"]:  # baseline, I, II, III
        if name not in frames:
            continue
        table = insight_table(frames[name], store, **options)
        for _, r in table.iterrows():
            rows.setdefault((r["test"], r["env"]), {
                "insight": r["insight"], "test": r["test"], "env": r["env"],
                "paper claim": r["claim"], "paper": r["paper"], "profile": name,
                "iters": r["iters"], "estimate": r["diff"], "lo": r["lo"], "hi": r["hi"],
                "p": r["p"], "n": r["n"], "mde": r["mde"], "verdict": r["verdict"],
                "reason": r["reason"]})

    for name in preference["latent"]:  # IV
        if name in records and ("IV", "wall-pusht") not in rows:
            out = insight4_test(records[name])
            if out is not None:
                r, v = out["result"], out["verdict"]
                rows[("IV", "wall-pusht")] = {
                    "insight": "IV", "test": "IV-latent", "env": "wall - pusht",
                    "paper claim": "Wall's encoder quantization collapses the representation; "
                                   "PushT's representation stays intact",
                    "paper": np.nan, "profile": name, "iters": np.nan,
                    "estimate": r.estimate, "lo": r.lo, "hi": r.hi, "p": r.p_value, "n": r.n,
                    "mde": r.mde, "verdict": v.word, "reason": v.reason}

    judged_v: set[tuple[str, str]] = set()  # (env, configuration): its most powerful run
    test_claim = {x.name: x.paper for x in INSIGHT_V_TESTS}
    for name in preference["alignment"]:  # V: one row per aggressive configuration and test
        if name not in records:
            continue
        for env in ("wall", "pusht"):
            t = insight5_table(records[name], env, seed=options.get("seed", 0))
            for conf, sub in (t.groupby("configuration", sort=False) if not t.empty else ()):
                if (env, conf) in judged_v:
                    continue
                judged_v.add((env, conf))
                for _, r in sub.iterrows():
                    rows[(r["test"], f"{env} {conf}")] = {
                        "insight": "V", "test": r["test"], "env": f"{env}: {conf}",
                        "paper claim": test_claim[r["test"]], "paper": np.nan,
                        "profile": name, "iters": np.nan, "estimate": r["estimate"],
                        "lo": r["lo"], "hi": r["hi"], "p": r["p"], "n": r["n"], "mde": r["mde"],
                        "verdict": r["verdict"], "reason": r["reason"]}
    out = pd.DataFrame(list(rows.values()))
    if out.empty:
        return out
    out["why the kit may differ"] = out["insight"].map(WHY_DIFFERENT)
    order = {k: i for i, k in enumerate(["baseline", "I", "II", "III", "IV", "V"])}
    return out.sort_values(["insight", "test", "env"], key=lambda c: c.map(order).fillna(c)
                           if c.name == "insight" else c, kind="stable").reset_index(drop=True)


def insight_markdown(store: ResultStore, insights: Sequence[str], profile: str = "quick",
                     **options: Any) -> str:
    """:func:`summary_markdown` of some insights only ("baseline", "I" ... "V"), after a line
    naming the runs it reads, most powerful first: the closing section of the notebook that
    studies them. ``profile`` "smoke" reads the smoke run alone."""
    preference = preference_for(profile)
    kinds = dict.fromkeys(_KIND.get(i, "success") for i in insights)
    order = "; ".join(f"{_KIND_NAME[k]}: {', '.join(f'`{p}`' for p in preference[k])}"
                      for k in kinds)
    table = summary_table(store, preference, **options)
    table = table[table["insight"].isin(insights)] if not table.empty else table
    return (f"Each test is judged on the first of these stored runs that holds its "
            f"configurations ({order}); nothing is run.\n\n" + summary_markdown(table))


# which stored runs judge an insight (PREFERENCE's keys), and how the notebooks name them
_KIND = {"IV": "latent", "V": "alignment"}
_KIND_NAME = {"success": "planning success", "latent": "latent error",
              "alignment": "planning objective"}


def summary_markdown(table: pd.DataFrame) -> str:
    """The summary as Markdown: one line per (test, env), grouped by insight."""
    if table.empty:
        return ("**Results at a glance.** No stored run holds the configurations of any "
                "declared test yet: run `quantwm sweep --profile power` (or `quick`).")
    lines = ["**Results at a glance** (the most powerful stored run for each test; intervals "
             "95 %, MDE = the smallest effect that run could detect with 80 % power).", ""]
    names = {"baseline": "FP32 baseline", "I": "Insight I (group-wise weights)",
             "II": "Insight II (activation granularity)",
             "III": "Insight III (encoder vs predictor)", "IV": "Insight IV (failure modes)",
             "V": "Insight V (planning objective)"}
    for insight, sub in table.groupby("insight", sort=False):
        lines.append(f"*{names.get(insight, insight)}*: {sub['paper claim'].iloc[0]}.")
        for _, r in sub.iterrows():
            c = _cells(r)
            at = c["iters"] and f", {c['iters']} iters"
            paper = c["paper"] and f"; paper {c['paper']}"
            lines.append(f"- {r['test']}, {r['env']} (`{r['profile']}`, n = {int(r['n'])}{at}): "
                         f"kit {c['kit']}{paper}; MDE {c['mde'] or 'n/a'}: **{r['verdict']}** "
                         f"({r['reason']}).")
        lines.append(f"  - Why the kit may differ: {sub['why the kit may differ'].iloc[0]}.")
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------- the README's block
README_START = "<!-- results-at-a-glance: generated by python -m quantwm.study.summary -->"
README_END = "<!-- end of results-at-a-glance -->"


def readme_table(table: pd.DataFrame) -> str:
    """The summary as the README's Markdown table (one row per test and env)."""
    if table.empty:
        return "No stored run holds the configurations of a declared test yet."
    out = ["| insight | test | env | run (n) | kit [95 % interval] | paper | MDE | verdict |",
           "|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        c = _cells(r)
        at = c["iters"] and f", @{c['iters']}"
        out.append(f"| {r['insight']} | {r['test']} | {r['env']} | {r['profile']} "
                   f"({int(r['n'])}{at}) | {c['kit']} | {c['paper']} | {c['mde']} | "
                   f"**{r['verdict']}** |")
    return "\n".join(out)


def _cells(r: pd.Series) -> dict[str, str]:
    """A summary row's numbers as text ("" where not applicable)."""
    return {"kit": f"{r['estimate']:+.2f} [{r['lo']:+.2f}, {r['hi']:+.2f}]",
            "paper": "" if pd.isna(r["paper"]) else f"{r['paper']:.2f}",
            "mde": "" if pd.isna(r["mde"]) else f"{r['mde']:.2f}",
            "iters": "" if pd.isna(r["iters"]) else str(int(r["iters"]))}


def readme_block(store: ResultStore) -> str:
    """The README's generated block for the results in ``store``."""
    return f"{README_START}\n{readme_table(summary_table(store))}\n{README_END}"


def update_readme(path: str, store: ResultStore, check: bool = False) -> bool:
    """Rewrite the generated block of the README at ``path`` (``check``: only compare);
    returns whether it was already up to date."""
    from pathlib import Path

    text = Path(path).read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{path} has no results-at-a-glance block ({README_START!r} ... "
                         f"{README_END!r})")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    new = head + readme_block(store) + tail
    if new == text:
        return True
    if not check:
        Path(path).write_text(new)
    return False


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m quantwm.study.summary [--check]``: update (or check) README.md's block from
    the committed result store."""
    import argparse

    from quantwm.study.store import RESULTS_DIR
    from quantwm.utils import REPO_DIR

    p = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if the README is out of date")
    p.add_argument("--readme", default=str(REPO_DIR / "README.md"))
    p.add_argument("--results", default=str(RESULTS_DIR))
    args = p.parse_args(argv)
    ok = update_readme(args.readme, ResultStore(args.results), check=args.check)
    print("README up to date" if ok else ("README out of date" if args.check else
                                          "README updated"))
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    raise SystemExit(main())
