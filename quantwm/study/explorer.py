"""An ipywidgets explorer over stored results: env, method, bits, granularity -> table and plot.

    from quantwm.study.explorer import explorer
    explorer(frame)          # frame: study_frame(...) rows of one or more tables, concatenated

Headless (papermill, nbconvert) the widget has no front end to talk to; :func:`explorer` then
still works and additionally shows the default selection statically, so the rendered report
is never empty. :func:`select` is the pure filter behind it.
"""

from __future__ import annotations

import pandas as pd

ANY = "(any)"


def with_choices(frame: pd.DataFrame) -> pd.DataFrame:
    """Add the explorer's ``bits`` (``W4A8``, ``E:W4A8 P:W8A8``) and ``granularity`` columns."""
    def bits(r: pd.Series) -> str:
        if pd.notna(r["enc_w"]):
            return f"E:W{r['enc_w']:.0f}A{r['enc_a']:.0f} P:W{r['pred_w']:.0f}A{r['pred_a']:.0f}"
        return f"W{r['w_bits']:.0f}A{r['a_bits']:.0f}"

    def gran(r: pd.Series) -> str:
        group = "per-channel" if pd.isna(r["group"]) else f"G{r['group']:.0f}"
        act = r["act_granularity"] if isinstance(r["act_granularity"], str) else ""
        act = act if "A32" not in bits(r) or pd.notna(r["enc_w"]) else ""
        return f"{group} {act}".strip()

    out = frame.copy()
    out["bits"] = out.apply(bits, axis=1)
    out["granularity"] = out.apply(gran, axis=1)
    return out


def select(frame: pd.DataFrame, env: str = ANY, method: str = ANY, bits: str = ANY,
           granularity: str = ANY) -> pd.DataFrame:
    """The rows of ``with_choices(frame)`` matching every choice (``ANY`` matches all); FP32
    rows of the chosen env are always kept as the reference."""
    f = frame
    keep = pd.Series(True, index=f.index)
    for col, value in (("method", method), ("bits", bits), ("granularity", granularity)):
        if value != ANY:
            keep &= f[col] == value
    keep |= f["method"] == "FP32"
    if env != ANY:
        keep &= f["env"] == env
    return f[keep].drop_duplicates(["env", "key", "iters"])


def summary_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Kit rate [95 % interval] and the paper's rate per configuration and iteration."""
    if rows.empty:
        return pd.DataFrame()
    cells = rows.assign(kit=[f"{s:.2f} [{lo:.2f}, {hi:.2f}]" for s, lo, hi in
                             zip(rows["success"], rows["lo"], rows["hi"], strict=True)],
                        paper=rows["paper"].map(lambda v: "" if pd.isna(v) else f"{v:.2f}"))
    wide = cells.pivot_table(index=["env", "label"], columns="iters", values=["kit", "paper"],
                             aggfunc="first", sort=False)
    return wide


def explorer(frame: pd.DataFrame, show_default: bool = True):
    """Dropdowns (env, method, bits, granularity) driving a table and a success plot."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    from quantwm.study.plots import plot_success

    frame = with_choices(frame)

    def options(col: str) -> list[str]:
        return [ANY, *sorted(frame[col].dropna().unique().tolist())]

    env = widgets.Dropdown(options=options("env"), description="env")
    method = widgets.Dropdown(options=options("method"), description="method")
    bits = widgets.Dropdown(options=options("bits"), description="bits")
    gran = widgets.Dropdown(options=options("granularity"), description="granularity")

    def show(env: str, method: str, bits: str, granularity: str) -> None:
        rows = select(frame, env, method, bits, granularity)
        if rows.empty:
            print("no stored result matches")
            return
        display(summary_table(rows))
        plot_success(rows, title=f"{env} {method} {bits} {granularity}")
        plt.show()

    out = widgets.interactive_output(show, {"env": env, "method": method, "bits": bits,
                                            "granularity": gran})
    ui = widgets.VBox([widgets.HBox([env, method]), widgets.HBox([bits, gran]), out])
    display(ui)
    if show_default:  # a static copy for headless runs and rendered HTML
        show(env.value, method.value, bits.value, gran.value)
    return ui
