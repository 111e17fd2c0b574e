"""Batch execution of the numbered notebooks: papermill runs them, nbconvert renders HTML.

Every notebook under ``notebooks/`` whose name starts with two digits is a report. Each opens
with a cell tagged ``parameters`` (papermill's convention) holding at least ``profile``,
``device`` and ``results_dir``; the same notebook runs in seconds (``smoke``), minutes
(``quick``) or the paper's whole grid (``full``) by parameters alone. The parameters are
annotated with their types (``papermill --help-notebook notebooks/02_weight_only.ipynb`` lists
them) and the next cell checks them (:func:`check_parameters`): a bad value fails at once, in one
line naming it and the allowed ones.

Kernel transport: ipykernel warns "Kernel is running over TCP without encryption" unless the
kernel manager provisions CurveZMQ keys, which only its ``transport_encryption`` setting asks
for. :func:`run_notebooks` (``quantwm notebooks``, ``make report``) sets it; so can a Python
caller, ``papermill.execute_notebook(src, out, config=kernel_config())``. The ``papermill``
command cannot: it builds its kernel manager without reading any Jupyter configuration file
(it is not a traitlets application; a ``jupyter_config.json`` setting
``KernelManager.transport_encryption`` is ignored), and nothing on the kernel's side can encrypt
a connection the manager opened in plain TCP. The warning is then true: the kernel's sockets
listen on localhost unencrypted, which matters only on a machine shared with untrusted users.
To silence it for every kernel of the kit's virtual environment, let the IPython kernel drop
that one message (a file IPython reads from ``<venv>/etc/ipython``)::

    mkdir -p .venv/etc/ipython
    cat >> .venv/etc/ipython/ipython_kernel_config.py <<'END'
    import logging
    logging.getLogger("IPKernelApp").addFilter(
        lambda record: "without encryption" not in record.getMessage())
    END
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantwm.study.profiles import REPORT_PROFILE, STUDY_PROFILES
from quantwm.utils import REPO_DIR, atomic_path, atomic_write_text

NOTEBOOK_DIR = REPO_DIR / "notebooks"
PROFILES = tuple(STUDY_PROFILES)
_NUMBERED = re.compile(r"^\d\d_.+\.ipynb$")


def _not_allowed(name: str, value: Any, expected: str) -> ValueError:
    return ValueError(f"notebook parameter {name}={value!r} is not allowed; expected {expected}")


def _choice(name: str, value: Any, allowed: Iterable[Any], note: str = "") -> None:
    allowed = tuple(allowed)
    if isinstance(value, bool) or value not in allowed:
        raise _not_allowed(name, value, f"one of {', '.join(map(repr, allowed))}{note}")


def _directory(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, str | os.PathLike):
        raise _not_allowed(name, value, "a directory (a path string) or None for the default")


def _device(name: str, value: Any) -> None:
    from quantwm.cli import torch_device

    if not isinstance(value, str):
        raise _not_allowed(name, value, "a torch device name such as 'cpu', 'cuda', 'cuda:1' "
                                        "or 'mps'")
    try:
        torch_device(value, flag=f"notebook parameter {name}=")
    except ValueError as err:
        text = str(err).replace("= '", "='").replace("(use --device cpu)", "(use 'cpu')")
        raise ValueError(text) from None


def _count(name: str, value: Any, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _not_allowed(name, value, "an integer >= 1" + " or None for the default" * optional)


def _flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise _not_allowed(name, value, "True or False")


def check_parameters(**parameters: Any) -> None:
    """Check a numbered notebook's parameters (the first cell after its parameters cell calls
    this): each bad value fails with one line naming it and the allowed values.

    ``profile``: a study profile (:data:`PROFILES`); ``env``: ``"wall"``, ``"pusht"`` or None
    (both); ``variant``: ``"paper"`` or ``"designed"``; ``device``: a torch device this machine
    has; ``results_dir`` / ``cache_dir``: a path or None (the default); ``threads``: an integer
    >= 1 or None; ``timing_episodes``: an integer >= 1; ``live``: a bool. Any other name is a
    TypeError.
    """
    from quantwm.study.grid import METHOD_VARIANTS
    from quantwm.utils import ENV_NAMES

    checks = {
        "profile": lambda n, v: _choice(n, v, PROFILES),
        "env": lambda n, v: _choice(n, v, (*ENV_NAMES, None), " (None: both)"),
        "variant": lambda n, v: _choice(n, v, METHOD_VARIANTS),
        "device": _device,
        "results_dir": _directory,
        "cache_dir": _directory,
        "threads": lambda n, v: _count(n, v, optional=True),
        "timing_episodes": _count,
        "live": _flag,
    }
    unknown = sorted(set(parameters) - set(checks))
    if unknown:
        raise TypeError(f"unknown notebook parameter(s) {', '.join(unknown)}; known: "
                        f"{', '.join(checks)}")
    for name, value in parameters.items():
        checks[name](name, value)


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
    profile: str = REPORT_PROFILE,
    output_dir: str | Path = REPO_DIR / "reports",
    only: Iterable[str] | None = None,
    parameters: Mapping[str, Any] | None = None,
    notebook_dir: str | Path = NOTEBOOK_DIR,
    kernel_name: str = "python3",
    log_output: bool = False,
    no_input: bool = False,
    progress: bool = False,
) -> list[NotebookRun]:
    """Execute the numbered notebooks in order into ``output_dir`` and render each to HTML.

    The executed notebook and its HTML are written atomically, so an interrupted batch never
    leaves a half-written report behind; rerunning executes again (the notebooks themselves
    read finished experiments from the result store and only run what is missing).

    A notebook that fails is named in a one-line error on stderr; papermill's partial executed
    copy (the failing cell's error in it) is kept as ``<name>.failed.ipynb`` and the notebook's
    reports of an earlier run are removed, so an old report is never taken for a new one. The
    batch goes on with the other notebooks and then raises :class:`NotebooksFailed`. Ctrl-C or
    SIGTERM stops the batch with :class:`quantwm.study.interrupt.Interrupted`, whose
    ``detail`` names the notebook stopped, where its partial copy is, and those not run.

    ``no_input``: the HTML reports leave the code cells' inputs out (outputs only), for
    sharing; the executed notebooks keep everything. ``progress``: a line on stderr as each
    notebook starts (which one, how far, the time so far).
    """
    import papermill

    from quantwm.study.interrupt import Interrupted, interruption, terminate_as_interrupt

    params = {"profile": profile, **(parameters or {})}
    if params["profile"] not in PROFILES:
        raise ValueError(f"unknown profile {params['profile']!r}; expected one of {PROFILES}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    runs: list[NotebookRun] = []
    failures: list[NotebookFailure] = []
    sources = select(numbered_notebooks(Path(notebook_dir)), only)
    for i, source in enumerate(sources):
        executed = output_dir / source.name
        html = output_dir / f"{source.stem}.html"
        partial = output_dir / f"{source.stem}.failed.ipynb"
        start = time.perf_counter()
        if progress:
            print(f"[{i + 1}/{len(sources)}] {source.stem} ...", file=sys.stderr, flush=True)
        kept = None
        try:
            with terminate_as_interrupt() as signals, atomic_path(executed) as tmp:
                try:
                    papermill.execute_notebook(
                        str(source), str(tmp), parameters=params, kernel_name=kernel_name,
                        cwd=str(source.parent), log_output=log_output, progress_bar=False,
                        config=kernel_config(),
                    )
                except BaseException as err:
                    kept = _keep_partial(tmp, partial)
                    if signals.signum is not None and not isinstance(err, KeyboardInterrupt):
                        # the kernel's shutdown made the cell fail: the batch was interrupted
                        raise Interrupted(signals.signum) from None
                    raise
        except KeyboardInterrupt as err:
            stop = interruption(err)
            rest = [s.stem for s in sources[i + 1:]]
            stop.detail = (f"while running notebook {source.stem}"
                           + (f" (partial executed copy: {kept})" if kept else "")
                           + (f"; not run: {', '.join(rest)}" if rest else ""))
            raise stop from None
        except Exception as err:  # a cell raised, the kernel died, ...: report, go on
            for stale in (executed, html, *(() if kept else (partial,))):
                stale.unlink(missing_ok=True)
            failure = NotebookFailure(source.stem, kept, _error_line(err))
            failures.append(failure)
            print(f"error: {failure}", file=sys.stderr, flush=True)
            continue
        partial.unlink(missing_ok=True)  # of an earlier failed run
        atomic_write_text(html, render_html(executed, no_input=no_input))
        runs.append(NotebookRun(source.stem, executed, html, time.perf_counter() - start))
    if failures:
        raise NotebooksFailed(runs, failures, len(sources))
    return runs


@dataclass(frozen=True)
class NotebookFailure:
    """A notebook of a batch that failed: its name, its partial executed copy (None when the
    kernel never ran it) and the error in one line."""

    name: str
    partial: Path | None
    error: str

    def __str__(self) -> str:
        where = (f"partial executed copy: {self.partial}" if self.partial
                 else "no partial copy (it did not start)")
        return f"notebook {self.name} failed: {self.error}; {where}"


class NotebooksFailed(RuntimeError):
    """Some notebooks of a batch failed (the others ran): ``runs`` and ``failures``."""

    def __init__(self, runs: list[NotebookRun], failures: list[NotebookFailure],
                 total: int) -> None:
        self.runs, self.failures = runs, failures
        names = ", ".join(f.name for f in failures)
        super().__init__(f"{len(failures)} of {total} notebook(s) failed: {names} (each "
                         "named above with its partial executed copy); the others ran")


def _keep_partial(tmp: Path, partial: Path) -> Path | None:
    """Move papermill's partial output ``tmp`` to ``partial``; its path, or None if empty."""
    if tmp.exists() and tmp.stat().st_size > 0:
        os.replace(tmp, partial)
        return partial
    return None


def _error_line(err: BaseException) -> str:
    """A notebook failure in one line: the cell and the exception for a cell error."""
    from papermill.exceptions import PapermillExecutionError

    if isinstance(err, PapermillExecutionError):
        text = f"cell In [{err.exec_count}] raised {err.ename}: {err.evalue}"
    else:
        text = f"{type(err).__name__}: {err}"
    return " ".join(text.split())[:400]


def kernel_config() -> Any:
    """Kernel-manager settings: CurveZMQ-encrypt the kernel's local sockets where pyzmq can
    (otherwise ipykernel warns on every notebook that they are plain TCP). Pass it to
    ``papermill.execute_notebook(..., config=kernel_config())``."""
    import zmq
    from traitlets.config import Config

    return Config({"KernelManager": {"transport_encryption": "auto"}} if zmq.has("curve") else {})


def render_html(notebook: str | Path, no_input: bool = False) -> str:
    """A standalone HTML page of an executed notebook, figures embedded; ``no_input`` leaves
    the code (and the parameters cells papermill adds) out, keeping Markdown and outputs."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(notebook), as_version=4)
    exporter = HTMLExporter(embed_images=True, exclude_input=no_input,
                            exclude_input_prompt=no_input, exclude_output_prompt=no_input)
    body, _ = exporter.from_notebook_node(nb)
    return body
