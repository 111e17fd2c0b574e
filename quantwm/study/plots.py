"""The notebooks' figures. Every function draws one figure from plain data and returns it.

In a notebook, assign the result (``fig = plot_...(...)``): the inline backend shows the figure
once and ``render_html`` embeds it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure


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
                        layers: Sequence[str]) -> Figure:
    """Fig. 1 style: max |x| per input channel of some Linear inputs, before/after smoothing."""
    fig, axes = plt.subplots(len(layers), 2, figsize=(11, 2.1 * len(layers)), squeeze=False,
                             sharey="row")
    for i, name in enumerate(layers):
        for j, (data, what) in enumerate(((before, "before smoothing"),
                                          (after, "after smoothing"))):
            ax = axes[i, j]
            a = data[name].numpy()
            ax.bar(np.arange(a.size), a, width=1.0, color="C0" if j == 0 else "C2")
            ax.set_title(f"{name}: {what}", fontsize=9)
            ax.set_xlim(-0.5, a.size - 0.5)
            if j == 0:
                ax.set_ylabel("max |x|")
    axes[-1, 0].set_xlabel("input channel")
    axes[-1, 1].set_xlabel("input channel")
    fig.tight_layout()
    return fig


def plot_outlier_ratios(before: pd.DataFrame, after: pd.DataFrame) -> Figure:
    """Max/median channel magnitude of every Linear input, before and after smoothing."""
    merged = before.merge(after[["layer", "ratio"]], on="layer", suffixes=("", "_smooth"))
    fig, ax = plt.subplots(figsize=(11, 3.4))
    x = np.arange(len(merged))
    ax.bar(x - 0.2, merged["ratio"], width=0.4, label="FP32")
    ax.bar(x + 0.2, merged["ratio_smooth"], width=0.4, label="smoothed (alpha 0.5)")
    ax.set_xticks(x, merged["layer"], rotation=90, fontsize=6)
    ax.set_yscale("log")
    ax.set_ylabel("max / median of channel max|x|")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_success(frame: pd.DataFrame, title: str = "", max_lines: int = 12) -> Figure:
    """Success vs planning iterations per configuration: kit (solid, 95 % band) and paper
    (dashed) for the rows of a :func:`quantwm.study.analysis.study_frame`."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for i, (label, sub) in enumerate(frame.groupby("label", sort=False)):
        if i >= max_lines:
            break
        color = f"C{i % 10}"
        ax.plot(sub["iters"], sub["success"], "o-", color=color, label=label)
        ax.fill_between(sub["iters"], sub["lo"], sub["hi"], color=color, alpha=0.12)
        if {"table", "row"} <= set(sub.columns):  # the paper's whole curve, all its iters
            from quantwm.study.analysis import paper_success

            paper = paper_success(int(sub["table"].iloc[0])).loc[int(sub["row"].iloc[0])]
            ax.plot(paper.index, paper.values, "x--", color=color, alpha=0.7)
        elif sub["paper"].notna().any():
            ax.plot(sub["iters"], sub["paper"], "x--", color=color, alpha=0.7)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("planning iterations (MPC rounds)")
    ax.set_ylabel("success rate")
    ax.set_title(f"{title}  (solid: kit, dashed: paper)".strip(), fontsize=9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


def plot_loss_curves(frame: pd.DataFrame, value: str = "latent_mse", title: str = "") -> Figure:
    """Fig. 3: mean (over episodes) of ``value`` per MPC round, one line per configuration.

    ``frame`` is :func:`quantwm.study.analysis.loss_frame`; an episode contributes until it
    succeeds (its later rounds are not planned)."""
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


def plot_loss_vs_success(alignment: pd.DataFrame, title: str = "") -> Figure:
    """Final latent MSE vs success (left) and vs goal distance (right), one point per config."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for ax, col in zip(axes, ("success", "goal_distance"), strict=True):
        ax.scatter(alignment["loss_last"], alignment[col])
        for _, r in alignment.iterrows():
            ax.annotate(r["label"], (r["loss_last"], r[col]), fontsize=6)
        ax.set_xlabel("final latent MSE to goal")
        ax.set_ylabel(col.replace("_", " "))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
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
