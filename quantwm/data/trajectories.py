"""Trajectory datasets: generate, split by trajectory, save/load as compressed npz, summarise.

A ``Trajectories`` holds states and actions only (no images; frames are rendered from states on
demand, see ``quantwm.data.windows``). Files live under ``data/<env>/trajectories.npz``.

Values are rounded to float32 when generated (states, actions; 1e-4 px at the scale of the
worlds) and held as float64: the file then stores float32, stays small, and a loaded dataset is
bit-for-bit the generated one.

Seeding: ``SeedSequence(seed)`` spawns one stream for the trajectories and one for the
train/validation split, so the same seed always gives the same file.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
import time
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from quantwm.envs import PROPRIO_DIM, STATE_DIM, proprio_of
from quantwm.utils import DATA_DIR, atomic_path, check_env_name, git_commit

#: default dataset sizes (trajectories, steps): Wall twice PROTOCOL section 4's 1920 x 50 (more
#: wall and door layouts: the predictor's pushes into the wall beside the door improved with
#: them); PushT 4800 x 80 (on 1200 trajectories the predictor overfitted). The shipped PushT
#: dataset adds 14400 training trajectories to these (``data/pusht/extensions.json``, generated
#: on first use by what reads the training split): the predictor planned better with them
#: (docs/world_models.md)
DEFAULT_SIZES: dict[str, tuple[int, int]] = {"wall": (3840, 50), "pusht": (4800, 80)}
DEFAULT_SEED = 0
VAL_FRACTION = 0.1
SPLITS = ("train", "val")


def default_path(env_name: str) -> Path:
    """``data/<env>/trajectories.npz`` (under ``QUANTWM_DATA`` when that is set)."""
    return DATA_DIR / check_env_name(env_name) / "trajectories.npz"


@dataclass
class Trajectories:
    """Trajectories of one env: states (N, T+1, S), actions (N, T, 2), per-trajectory params.

    ``split`` (N,) holds "train" or "val" per trajectory; ``params`` maps each episode parameter
    (Wall: wall_x, door_y; PushT: none) to an (N,) array; ``meta`` records how it was made.
    """

    env_name: str
    states: np.ndarray
    actions: np.ndarray
    params: dict[str, np.ndarray]
    split: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.env_name = check_env_name(self.env_name)
        self.states = np.asarray(self.states, dtype=np.float64)
        self.actions = np.asarray(self.actions, dtype=np.float64)
        self.split = np.asarray(self.split).astype("U5")
        self.params = {k: np.asarray(v, dtype=np.float64) for k, v in self.params.items()}
        n, t1, s = self.states.shape
        if s != STATE_DIM[self.env_name]:
            raise ValueError(
                f"{self.env_name} states need {STATE_DIM[self.env_name]} dims, got {s}"
            )
        if self.actions.shape != (n, t1 - 1, 2):
            raise ValueError(f"actions must have shape {(n, t1 - 1, 2)}, got {self.actions.shape}")
        if self.split.shape != (n,) or not np.isin(self.split, SPLITS).all():
            raise ValueError(f"split must be (N,) of {SPLITS}, got {np.unique(self.split)}")
        for k, v in self.params.items():
            if v.shape != (n,):
                raise ValueError(f"param {k!r} must have shape ({n},), got {v.shape}")

    @property
    def n_traj(self) -> int:
        return self.states.shape[0]

    @property
    def n_steps(self) -> int:
        return self.actions.shape[1]

    def indices(self, split: str) -> np.ndarray:
        """Trajectory indices of ``split`` ("train", "val" or "all")."""
        if split == "all":
            return np.arange(self.n_traj)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {(*SPLITS, 'all')}, got {split!r}")
        return np.flatnonzero(self.split == split)

    def episode_params(self, i: int) -> dict[str, float]:
        """Episode parameters of trajectory ``i`` (reset options besides the state)."""
        return {k: float(v[i]) for k, v in self.params.items()}

    def proprio(self) -> np.ndarray:
        """Proprio (N, T+1, P) float32 of every state."""
        return proprio_of(self.env_name, self.states)

    def stats(self, split: str = "train") -> dict[str, np.ndarray]:
        """Mean and std of the raw actions (2,) and the proprio (P,) over ``split``."""
        idx = self.indices(split)
        act = self.actions[idx].reshape(-1, 2)
        pro = proprio_of(self.env_name, self.states[idx]).reshape(-1, PROPRIO_DIM[self.env_name])
        return {
            "action_mean": act.mean(0),
            "action_std": act.std(0),
            "proprio_mean": pro.mean(0).astype(np.float64),
            "proprio_std": pro.std(0).astype(np.float64),
        }

    def save(self, path: str | Path | None = None) -> Path:
        """Write a compressed npz atomically (default ``data/<env>/trajectories.npz``)."""
        path = Path(path) if path is not None else default_path(self.env_name)
        arrays = {
            "states": self.states.astype(np.float32),
            "actions": self.actions.astype(np.float32),
            "split": self.split,
            "meta": np.array(json.dumps({"env_name": self.env_name, **self.meta}, sort_keys=True)),
        }
        arrays.update({f"param_{k}": v for k, v in self.params.items()})
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Trajectories:
        """Read a file written by ``save`` (no pickles)."""
        path = Path(path)
        if not path.exists():
            raise ValueError(f"no trajectory file at {path}; make one with `quantwm data make`")
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                params = {k[len("param_") :]: z[k] for k in z.files if k.startswith("param_")}
                env_name = meta.pop("env_name")
                return cls(env_name, z["states"], z["actions"], params, z["split"], meta)
        except (OSError, EOFError, KeyError, ValueError, TypeError, AttributeError,
                zipfile.BadZipFile, zlib.error) as err:  # truncated, corrupt or not ours
            reason = " ".join(str(err).split()) or type(err).__name__
            raise ValueError(f"cannot read trajectory file {path}: {reason}") from None


def _round32(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).astype(np.float64)


def make_trajectories(
    env_name: str,
    n_traj: int | None = None,
    n_steps: int | None = None,
    seed: int = DEFAULT_SEED,
    val_fraction: float = VAL_FRACTION,
    progress: bool = False,
) -> Trajectories:
    """Generate a seeded dataset for ``env_name`` (sizes default to ``DEFAULT_SIZES``).

    Wall: random walks with a persistent heading (``quantwm.data.wall_data``); PushT: scripted
    noisy pushes (``quantwm.data.pusht_data``). ``val_fraction`` of the trajectories (at least
    one) form the validation split, chosen at random.
    """
    env_name = check_env_name(env_name)
    d_traj, d_steps = DEFAULT_SIZES[env_name]
    n_traj = d_traj if n_traj is None else int(n_traj)
    n_steps = d_steps if n_steps is None else int(n_steps)
    if n_traj < 2 or n_steps < 1:
        raise ValueError(
            f"need n_traj >= 2 and n_steps >= 1, got n_traj={n_traj}, n_steps={n_steps}"
        )
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    gen_seq, split_seq = np.random.SeedSequence(int(seed)).spawn(2)
    rng = np.random.default_rng(gen_seq)
    start = time.perf_counter()
    states, actions, params = _generate(env_name, n_traj, n_steps, rng, progress)
    generator = {"wall": "quantwm.data.wall_data.generate_wall",
                 "pusht": "quantwm.data.pusht_data.generate_pusht"}[env_name]
    seconds = time.perf_counter() - start
    n_val = min(n_traj - 1, max(1, round(val_fraction * n_traj)))
    split = np.full(n_traj, "train", dtype="U5")
    split[np.random.default_rng(split_seq).permutation(n_traj)[:n_val]] = "val"
    meta = {
        "seed": int(seed),
        "n_traj": n_traj,
        "n_steps": n_steps,
        "val_fraction": val_fraction,
        "generator": generator,
        "generation_seconds": round(seconds, 2),
        "commit": git_commit(),
    }
    return Trajectories(env_name, _round32(states), _round32(actions), params, split, meta)


#: trajectories per chunk of an extension: chunk k is drawn from ``SeedSequence([seed, k])``
EXTEND_CHUNK = 2400


def _generate(env_name: str, n_traj: int, n_steps: int, rng: np.random.Generator,
              progress: bool = False) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    if env_name == "wall":
        from quantwm.data.wall_data import generate_wall

        return generate_wall(n_traj, n_steps, rng)
    from quantwm.data.pusht_data import generate_pusht

    return (*generate_pusht(n_traj, n_steps, rng, progress=progress), {})


def _generate_chunk(env_name: str, n_traj: int, n_steps: int, seed: int, k: int
                    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Chunk ``k`` of an extension of seed ``seed``: its own stream, so chunks run anywhere."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, k]))
    return _generate(env_name, n_traj, n_steps, rng)


def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask where the platform has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def extend_trajectories(trajs: Trajectories, n_traj: int, seed: int,
                        workers: int | None = None, progress: bool = False) -> Trajectories:
    """``trajs`` with ``n_traj`` more *training* trajectories appended, drawn like its own.

    The validation split keeps its trajectories and their indices, so every evaluation episode
    (``quantwm.data.evaluation_episodes``) is the same before and after: a model trained on the
    extended data is compared with the old one on the same episodes. The new trajectories come
    in chunks of ``EXTEND_CHUNK``, chunk k from ``SeedSequence([seed, k])``; ``seed`` must differ
    from the dataset's own and from earlier extensions'. ``meta["extensions"]`` records each.
    Chunks are generated in ``workers`` processes (default: every available CPU); the data do
    not depend on how many. ``progress``: a progress bar on stderr, its description giving the
    expected time on idle CPUs (``expected_generation_seconds``).
    """
    from tqdm import tqdm

    if isinstance(n_traj, bool) or not isinstance(n_traj, int | np.integer) or n_traj < 1:
        raise ValueError(f"n_traj must be a positive integer, got {n_traj!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise ValueError(f"workers must be a positive integer or None, got {workers!r}")
    extensions = list(trajs.meta.get("extensions", []))
    used = [trajs.meta.get("seed")] + [e["seed"] for e in extensions]
    if int(seed) in used:
        raise ValueError(f"seed {seed} was already used for this dataset (seeds used: {used})")
    start = time.perf_counter()
    jobs = [(trajs.env_name, min(EXTEND_CHUNK, int(n_traj) - first), trajs.n_steps, int(seed), k)
            for k, first in enumerate(range(0, int(n_traj), EXTEND_CHUNK))]
    workers = min(len(jobs), available_cpus() if workers is None else workers)
    expected = expected_generation_seconds(trajs.env_name, int(n_traj), trajs.n_steps, workers)
    bar = tqdm(total=int(n_traj), unit="traj", disable=not progress, file=sys.stderr,
               desc=f"{trajs.env_name}: {n_traj} training trajectories (seed {seed}), expected "
                    f"{_duration(expected)} on {workers} idle CPU{'s' if workers > 1 else ''}")
    with bar:
        if workers == 1:
            parts = []
            for job in jobs:
                parts.append(_generate_chunk(*job))
                bar.update(job[1])
        else:
            from concurrent.futures import ProcessPoolExecutor, as_completed

            context = multiprocessing.get_context("spawn")  # no forked torch/OpenMP state
            with ProcessPoolExecutor(workers, mp_context=context) as pool:
                futures = {pool.submit(_generate_chunk, *job): job[1] for job in jobs}
                for done in as_completed(futures):
                    bar.update(futures[done])
                parts = [f.result() for f in futures]  # in chunk order
    states = np.concatenate([trajs.states, *(_round32(p[0]) for p in parts)])
    actions = np.concatenate([trajs.actions, *(_round32(p[1]) for p in parts)])
    params = {k: np.concatenate([v, *(p[2][k] for p in parts)]) for k, v in trajs.params.items()}
    split = np.concatenate([trajs.split, np.full(int(n_traj), "train", dtype="U5")])
    extensions.append({"seed": int(seed), "n_traj": int(n_traj), "chunk": EXTEND_CHUNK,
                       "generation_seconds": round(time.perf_counter() - start, 2),
                       "commit": git_commit()})
    meta = {**trajs.meta, "extensions": extensions}
    return Trajectories(trajs.env_name, states, actions, params, split, meta)


#: seconds per generated trajectory step on one idle core (PushT: ~45 s per chunk of 2400
#: trajectories of 80 steps; a core shared with other work takes two to ten times longer)
STEP_SECONDS: dict[str, float] = {"wall": 3e-6, "pusht": 2.4e-4}


def expected_generation_seconds(env_name: str, n_traj: int, n_steps: int,
                                workers: int | None = None) -> float:
    """Expected seconds to generate ``n_traj`` trajectories of ``n_steps`` in chunks of
    ``EXTEND_CHUNK`` on ``workers`` idle CPUs (default: every available one)."""
    workers = available_cpus() if workers is None else max(1, int(workers))
    chunks = -(-int(n_traj) // EXTEND_CHUNK)
    rounds = -(-chunks // min(workers, chunks))
    per_chunk = min(int(n_traj), EXTEND_CHUNK) * n_steps * STEP_SECONDS[check_env_name(env_name)]
    return rounds * per_chunk


def _duration(seconds: float) -> str:
    return f"~{seconds:.0f} s" if seconds < 90 else f"~{seconds / 60:.1f} min"


def extension_digest(trajs: Trajectories, first: int) -> str:
    """SHA-1 of the float32 states and actions of trajectories ``first:`` (an extension's)."""
    h = hashlib.sha1()
    for a in (trajs.states[first:], trajs.actions[first:]):
        h.update(np.ascontiguousarray(a, dtype=np.float32).tobytes())
    return h.hexdigest()


def _with_shipped_extensions(env_name: str, base: Trajectories) -> Trajectories:
    """``base`` plus the extensions listed in ``data/<env>/extensions.json`` that it lacks.

    They are generated on first use (~45 s per chunk of 2400 PushT trajectories on one idle
    core, chunks in parallel on every CPU, with a progress bar) and kept in ``data/cache/``:
    what can be generated is not committed. Each listed ``sha1`` (``extension_digest``) is
    checked, so a platform whose physics rounds differently says so.
    """
    spec_path = default_path(env_name).with_name("extensions.json")
    if not spec_path.exists():
        return base
    used = {base.meta.get("seed")} | {e["seed"] for e in base.meta.get("extensions", [])}
    todo = [e for e in json.loads(spec_path.read_text()) if e["seed"] not in used]
    if not todo:
        return base
    key = hashlib.sha1(json.dumps([base.meta, todo], sort_keys=True).encode()).hexdigest()[:10]
    cache = DATA_DIR / "cache" / f"{env_name}-trajectories-{key}.npz"
    if cache.exists():
        try:
            return Trajectories.load(cache)
        except ValueError as err:  # a damaged cache: what it held can be generated again
            print(f"warning: {err}; generating it again", file=sys.stderr, flush=True)
    total = sum(e["n_traj"] for e in todo)
    expected = sum(expected_generation_seconds(env_name, e["n_traj"], base.n_steps) for e in todo)
    print(f"{env_name}: training uses the shipped dataset's {total} extension "
          f"trajectories ({spec_path.name}); generating them once, expected {_duration(expected)}"
          f" on {available_cpus()} idle CPU(s), into {cache}", file=sys.stderr, flush=True)
    traj = base
    for e in todo:
        first = traj.n_traj
        traj = extend_trajectories(traj, e["n_traj"], e["seed"], progress=True)
        if e.get("sha1") and extension_digest(traj, first) != e["sha1"]:
            warnings.warn(f"{env_name}: the extension of seed {e['seed']} generated here differs "
                          f"from the one the shipped model was trained on ({spec_path})",
                          stacklevel=3)
    traj.save(cache)
    return traj


def load_trajectories(env_name: str, path: str | Path | None = None, *,
                      with_extensions: bool = True) -> Trajectories:
    """The dataset at ``path``; by default the shipped one: ``data/<env>/trajectories.npz`` plus
    the training trajectories ``data/<env>/extensions.json`` lists (generated on first use).

    ``with_extensions=False``: the shipped file alone, nothing generated. Extensions append
    training trajectories only, so its validation split (indices, states, actions, params) is
    the extended dataset's bit for bit: what is drawn from the validation split alone
    (evaluation episodes, validation segments) is the same either way and needs no extension.
    """
    traj = Trajectories.load(path if path is not None else default_path(env_name))
    if traj.env_name != check_env_name(env_name):
        raise ValueError(f"{path} holds {traj.env_name} trajectories, not {env_name}")
    if path is not None or not with_extensions:
        return traj
    return _with_shipped_extensions(env_name, traj)


def summarize(traj: Trajectories) -> dict[str, Any]:
    """Plain numbers that describe a dataset (printed by ``quantwm data make/show``)."""
    out: dict[str, Any] = {
        "env": traj.env_name,
        "trajectories": traj.n_traj,
        "steps": traj.n_steps,
        "train": int((traj.split == "train").sum()),
        "val": int((traj.split == "val").sum()),
        "seed": traj.meta.get("seed"),
        "generation_seconds": traj.meta.get("generation_seconds"),
    }
    stats = traj.stats("train")
    out["action_mean"] = np.round(stats["action_mean"], 4).tolist()
    out["action_std"] = np.round(stats["action_std"], 4).tolist()
    out["action_abs_max"] = float(np.round(np.abs(traj.actions).max(), 4))
    out["proprio_mean"] = np.round(stats["proprio_mean"], 3).tolist()
    out["proprio_std"] = np.round(stats["proprio_std"], 3).tolist()
    if traj.env_name == "wall":
        from quantwm.data.wall_data import crossed_wall

        step = np.linalg.norm(np.diff(traj.states, axis=1), axis=-1)
        intended = 2.0 * np.linalg.norm(traj.actions, axis=-1)
        out["fraction_through_door"] = round(
            float(crossed_wall(traj.states, traj.params["wall_x"]).mean()), 3
        )
        out["fraction_steps_blocked"] = round(float((step < 0.5 * intended).mean()), 3)
        for k in ("wall_x", "door_y"):
            out[f"{k}_range"] = [float(traj.params[k].min()), float(traj.params[k].max())]
    else:
        from quantwm.data.pusht_data import block_moved

        moved = block_moved(traj.states)
        out["fraction_steps_block_moves"] = round(float(moved.mean()), 3)
        out["block_step_px_when_moving"] = round(
            float(np.linalg.norm(np.diff(traj.states[..., 2:4], axis=1), axis=-1)[moved].mean()), 2
        )
        d25 = np.linalg.norm(traj.states[:, 25:, :4] - traj.states[:, :-25, :4], axis=-1)
        out["median_25_step_change_px"] = round(float(np.median(d25)), 1) if d25.size else None
    return out


def format_summary(summary: dict[str, Any]) -> str:
    """``summarize`` output as aligned ``key: value`` lines."""
    width = max(len(k) for k in summary)
    return "\n".join(f"{k:<{width}} : {v}" for k, v in summary.items())
