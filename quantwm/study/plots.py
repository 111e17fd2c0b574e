"""The notebooks' figures. Every function draws one figure from plain data and returns it.

In a notebook, show each figure where it is made: ``plots.show(plots.plot_...(...))`` displays
it and closes it, so inside a loop every figure lands under its own heading (and in a widget
callback it is never lost); ``render_html`` embeds it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

PAPER_EPISODES = 50


def _image(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """(3, H, W) float in [0, 1] or (H, W, 3) uint8 -> (H, W, 3) for imshow."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if x.ndim == 3 and x.shape[0] == 3:
        x = np.transpose(x, (1, 2, 0))
    return np.clip(x, 0, 255 if x.dtype == np.uint8 else 1)


def image_grid(rows: Mapping[str, Sequence[torch.Tensor | np.ndarray]],
               col_titles: Sequence[str] | None = None, size: float = 1.4,
               title: str | None = None) -> Figure:
    """A grid of images: one row per entry of ``rows`` (its key labels the row)."""
    n_rows, n_cols = len(rows), max(len(v) for v in rows.values())
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(size * n_cols + 1.2, size * n_rows),
                             squeeze=False)
    for i, (label, images) in enumerate(rows.items()):
        for j in range(n_cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(images):
                ax.imshow(_image(images[j]))
            else:
                ax.axis("off")
            if i == 0 and col_titles is not None and j < len(col_titles):
                ax.set_title(col_titles[j], fontsize=8)
        axes[i, 0].set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_training(histories: Mapping[str, pd.DataFrame],
                  losses: Sequence[str] = ("z_loss", "decoder")) -> Figure:
    """Stage-2 training curves (loss vs step, log scale), one panel per environment."""
    fig, axes = plt.subplots(1, len(histories), figsize=(5 * len(histories), 3.2), squeeze=False)
    for ax, (env, hist) in zip(axes[0], histories.items(), strict=True):
        for name in losses:
            if name in hist:
                ax.plot(hist["step"], hist[name], label=name)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(f"{env}: stage-2 training")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_channel_absmax(before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor],
                        layers: Sequence[str], env: str = "") -> Figure:
    """Fig. 1 style: max |x| per input channel of some Linear inputs, before/after smoothing
    (``env`` prefixes every panel's title)."""
    prefix = f"{env}: " if env else ""
    fig, axes = plt.subplots(len(layers), 2, figsize=(11, 2.1 * len(layers)), squeeze=False,
                             sharey="row")
    for i, name in enumerate(layers):
        for j, (data, what) in enumerate(((before, "before smoothing"),
                                          (after, "after smoothing"))):
            ax = axes[i, j]
            a = data[name].numpy()
            ax.bar(np.arange(a.size), a, width=1.0, color="C0" if j == 0 else "C2")
            ax.set_title(f"{prefix}{name}: {what}", fontsize=9)
            ax.set_xlim(-0.5, a.size - 0.5)
            if j == 0:
                ax.set_ylabel("max |x|")
    axes[-1, 0].set_xlabel("input channel")
    axes[-1, 1].set_xlabel("input channel")
    fig.tight_layout()
    return fig


def plot_outlier_ratios(before: pd.DataFrame, after: pd.DataFrame, env: str = "") -> Figure:
    """Max/median channel magnitude of every Linear input, before and after smoothing."""
    merged = before.merge(after[["layer", "ratio"]], on="layer", suffixes=("", "_smooth"))
    fig, ax = plt.subplots(figsize=(11, 3.4))
    x = np.arange(len(merged))
    ax.bar(x - 0.2, merged["ratio"], width=0.4, label="FP32")
    ax.bar(x + 0.2, merged["ratio_smooth"], width=0.4, label="smoothed (alpha 0.5)")
    ax.set_xticks(x, merged["layer"], rotation=90, fontsize=6)
    ax.set_yscale("log")
    ax.set_ylabel("max / median of channel max|x|")
    ax.set_title(f"{env + ': ' if env else ''}outlier ratio of every Linear input", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


KIT, PAPER, REFERENCE = "#1f77b4", "#d62728", "0.45"  # kit blue, paper red, FP32 grey
DOT_INTERVAL_MAX_ITERS = 3  # up to this many iteration columns: one dot panel per column


def _configurations(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration of a study frame, in the paper's row order."""
    order = ["row"] if "row" in frame else []
    return frame.drop_duplicates("key").sort_values(order, kind="stable") if order else \
        frame.drop_duplicates("key")


def _row_blocks(configs: pd.DataFrame) -> np.ndarray:
    """A block number per configuration, for shading the paper's row blocks: runs of equal bits
    (Tables 1-6: the methods vary within a block) or of equal method (Tables 7-8: the bits vary
    within), whichever makes fewer blocks."""
    cols = [c for c in ("w_bits", "a_bits", "group", "act_granularity", "enc_w", "enc_a",
                        "pred_w", "pred_a") if c in configs]
    candidates = [configs[cols].map(str).agg("|".join, axis=1)] if cols else []
    if "method" in configs:
        candidates.append(configs["method"])
    runs = [(sig != sig.shift()).cumsum().to_numpy() - 1 for sig in candidates]
    return min(runs, key=lambda r: r.max()) if runs else np.zeros(len(configs), int)


def _title(frame: pd.DataFrame, title: str) -> str:
    """``Table 1 · wall`` (from the frame) unless ``title`` is given; the env is always named."""
    if title:
        envs = sorted(frame["env"].unique()) if "env" in frame else []
        missing = [e for e in envs if e not in title]
        return f"{title} · {', '.join(missing)}" if missing else title
    tables = sorted(frame["table"].unique()) if "table" in frame else []
    envs = ", ".join(sorted(frame["env"].unique())) if "env" in frame else ""
    head = "Table " + ", ".join(str(t) for t in tables) if tables else "success"
    return f"{head} · {envs}" if envs else head


def plot_table(frame: pd.DataFrame, title: str = "") -> Figure:
    """Success of every configuration of a study frame, the kit beside the paper.

    Up to :data:`DOT_INTERVAL_MAX_ITERS` iteration columns (the quick and full profiles: 0 and
    5 iters): one panel per column, one line per configuration (paper order, top to bottom),
    the kit's rate with its 95 % interval (blue) and the paper's rate (red diamond); grey lines
    mark FP32's kit (dashed) and paper (dotted) rate. More columns: :func:`plot_success_facets`.
    Every configuration of ``frame`` is drawn; nothing is dropped."""
    iters = sorted(int(k) for k in frame["iters"].unique())
    if len(iters) > DOT_INTERVAL_MAX_ITERS:
        return plot_success_facets(frame, title)
    configs = _configurations(frame)
    n = len(configs)
    y = {key: i for i, key in enumerate(configs["key"])}
    blocks = _row_blocks(configs)
    width = max(len(str(s)) for s in configs["label"])
    fig, axes = plt.subplots(1, len(iters), sharey=True, squeeze=False, layout="constrained",
                             figsize=(1.2 + 0.065 * width + 3.3 * len(iters), 1.5 + 0.22 * n))
    axes = axes[0]
    for ax, k in zip(axes, iters, strict=True):
        at = frame[frame["iters"] == k]
        at = at.assign(y=at["key"].map(y))
        for b in range(blocks.max() + 1):
            if b % 2:
                rows = np.flatnonzero(blocks == b)
                ax.axhspan(rows.min() - 0.5, rows.max() + 0.5, color="0.93", zorder=0)
        fp = at[at["method"] == "FP32"] if "method" in at else at.iloc[:0]
        if not fp.empty:
            ax.axvline(fp["success"].iloc[0], color=REFERENCE, ls="--", lw=0.8, zorder=1,
                       label="FP32, kit")
            if "paper" in fp and pd.notna(fp["paper"].iloc[0]):
                ax.axvline(fp["paper"].iloc[0], color=REFERENCE, ls=":", lw=0.8, zorder=1,
                           label="FP32, paper")
        kit_label = f"kit ({int(at['n'].max())} episodes, 95 % interval)"
        for i, r in enumerate(at.itertuples()):  # one artist per configuration, gid = its key
            ax.errorbar([r.success], [r.y - 0.12], xerr=[[max(r.success - r.lo, 0)],
                                                          [max(r.hi - r.success, 0)]],
                        fmt="o", ms=4, color=KIT, elinewidth=1.2, capsize=2, zorder=3,
                        label=kit_label if i == 0 else None)[0].set_gid(r.key)
        if "paper" in at and at["paper"].notna().any():
            ax.plot(at["paper"], at["y"] + 0.12, "D", ms=4, color=PAPER,
                    label=f"paper ({PAPER_EPISODES} episodes)", zorder=3)
        ax.set_title(f"{k} iters", fontsize=9)
        ax.set_xlim(-0.03, 1.03)
        ax.set_xlabel("success rate", fontsize=8)
        ax.grid(axis="x", color="0.85", lw=0.5)
        ax.tick_params(labelsize=7)
    axes[0].set_yticks(range(n), configs["label"], fontsize=7)
    axes[0].set_ylim(n - 0.5, -0.5)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.suptitle(f"{_title(frame, title)}: {n} configurations, kit vs paper", fontsize=10)
    fig.legend(handles, labels, loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    return fig


def plot_success_facets(frame: pd.DataFrame, title: str = "", ncols: int = 3) -> Figure:
    """Success vs planning iterations, one panel per method (small multiples), every
    configuration a line of its own colour: kit solid with its 95 % band, paper dashed at the
    same iterations; FP32 grey in every panel. The x axis spans the kit's iterations only."""
    iters = sorted(int(k) for k in frame["iters"].unique())
    configs = _configurations(frame)
    methods = [m for m in configs["method"].unique() if m != "FP32"] or ["FP32"]
    nrows = -(-len(methods) // ncols)
    cols = min(ncols, len(methods))
    fig, axes = plt.subplots(nrows, cols, squeeze=False, sharex=True, sharey=True,
                             layout="constrained", figsize=(4.4 * cols, 3.3 * nrows))
    fp = frame[frame["method"] == "FP32"].sort_values("iters")
    for ax, method in zip(axes.flat, methods, strict=False):
        if not fp.empty and method != "FP32":
            ax.plot(fp["iters"], fp["success"], "-", color=REFERENCE, lw=1, label="FP32 kit",
                    gid=fp["key"].iloc[0])
        mine = configs[configs["method"] == method]
        cmap = plt.get_cmap("tab10" if len(mine) <= 10 else "tab20")
        for i, key in enumerate(mine["key"]):
            sub = frame[frame["key"] == key].sort_values("iters")
            color = cmap(i % cmap.N)
            name = str(sub["label"].iloc[0]).removeprefix(f"{method} ")
            ax.plot(sub["iters"], sub["success"], "o-", ms=3, color=color, label=name, gid=key)
            ax.fill_between(sub["iters"], sub["lo"], sub["hi"], color=color, alpha=0.06)
            if "paper" in sub and sub["paper"].notna().any():
                ax.plot(sub["iters"], sub["paper"], "x--", ms=3, color=color, alpha=0.8)
        ax.set_title(method, fontsize=9)
        ax.set_xlim(min(iters) - 0.5, max(iters) + 0.5)
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=6, loc="lower right")
    for ax in list(axes.flat)[len(methods):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("planning iterations (MPC rounds)", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("success rate", fontsize=8)
    fig.suptitle(f"{_title(frame, title)}: {len(configs)} configurations "
                 f"(solid: kit, dashed: paper)", fontsize=10)
    return fig


def plot_success(frame: pd.DataFrame, title: str = "") -> Figure:
    """Every configuration of a study frame against the paper (:func:`plot_table`)."""
    return plot_table(frame, title)


def configurations_drawn(fig: Figure) -> int:
    """How many distinct configurations a :func:`plot_table` / :func:`plot_success_facets`
    figure draws (each kit artist carries its configuration's key as ``gid``); for checks that
    no row is dropped."""
    return len({a.get_gid() for a in fig.findobj() if a.get_gid()})


def show(fig: Figure) -> None:
    """Display ``fig`` here and close it: in a loop each figure appears under the heading
    displayed before it (the inline backend would otherwise show every open figure at the
    end of the cell), and in a widget callback the plot is never lost."""
    from IPython.display import display

    display(fig)
    plt.close(fig)


def plot_loss_curves(frame: pd.DataFrame, value: str = "latent_mse", title: str = "") -> Figure:
    """Fig. 3: mean (over episodes) of ``value`` per MPC round, one line per configuration.

    ``frame`` is :func:`quantwm.study.analysis.loss_frame`: every episode in every round (an
    episode that succeeded keeps the values it stopped with), so each round's mean is over the
    same episodes; filter on ``planned`` for values that exist only while an episode plans."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for i, (label, sub) in enumerate(frame.groupby("label", sort=False)):
        mean = sub.groupby("round")[value].mean()
        ax.plot(mean.index, mean.values, "o-", color=f"C{i % 10}", label=label)
    ax.set_xlabel("MPC round (iteration)")
    ax.set_ylabel({"latent_mse": "latent MSE to goal", "plan_loss": "CEM planning loss"}.get(
        value, value))
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


HIGHLIGHT_MARKERS = "osD^vP*X<>ph"


def plot_loss_vs_success(alignment: pd.DataFrame, title: str = "",
                         highlight: Collection[str] = (), x: str = "loss_last",
                         ys: Sequence[str] = ("success", "goal_distance")) -> Figure:
    """One point per configuration: ``x`` (final latent MSE) against each of ``ys``, one panel
    each. Points are coloured by method; the configurations whose key or label is in
    ``highlight`` (e.g. Fig. 3's few) get a black marker of their own, named in the legend, so
    a hundred configurations stay legible (no text on the points)."""
    ys = [y for y in ys if y in alignment]
    fig, axes = plt.subplots(1, len(ys), figsize=(4.6 * len(ys) + 2.4, 3.8), squeeze=False,
                             layout="constrained")
    method = alignment["label"].str.split().str[0]
    marked = alignment[alignment["key"].isin(highlight) | alignment["label"].isin(highlight)]
    for ax, col in zip(axes[0], ys, strict=True):
        for i, m in enumerate(dict.fromkeys(method)):
            sub = alignment[method == m]
            ax.scatter(sub[x], sub[col], s=16, color=f"C{i % 10}", alpha=0.7, label=m,
                       edgecolor="none")
        for j, (_, r) in enumerate(marked.iterrows()):
            ax.scatter([r[x]], [r[col]], s=55, marker=HIGHLIGHT_MARKERS[j % 12],
                       facecolor="none", edgecolor="k", lw=0.9, label=r["label"], zorder=3)
        if (alignment[x] > 0).all() and alignment[x].max() > 20 * alignment[x].min():
            ax.set_xscale("log")  # > 20x spans a decade: label the decades, not 3x10^-2 ...
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel({"loss_last": "final latent MSE to goal"}.get(x, x.replace("_", " ")))
        ax.set_ylabel(col.replace("_", " "))
    fig.legend(*axes[0, -1].get_legend_handles_labels(), loc="outside right center",
               fontsize=7, title="method (colour); highlighted", title_fontsize=7)
    fig.suptitle(f"{title}: {len(alignment)} configurations, {len(marked)} highlighted",
                 fontsize=9)
    return fig


def plot_frame_errors(errors: pd.DataFrame, title: str = "") -> Figure:
    """Pixel MSE vs frame of the rollout (solid) and of the reconstruction (dotted)."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for i, (label, sub) in enumerate(errors.groupby("config", sort=False)):
        ax.plot(sub["frame"], sub["rollout_mse"], "o-", color=f"C{i % 10}", label=label)
        ax.plot(sub["frame"], sub["recon_mse"], ":", color=f"C{i % 10}")
    ax.set_xlabel("frame")
    ax.set_ylabel("pixel MSE vs ground truth")
    ax.set_title(title + "  (solid: open-loop rollout, dotted: reconstruction)", fontsize=9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig
