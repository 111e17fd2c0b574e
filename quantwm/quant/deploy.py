"""Deployment: the lowered configurations, the ``--quant`` spec, and what each one buys.

A **quant spec** names one :class:`QuantConfig` in a word, for the command line and the
benchmark (``quantwm eval --quant SPEC``)::

    rtn:W8A8                   RTN, encoder and predictor W8A8 (static per-tensor activations)
    rtn:W8A8:per-token         ... dynamic per-token activations
    rtn:W4A32:g128             weight-only W4, group size 128 (A32 / A16 / W32: float)
    omse:pred=W4A8:per-token   only the predictor quantized (enc=... for the encoder)
    smoothquant:W8A8:alpha=0.8 any scalar QuantConfig field as FIELD=VALUE

Tokens after the method, separated by ``:``: ``W<w>A<a>`` (both parts), ``enc=W<w>A<a>``,
``pred=W<w>A<a>``, ``g<N>`` (weight group size; ``gch`` per-channel, the default),
``per-tensor`` / ``per-token``, ``asym-w`` (asymmetric weights), ``sym-a`` (symmetric
activations), ``FIELD=VALUE``. A part not named stays float.

:data:`DEPLOY_CONFIGS` are the configurations the deployment benchmark and notebook lower
(RTN: the lowering does not depend on how the scales were chosen). :func:`tradeoff` /
:func:`pareto_front` / :func:`deployment_verdict` turn measured rows into the trade-off.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from quantwm.quant.apply import needs_calibration
from quantwm.quant.config import METHODS, QuantConfig
from quantwm.quant.primitives import FLOAT_BITS

DEPLOY_CONFIGS: dict[str, str] = {
    "W8A8 per-tensor": "rtn:W8A8:per-tensor",
    "W8A8 per-token": "rtn:W8A8:per-token",
    "W8 weight-only": "rtn:W8A32",
    "W8 G128 weight-only": "rtn:W8A32:g128",
    "W4 weight-only": "rtn:W4A32",
    "W4 G128 weight-only": "rtn:W4A32:g128",
}
FP32 = "FP32"
SPEC_HELP = ("METHOD:W<w>A<a>[:g<N>][:per-tensor|per-token][:FIELD=VALUE ...], e.g. rtn:W8A8, "
             "rtn:W8A8:per-token, rtn:W4A32:g128, omse:pred=W4A8 (enc=/pred= quantize one "
             "part; A32/W32 = float)")

_BITS = re.compile(r"(?:(enc|pred)=)?w(\d+)a(\d+)")
_PARTS = {"enc": ("encoder",), "pred": ("predictor",), None: ("encoder", "predictor")}
_SPECIAL = {"w_group_size", "act_granularity", "w_symmetric", "a_symmetric", "encoder",
            "predictor", "method", "parts"}


def parse_quant_spec(text: str) -> QuantConfig:
    """The :class:`QuantConfig` of a quant spec (module doc), or a one-line ``ValueError``."""
    tokens = [t.strip() for t in str(text).split(":")]
    method = tokens[0].lower()
    if method not in METHODS:
        raise ValueError(f"quant spec {text!r}: unknown method {tokens[0]!r}; expected one of "
                         f"{', '.join(METHODS)} (spec: {SPEC_HELP})")
    fields: dict[str, Any] = {}
    bits_given = False
    simple = {f.name for f in dataclasses.fields(QuantConfig)} - _SPECIAL
    for token in tokens[1:]:
        low = token.lower()
        if m := _BITS.fullmatch(low):
            for part in _PARTS[m[1]]:
                fields[part] = (int(m[2]), int(m[3]))
            bits_given = True
        elif m := re.fullmatch(r"g(\d+)", low):
            fields["w_group_size"] = int(m[1])
        elif low in ("gch", "g-", "per-channel"):
            fields["w_group_size"] = None
        elif low in ("per-tensor", "per-token", "per_tensor", "per_token"):
            fields["act_granularity"] = low.replace("-", "_")
        elif low == "asym-w":
            fields["w_symmetric"] = False
        elif low == "sym-a":
            fields["a_symmetric"] = True
        elif "=" in token and token.partition("=")[0] in simple:
            key, _, value = token.partition("=")
            fields[key] = _scalar(value)
        else:
            raise ValueError(f"quant spec {text!r}: cannot read {token!r} (spec: {SPEC_HELP}; "
                             f"FIELD is one of {', '.join(sorted(simple))})")
    if not bits_given:
        raise ValueError(f"quant spec {text!r} gives no bits; add W<w>A<a>, e.g. {method}:W8A8")
    try:
        return QuantConfig(method=method, **fields)
    except (TypeError, ValueError) as err:
        raise ValueError(f"quant spec {text!r}: {' '.join(str(err).split())}") from None


def _scalar(value: str) -> int | float | bool | None | str:
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def spec_label(config: QuantConfig) -> str:
    """A short label: ``W8A8 per-token`` / ``W4 G128 weight-only`` (both parts alike), else
    :meth:`QuantConfig.label`."""
    e, p = config.bits("encoder"), config.bits("predictor")
    if e != p or config.method != "rtn":
        return config.label()
    g = "" if config.w_group_size is None else f" G{config.w_group_size}"
    if p.a >= FLOAT_BITS:
        return f"W{p.w}{g} weight-only"
    return f"W{p.w}A{p.a}{g} {config.act_granularity.replace('_', '-')}"


def build_model(env: str, config: QuantConfig | str | None, *, lowered: bool = True,
                planner: str = "cpu", calib_episodes: int = 10, device: Any = "cpu",
                cache_dir: str | Path | None = None, model: Any = None,
                rounding: str = "exact") -> Any:
    """The world model of ``env``: FP32 (``config`` None), fake-quantized, or lowered.

    Calibration inputs (when the config needs them) are the cached FP32 planner inputs of
    ``quantwm.study.runner.calibration_data(env, planner, episodes=calib_episodes)``.
    """
    from quantwm.model import load
    from quantwm.quant.apply import quantize
    from quantwm.quant.lower import config_kinds, lower

    base = model if model is not None else load(env, device=device).eval()
    if config is None:
        return base
    if isinstance(config, str):
        config = parse_quant_spec(config)
    if lowered:
        config_kinds(config, device)  # a request without a kernel fails before any work
    calib = None
    if needs_calibration(config):
        from quantwm.study.runner import CACHE_DIR, calibration_data

        calib = calibration_data(env, planner, device, cache_dir or CACHE_DIR, calib_episodes,
                                 model=base)
        calib = {part: [t.to(device) for t in ts] for part, ts in calib.items()}
    qmodel = quantize(base, config, calib)
    return lower(qmodel, rounding=rounding) if lowered else qmodel


def stored_success(store: Any, env: str, config: QuantConfig | str | None,
                   study: Any) -> np.ndarray | None:
    """Per-episode success (within the planner's last MPC round) of the stored record of
    ``config`` (None: FP32) under study profile ``study``, or None when ``store`` (a
    :class:`quantwm.study.ResultStore`) holds no record of exactly that configuration.

    The record is of the fake-quantized model, which the lowered one computes to float
    rounding (``tests/test_deploy.py``): the success of a lowered configuration need not be
    planned again to be known."""
    from quantwm.study.grid import Experiment
    from quantwm.study.tables import success_matrix

    if isinstance(config, str):
        config = parse_quant_spec(config)
    quant = {} if config is None else {
        "method": config.method, "encoder": tuple(config.encoder),
        "predictor": tuple(config.predictor), "group": config.w_group_size,
        "act_granularity": config.act_granularity}
    exp = Experiment(env, **quant, **study.run_fields())
    if exp.quant_config() != config or not store.has(exp):  # a setting the study never varies
        return None
    record = store.read(exp)
    last = int(record["planner"]["mpc_rounds"])  # the stored columns may stop short of it
    return success_matrix(record["episodes"]["first_success_round"], [last])[:, 0]


# ------------------------------------------------------------------------- the trade-off
def pareto_front(cost: Sequence[float], success: Sequence[float]) -> list[bool]:
    """True for each point no other point beats: none is at most as costly and at least as
    successful, and strictly better in one of the two."""
    c, s = np.asarray(cost, float), np.asarray(success, float)
    front = []
    for i in range(len(c)):
        dominated = np.any((c <= c[i]) & (s >= s[i]) & ((c < c[i]) | (s > s[i])))
        front.append(not bool(dominated))
    return front


def tradeoff(rows: Sequence[Mapping[str, Any]], reference: str = FP32) -> Any:
    """A frame of measured configurations of one env, with intervals, ratios, Pareto flags.

    Each row: ``config`` (label), ``success`` (per-episode bools, same episodes for every
    row), ``seconds`` (planning time), ``linear_bytes``. Adds ``rate``, ``ci_low``/``ci_high``
    (Wilson 95 %), ``p_vs_fp32`` (exact McNemar, paired by episode), ``time_ratio`` /
    ``bytes_ratio`` (to the reference row), ``within_noise`` (p >= 0.05) and ``pareto_time`` /
    ``pareto_bytes`` (on the success-cost front).
    """
    import pandas as pd

    from quantwm.study.stats import mcnemar_exact, wilson_interval

    ref = next((r for r in rows if r["config"] == reference), None)
    if ref is None:
        raise ValueError(f"no {reference} row to compare with")
    out = []
    for r in rows:
        ok = np.asarray(r["success"], bool)
        n, k = len(ok), int(ok.sum())
        lo, hi = wilson_interval(k, n)
        p = 1.0 if r is ref else mcnemar_exact(np.asarray(ref["success"], bool), ok)
        out.append({**{key: v for key, v in r.items() if key != "success"}, "episodes": n,
                    "rate": k / n, "ci_low": lo, "ci_high": hi, "p_vs_fp32": p,
                    "time_ratio": r["seconds"] / ref["seconds"],
                    "bytes_ratio": r["linear_bytes"] / ref["linear_bytes"]})
    frame = pd.DataFrame(out)
    frame["within_noise"] = frame["p_vs_fp32"] >= 0.05
    frame["pareto_time"] = pareto_front(frame["seconds"], frame["rate"])
    frame["pareto_bytes"] = pareto_front(frame["linear_bytes"], frame["rate"])
    return frame


def cheapest_within_noise(frame: Any, cost: str) -> Any:
    """The row of least ``cost`` among those within noise of FP32 (FP32 itself included)."""
    ok = frame[frame["within_noise"]]
    return ok.loc[ok[cost].idxmin()]


def deployment_verdict(frames: Mapping[str, Any], profile: str) -> str:
    """Markdown: per env, the cheapest configuration within noise of FP32 success, in planning
    time and in weight bytes, with how much noise that is at this many episodes, and where the
    success came from (a ``success_from`` column: the store or a live plan)."""
    import pandas as pd

    lines = []
    for env, frame in frames.items():
        n = int(frame["episodes"].iloc[0])
        fast = cheapest_within_noise(frame, "seconds")
        small = cheapest_within_noise(frame, "linear_bytes")
        ref = frame[frame["config"] == FP32].iloc[0]
        lines.append(
            f"- **{env}** (`{profile}` profile, n = {n} episodes; FP32 success "
            f"{ref['rate']:.2f} [{ref['ci_low']:.2f}, {ref['ci_high']:.2f}]): the cheapest in "
            f"planning time whose success is consistent with FP32 (paired exact McNemar p >= "
            f"0.05) is **{fast['config']}** ({fast['time_ratio']:.2f}x FP32's time, success "
            f"{fast['rate']:.2f}, p = {fast['p_vs_fp32']:.2f}); the cheapest in weight bytes is "
            f"**{small['config']}** ({small['bytes_ratio']:.2f}x FP32's Linear bytes, success "
            f"{small['rate']:.2f}, p = {small['p_vs_fp32']:.2f}).")
        slower = frame[(frame["config"] != FP32) & (frame["time_ratio"] > 1.0)]
        if len(slower):
            names = ", ".join(slower["config"])
            lines.append(f"  Not faster than FP32 here: {names} (weight-only kernels dequantize "
                         "and run the float GEMM: they buy memory, not time, on a CPU).")
    sources = [f for f in frames.values() if "success_from" in f]
    if sources:
        counts = pd.concat([f["success_from"] for f in sources]).value_counts()
        lines += ["", "Where each success comes from: " + "; ".join(
            f"{what} for {n} configuration(s)" for what, n in counts.items()) + "."]
    caveat = ("With so few episodes nearly every configuration is within noise: the success "
              "columns cannot tell these configurations apart (the `full` profile's 50 "
              "episodes narrow the intervals; `smoke` only checks the pipeline)."
              if min(int(f["episodes"].iloc[0]) for f in frames.values()) < 20 else
              "Within noise means no difference detected at this n, not equality: the "
              "intervals above say how large a difference could hide.")
    return "\n".join(["### Verdict", "", *lines, "", caveat])


def plot_tradeoff(frame: Any, env: str) -> Any:
    """Success (with its interval) against planning time and against weight bytes, one colour
    per configuration, the Pareto front joined and ringed."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    colours = plt.get_cmap("tab10")
    for ax, cost, label, front in ((axes[0], "seconds", "planning time (s, one MPC round)",
                                    "pareto_time"),
                                   (axes[1], "linear_bytes", "Linear weight bytes (MiB)",
                                    "pareto_bytes")):
        scale = 2**20 if cost == "linear_bytes" else 1.0
        for i, (_, r) in enumerate(frame.iterrows()):
            err = [[r["rate"] - r["ci_low"]], [r["ci_high"] - r["rate"]]]
            ax.errorbar([r[cost] / scale], [r["rate"]], yerr=err, fmt="o", capsize=3,
                        color=colours(i % 10), label=r["config"], zorder=2)
        on = frame[frame[front]].sort_values(cost)
        ax.plot(on[cost] / scale, on["rate"], "-", color="0.3", lw=1, zorder=1)
        ax.scatter(on[cost] / scale, on["rate"], s=220, facecolors="none", edgecolors="0.2",
                   zorder=3, label="Pareto front")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("success (95 % Wilson interval)")
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.suptitle(f"{env}: success against what each lowered configuration costs")
    fig.tight_layout()
    return fig
