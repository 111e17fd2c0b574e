"""Batch execution of the numbered notebooks: papermill runs them, nbconvert renders HTML.

Every notebook under ``notebooks/`` whose name starts with two digits is a report. Each opens
with a cell tagged ``parameters`` (papermill's convention) holding at least ``profile``,
``device`` and ``results_dir``; the same notebook runs in seconds (``smoke``), minutes
(``quick``) or the paper's whole grid (``full``) by parameters alone.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantwm.study.profiles import STUDY_PROFILES
from quantwm.utils import REPO_DIR, atomic_path, atomic_write_text

NOTEBOOK_DIR = REPO_DIR / "notebooks"
PROFILES = tuple(STUDY_PROFILES)
_NUMBERED = re.compile(r"^\d\d_.+\.ipynb$")


@dataclass(frozen=True)
class NotebookRun:
    name: str
    executed: Path
    html: Path
    seconds: float


def numbered_notebooks(directory: Path = NOTEBOOK_DIR) -> list[Path]:
    """The report notebooks in execution order (00_..., 01_..., ...)."""
    return sorted(p for p in Path(directory).iterdir() if _NUMBERED.match(p.name))


def select(notebooks: list[Path], only: Iterable[str] | None) -> list[Path]:
    """Keep the notebooks whose name or number prefix is in ``only``; unknown names fail."""
    if not only:
        return notebooks
    chosen = []
    for key in only:
        matches = [p for p in notebooks if p.stem == key or p.name == key or p.stem[:2] == key]
        if not matches:
            names = ", ".join(p.stem for p in notebooks)
            raise ValueError(f"unknown notebook {key!r}; available: {names}")
        chosen.extend(m for m in matches if m not in chosen)
    return sorted(chosen)


def run_notebooks(
    profile: str = "quick",
    output_dir: str | Path = REPO_DIR / "reports",
    only: Iterable[str] | None = None,
    parameters: Mapping[str, Any] | None = None,
    notebook_dir: str | Path = NOTEBOOK_DIR,
    kernel_name: str = "python3",
    log_output: bool = False,
) -> list[NotebookRun]:
    """Execute the numbered notebooks in order into ``output_dir`` and render each to HTML.

    The executed notebook and its HTML are written atomically, so an interrupted batch never
    leaves a half-written report behind; rerunning executes again (the notebooks themselves
    read finished experiments from the result store and only run what is missing).
    """
    import papermill

    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {PROFILES}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    params = {"profile": profile, **(parameters or {})}
    runs = []
    for source in select(numbered_notebooks(Path(notebook_dir)), only):
        executed = output_dir / source.name
        start = time.perf_counter()
        with atomic_path(executed) as tmp:
            papermill.execute_notebook(
                str(source), str(tmp), parameters=params, kernel_name=kernel_name,
                cwd=str(source.parent), log_output=log_output, progress_bar=False,
                config=_kernel_config(),
            )
        html = output_dir / f"{source.stem}.html"
        atomic_write_text(html, render_html(executed))
        runs.append(NotebookRun(source.stem, executed, html, time.perf_counter() - start))
    return runs


def _kernel_config() -> Any:
    """Kernel-manager settings: CurveZMQ-encrypt the kernel's local sockets where pyzmq can
    (otherwise ipykernel warns on every notebook that they are plain TCP)."""
    import zmq
    from traitlets.config import Config

    return Config({"KernelManager": {"transport_encryption": "auto"}} if zmq.has("curve") else {})


def render_html(notebook: str | Path) -> str:
    """A standalone HTML page of an executed notebook, figures embedded, input prompts kept."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(notebook), as_version=4)
    body, _ = HTMLExporter(embed_images=True).from_notebook_node(nb)
    return body
