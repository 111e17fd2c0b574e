"""Saving and loading world models: one file = {config, state_dict, meta}.

Files load with ``torch.load(..., weights_only=True)``: they hold only tensors and plain
Python values. Shipped checkpoints live at ``data/checkpoints/<env>.pt``.
"""

from __future__ import annotations

import functools
import hashlib
import os
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


def load(path_or_env: str | os.PathLike, device: torch.device | str = "cpu") -> WorldModel:
    """Load a world model (in eval mode, on ``device``) from a path or an env name.

    The training metadata is on ``model.meta``.
    """
    path = checkpoint_path(path_or_env)
    if not path.exists():
        env = str(path_or_env).lower() if str(path_or_env).lower() in ENV_NAMES else "<env>"
        raise FileNotFoundError(
            f"no world-model checkpoint at {path}; make it with "
            f"`quantwm train --env {env} --out {path}`")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    model = WorldModel(WorldModelConfig(**payload["config"]))
    meta = payload.get("meta", {})
    missing, unexpected = model.load_state_dict(payload["state_dict"], strict=False)
    parts = meta.get("parts")
    missing = [k for k in missing if parts is None or k.split(".")[0] in parts]
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not match the model: missing {missing}, "
                         f"unexpected {unexpected}")
    model.meta = meta
    return model.to(device).eval()
