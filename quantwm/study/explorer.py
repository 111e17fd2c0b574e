"""An ipywidgets explorer over every stored table: table, method, bits, granularity -> the
table in the paper's layout and its kit-vs-paper plot.

    from quantwm.study import report
    from quantwm.study.explorer import explorer
    frame = report.stored_frames(range(1, 9), study, store)   # Tables 1-8, nothing is run
    explorer(frame, store)

It lives in ``notebooks/explorer.ipynb``, which the batch report does not execute (an
interactive tool, not a report). Each change redraws into the widget's own output area with
``display(fig); plt.close(fig)`` (``plt.show()`` in a widget callback loses the plot now and
then under the inline backend). No static copy is printed under the widget: a kernel cannot
tell whether a live front end will render the widget (papermill, nbconvert and JupyterLab look
the same from inside), so a copy "for headless runs" would also sit, stale, under every live
widget. The initial selection is drawn into the widget itself; for a static rendering call
:func:`view` (what the widget draws) and display its parts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from quantwm.study.store import ResultStore

ANY = "(any)"
FILTERS = ("method", "bits", "granularity")


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
    out["bits"] = out.apply(bits, axis=1) if len(out) else pd.Series(dtype=str)
    out["granularity"] = out.apply(gran, axis=1) if len(out) else pd.Series(dtype=str)
    return out


def select(frame: pd.DataFrame, env: str = ANY, method: str = ANY, bits: str = ANY,
           granularity: str = ANY, table: int | str = ANY) -> pd.DataFrame:
    """The rows of ``with_choices(frame)`` matching every choice (``ANY`` matches all); FP32
    rows of the chosen env (and table) are always kept as the reference."""
    f = frame
    keep = pd.Series(True, index=f.index)
    for col, value in (("method", method), ("bits", bits), ("granularity", granularity)):
        if value != ANY:
            keep &= f[col] == value
    keep |= f["method"] == "FP32"
    if env != ANY:
        keep &= f["env"] == env
    if table != ANY:
        keep &= f["table"] == int(table)
    by = [c for c in ("table", "env", "key", "iters") if c in f]
    return f[keep].drop_duplicates(by)


def options(frame: pd.DataFrame, column: str, table: int | str = ANY) -> list[str]:
    """``ANY`` and the values of ``column`` among the (non-FP32) rows of ``table``."""
    f = frame if table == ANY else frame[frame["table"] == int(table)]
    values = f.loc[f["method"] != "FP32", column].dropna().unique().tolist()
    return [ANY, *sorted(values)]


@dataclass
class View:
    """What the explorer draws for one selection: a heading, the styled table, the figure."""

    heading: str
    table: Any  # pandas Styler of quantwm.study.report.paper_table
    figure: Any  # matplotlib Figure (close it after showing it)
    rows: pd.DataFrame  # the selected study-frame rows


def view(frame: pd.DataFrame, store: ResultStore | None, table: int, method: str = ANY,
         bits: str = ANY, granularity: str = ANY) -> View | None:
    """The explorer's rendering of one selection of ``with_choices(frame)`` (None: no row)."""
    from quantwm.study import plots, report

    rows = select(frame, method=method, bits=bits, granularity=granularity, table=table)
    if rows.empty:
        return None
    chosen = ", ".join(v for v in (method, bits, granularity) if v != ANY) or "every row"
    heading = report.table_heading(rows, note=chosen)
    styled = report.style_table(report.paper_table(rows, store))
    return View(heading, styled, plots.plot_table(rows), rows)


def explorer(frame: pd.DataFrame, store: ResultStore | None = None, table: int | None = None):
    """Dropdowns (table, method, bits, granularity) driving the paper-layout table and the
    kit-vs-paper plot of the selection (FP32 stays as the reference). ``store`` gives the
    paired test against FP32 (None: no p-values). Returns the widget, already displayed."""
    import ipywidgets as widgets
    from IPython.display import Markdown, display

    from quantwm.study import plots

    frame = with_choices(frame)
    tables = sorted(int(t) for t in frame["table"].unique()) if len(frame) else []
    if not tables:
        display(Markdown("No stored result to explore: run `make report` (or `quantwm sweep`)."))
        return None
    names = [(f"Table {t} ({frame.loc[frame['table'] == t, 'env'].iloc[0]})", t)
             for t in tables]
    table_dd = widgets.Dropdown(options=names, value=table if table in tables else tables[0],
                                description="table")
    filters = {col: widgets.Dropdown(options=options(frame, col, table_dd.value),
                                     description=col) for col in FILTERS}
    out = widgets.Output()
    updating = False

    def render(_change: Any = None) -> None:
        if updating:
            return
        v = view(frame, store, table_dd.value, **{c: d.value for c, d in filters.items()})
        with out:
            out.clear_output(wait=True)
            if v is None:
                display(Markdown("No stored result matches."))
                return
            display(Markdown(v.heading))
            display(v.table)
            plots.show(v.figure)

    def on_table(_change: Any) -> None:
        nonlocal updating
        updating = True
        try:
            for col, dd in filters.items():
                dd.options = options(frame, col, table_dd.value)
                dd.value = ANY
        finally:
            updating = False
        render()

    table_dd.observe(on_table, names="value")
    for dd in filters.values():
        dd.observe(render, names="value")
    ui = widgets.VBox([widgets.HBox([table_dd, filters["method"]]),
                       widgets.HBox([filters["bits"], filters["granularity"]]), out])
    render()
    display(ui)
    return ui
