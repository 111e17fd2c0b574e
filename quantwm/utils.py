"""Small helpers shared by every package: paths, atomic writes, provenance, seeding, `--set`
overrides, a rank correlation."""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib
import importlib.util
import json
import os
import random
import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
DATA_DIR = Path(os.environ.get("QUANTWM_DATA", REPO_DIR / "data"))

ENV_NAMES = ("wall", "pusht")


def lazy_exports(package: str, sources: dict[str, str],
                 names: list[str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's PEP 562 ``__getattr__`` and ``__dir__``: each public name is imported from
    its submodule (``sources[name]``) on first use, as is a submodule named as an attribute
    (``package.stats``), so importing the package, or a submodule that needs no torch, does
    not wait seconds for torch.

        __getattr__, __dir__ = lazy_exports(__name__, _SOURCES, __all__)
    """
    def __getattr__(name: str) -> Any:
        if name not in sources:
            if not name.startswith("_") and importlib.util.find_spec(f"{package}.{name}"):
                return importlib.import_module(f"{package}.{name}")  # a submodule, on first use
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{sources[name]}"), name)
        vars(importlib.import_module(package))[name] = value  # later look-ups skip this
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(importlib.import_module(package)), *names})

    return __getattr__, __dir__


def check_env_name(env_name: str) -> str:
    """Return the canonical env name ("wall" or "pusht") or raise a clear ValueError."""
    name = str(env_name).lower()
    if name not in ENV_NAMES:
        raise ValueError(f"unknown environment {env_name!r}; expected one of {ENV_NAMES}")
    return name


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    A reader never sees a half-written file and an interrupted run leaves the old file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _new_temp_file(path)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _new_temp_file(path: Path) -> Path:
    """Create an empty ``.<stem>.<random>.tmp<suffix>`` beside ``path`` and return its path.

    Like ``tempfile.mkstemp`` (a fresh name, created exclusively), but with the rights of any
    new file (0o666 less the umask, applied by the OS) instead of mkstemp's 0o600, and without
    touching the process umask. The extension stays last: tools such as papermill choose the
    format by it.
    """
    for _ in range(100):
        tmp = path.parent / f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary name beside {path}")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def git_commit() -> str:
    """The commit of the working tree (with '+dirty' when it has changes), or 'unknown'.

    Changes under ``data/results/`` do not count: a sweep writes its results there as it goes,
    and they say nothing about the code that made them.
    """
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_DIR, capture_output=True,
            text=True, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
             ":(exclude)data/results"], cwd=REPO_DIR,
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def provenance() -> dict[str, str]:
    import torch

    return {
        "commit": git_commit(),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "quantwm": "0.1.0",
    }


def seed_everything(seed: int) -> None:
    """Seed Python, numpy's legacy global RNG and torch (for code we do not control)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def spearman(x: Any, y: Any) -> float:
    """Spearman rank correlation of paired values (``scipy.stats.spearmanr``: average ranks for
    ties); pairs with a NaN dropped; NaN for fewer than 3 pairs or no spread. Also exported as
    ``quantwm.study.stats.spearman``; it lives here so the planner needs nothing of the study."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, float).ravel(), np.asarray(y, float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"spearman needs paired values, got {x.size} and {y.size}")
    ok = ~(np.isnan(x) | np.isnan(y))
    x, y = x[ok], y[ok]
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def parse_overrides(items: list[str], flag: str = "--set") -> dict[str, int | float | str]:
    """``["samples=100", "execute=best"]`` -> ``{"samples": 100, "execute": "best"}``."""
    out: dict[str, int | float | str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} takes FIELD=VALUE, got {item!r}")
        try:
            out[key] = int(value)
        except ValueError:
            try:
                out[key] = float(value)
            except ValueError:
                out[key] = value
    return out
