"""Saving and loading world models: one file = {config, state_dict, meta}.

Files load with ``torch.load(..., weights_only=True)``: they hold only tensors and plain
Python values. Shipped checkpoints live at ``data/checkpoints/<env>.pt``.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from quantwm.model.world_model import WorldModel, WorldModelConfig
from quantwm.utils import DATA_DIR, ENV_NAMES, atomic_path, git_commit

CHECKPOINT_DIR = DATA_DIR / "checkpoints"


def checkpoint_path(env_or_path: str | os.PathLike) -> Path:
    """``"wall"`` / ``"pusht"`` -> the shipped checkpoint; anything else is taken as a path."""
    if str(env_or_path).lower() in ENV_NAMES:
        return CHECKPOINT_DIR / f"{str(env_or_path).lower()}.pt"
    return Path(env_or_path)


def checkpoint_digest(env_or_path: str | os.PathLike) -> str:
    """The first 10 hex digits of the SHA-1 of a checkpoint file (what a result was made with).

    A missing file raises FileNotFoundError naming the path and the command that makes it.
    """
    path = checkpoint_path(env_or_path)
    if not path.exists():
        raise FileNotFoundError(f"no world-model checkpoint at {path}; "
                                f"make it with `quantwm train --env {env_or_path}`")
    if path.is_dir():
        raise ValueError(f"world-model checkpoint {path} is a directory, not a file")
    stat = path.stat()
    return _digest(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _digest(path: str, mtime_ns: int, size: int) -> str:  # cached per file version
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()[:10]


def save(model: WorldModel, path: str | os.PathLike, *, parts: Sequence[str] | None = None,
         **meta: Any) -> Path:
    """Write ``model`` atomically to ``path``; ``meta`` (plain values) is stored beside it.

    ``parts`` (e.g. ``("encoder", "decoder")``) keeps only those children's weights; loading
    such a file gives a model whose other parts are freshly initialised. The commit that made
    the file is added to meta as ``commit`` unless given.
    """
    meta.setdefault("commit", git_commit())
    state = model.state_dict()
    if parts is not None:
        meta["parts"] = list(parts)
        state = {k: v for k, v in state.items() if k.split(".")[0] in parts}
    payload = {
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in state.items()},
        "meta": meta,
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load(path_or_env: str | os.PathLike, device: torch.device | str = "cpu", *,
         env: str | None = None) -> WorldModel:
    """Load a world model (in eval mode, on ``device``) from a path or an env name.

    The training metadata is on ``model.meta``. With ``env`` the file must be a whole world
    model of that environment (for planning): a stage-1 checkpoint (encoder and decoder only,
    the rest would be random) or another environment's model is refused before any data is
    loaded. A file that is not a checkpoint fails with a one-line ``ValueError`` naming it.
    """
    path = checkpoint_path(path_or_env)
    if not path.exists():
        env_name = str(path_or_env).lower() if str(path_or_env).lower() in ENV_NAMES else "<env>"
        raise FileNotFoundError(
            f"no world-model checkpoint at {path}; make it with "
            f"`quantwm train --env {env_name} --out {path}`")
    payload = load_torch_file(path, "world-model checkpoint")
    if not isinstance(payload, dict) or not isinstance(payload.get("config"), dict) \
            or not isinstance(payload.get("state_dict"), dict):
        raise ValueError(f"{path} is not a world-model checkpoint: it lacks the config and "
                         "state_dict that `quantwm train` saves")
    meta = payload.get("meta", {})
    meta = meta if isinstance(meta, dict) else {}
    try:
        config = WorldModelConfig(**payload["config"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint {path} has a config this kit cannot build: "
                         f"{' '.join(str(err).split())}") from None
    parts = meta.get("parts")
    if env is not None:
        if parts is not None:
            raise ValueError(f"checkpoint {path} holds only the {' and '.join(parts)} (a "
                             f"stage-1 checkpoint), not a world model to plan {env} with; give "
                             f"a `quantwm train --env {env}` checkpoint")
        if config.env != env:
            raise ValueError(f"checkpoint {path} is a {config.env} world model, not a {env} "
                             f"one; give a `quantwm train --env {env}` checkpoint")
    model = WorldModel(config)
    try:
        missing, unexpected = model.load_state_dict(payload["state_dict"], strict=False)
    except RuntimeError as err:  # size mismatch: what the message lists is of no use here
        first = str(err).strip().splitlines()[-1].strip()
        raise ValueError(f"checkpoint {path} does not match its own config: {first}") from None
    missing = [k for k in missing if parts is None or k.split(".")[0] in parts]
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not match the model: missing {missing}, "
                         f"unexpected {unexpected}")
    model.meta = meta
    return model.to(device).eval()


def load_torch_file(path: str | os.PathLike, what: str = "file") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with a one-line ``ValueError`` naming
    ``path`` (and saying what it should be) when it cannot be read: a directory, an empty,
    truncated or random file, or one holding Python objects besides tensors and plain values
    (never loaded: no code from a file runs)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a directory, not a file")
    if not path.exists():
        raise FileNotFoundError(f"no {what} at {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{what} {path} is empty (0 bytes)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found:
            reason = (f"it holds Python objects ({found.group(1)}) besides tensors and plain "
                      "values, which this kit never loads")
        else:
            reason = "not a torch file (corrupt, or another format)"
    except EOFError:
        reason = "truncated (it ends early)"
    except RuntimeError as err:
        text = str(err).strip()
        if "zip archive" in text or "PytorchStreamReader" in text:
            first = text.splitlines()[0].split(". ")[0]  # torch's first sentence, not its advice
            reason = f"truncated or corrupt ({first})"
        else:
            reason = "not a torch file (corrupt, or another format)"
    except Exception:  # random bytes fail as anything: IndexError, KeyError, UnicodeDecodeError
        reason = "not a torch file (corrupt, or another format)"
    raise ValueError(f"cannot read {what} {path}: {reason}")
