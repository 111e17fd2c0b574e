"""Running experiments: checkpoint -> calibration (cached) -> quantize -> MPC -> one result.

    from quantwm.study import Experiment, ResultStore, run_experiment
    exp = Experiment("wall", "rtn", encoder=(8, 8), predictor=(8, 8), episodes=10)
    record = run_experiment(exp, ResultStore())

Calibration follows PROTOCOL section 5: the FP32 planner runs 2 MPC rounds on the calibration
episodes (training split, other seeds than evaluation) and every encoder and predictor input is
recorded (subsampled). It is gathered once per (checkpoint, planner profile) and cached under
``data/cache/``: it serves every method.

Beside planning success each record holds the configuration's open-loop latent error on fixed
validation segments (:mod:`quantwm.study.latent`); :func:`ensure_latent_error` adds it to
records made before it existed, without planning again.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantwm.study.grid import Experiment, paper_iters
from quantwm.study.store import ResultStore
from quantwm.utils import DATA_DIR, provenance

CACHE_DIR = DATA_DIR / "cache"
CALIBRATION_SEED = 1


def calibration_data(env: str, profile: str, device: torch.device | str = "cpu",
                     cache_dir: str | Path = CACHE_DIR, episodes: int = 50,
                     model: torch.nn.Module | None = None) -> dict[str, list[torch.Tensor]]:
    """The recorded encoder/predictor inputs of 2 FP32 MPC rounds (cached on disk)."""
    from quantwm.data import calibration_episodes
    from quantwm.model import checkpoint_digest, load
    from quantwm.plan import load_calibration, planner_config, record_calibration, save_calibration

    path = Path(cache_dir) / f"calibration-{env}-{checkpoint_digest(env)}-{profile}-n{episodes}.pt"
    if path.exists():
        return load_calibration(path)
    model = model if model is not None else load(env, device)
    eps = calibration_episodes(env, n=episodes, seed=CALIBRATION_SEED)
    calib = record_calibration(model, eps, planner_config(env, profile), rounds=2, device=device)
    save_calibration(calib, path)
    return calib


def build_model(experiment: Experiment, device: torch.device | str = "cpu",
                cache_dir: str | Path = CACHE_DIR, **quant_options: Any) -> torch.nn.Module:
    """The (quantized) world model of an experiment, on ``device``."""
    from quantwm.model import load
    from quantwm.quant import quantize

    model = load(experiment.env, device)
    if experiment.is_float:
        return model
    calib = calibration_data(experiment.env, experiment.profile, device, cache_dir,
                             experiment.calib_episodes, model=model)
    calib = {part: [t.to(device) for t in ts] for part, ts in calib.items()}
    return quantize(model, experiment.quant_config(**quant_options), calib)


@functools.cache
def _reference(env: str, digest: str, device: str) -> tuple[torch.nn.Module, Any]:
    """The FP32 model and the validation segments of an env (once per process and checkpoint)."""
    from quantwm.model import load
    from quantwm.study.latent import validation_segments

    model = load(env, device).eval()
    return model, validation_segments(env, num_hist=int(model.config.num_hist))


def latent_error_of(experiment: Experiment, model: torch.nn.Module,
                    device: torch.device | str = "cpu") -> dict[str, Any]:
    """The ``latent_error`` entry of ``experiment``'s record for its (quantized) ``model``."""
    from quantwm.model import checkpoint_digest
    from quantwm.study.latent import latent_error_record

    reference, segments = _reference(experiment.env, checkpoint_digest(experiment.env),
                                     str(device))
    return latent_error_record(model, reference, segments)


def run_experiment(experiment: Experiment, store: ResultStore | None = None,
                   device: torch.device | str = "cpu", cache_dir: str | Path = CACHE_DIR,
                   progress: bool = False, **quant_options: Any) -> dict[str, Any]:
    """Quantize, plan on the evaluation episodes, and return (and store) one result record."""
    from quantwm.data import evaluation_episodes
    from quantwm.model import checkpoint_digest, checkpoint_path
    from quantwm.plan import plan_episodes, planner_config
    from quantwm.quant import model_size_bits

    t0 = time.perf_counter()
    checkpoint = {"file": checkpoint_path(experiment.env).name,
                  "sha1": checkpoint_digest(experiment.env)}
    model = build_model(experiment, device, cache_dir, **quant_options)
    quant_seconds = time.perf_counter() - t0
    episodes = evaluation_episodes(experiment.env, n=experiment.episodes, seed=experiment.seed)
    config = planner_config(experiment.env, experiment.profile, seed=experiment.seed)
    result = plan_episodes(model, episodes, config, device=device, progress=progress)

    t_latent = time.perf_counter()
    latent = latent_error_of(experiment, model, device)
    latent_seconds = time.perf_counter() - t_latent

    iters = [k for k in paper_iters(experiment.env) if k <= config.mpc_rounds]
    record = {
        "label": experiment.quant_config().label() if not experiment.is_float else "FP32",
        "success": {str(k): result.success_at(k) for k in iters},
        "success_by_round": result.success_by_round.mean(axis=0).tolist(),
        "episodes": {
            "ids": [str(i) for i in episodes.ids],
            "first_success_round": result.first_success_round(),
            "rounds_run": result.rounds_run.tolist(),
            # the planner's predicted objective of its final plan (null: round not planned)
            "final_loss_by_round": _nan_to_none(result.loss_best[:, :, -1]),
            # objective and true distance reached, every round (carried after the episode
            # stopped, so means over rounds are over the same episodes)
            "latent_mse_start": _nan_to_none(result.latent_mse_start[None])[0],
            "latent_mse_by_round": _nan_to_none(result.latent_mse),
            "goal_distance_by_round": _nan_to_none(result.goal_distance),
        },
        "mean_final_loss_by_round": result.summary()["mean_final_loss_by_round"],
        "latent_error": latent,
        "method_revision": experiment.method_revision,
        "checkpoint": checkpoint,
        "planner": config.to_dict(),
        "size": model_size_bits(model).as_dict(),
        "seconds": {"quantize": quant_seconds, "plan": result.seconds,
                    "latent_error": latent_seconds, "total": time.perf_counter() - t0},
        "provenance": {**provenance(), "device": str(device),
                       "torch_threads": torch.get_num_threads()},
    }
    if store is not None:
        store.write(experiment, record)
    return record


def ensure_latent_error(experiments: Sequence[Experiment], store: ResultStore,
                        device: torch.device | str = "cpu", cache_dir: str | Path = CACHE_DIR,
                        progress: bool = True) -> list[Experiment]:
    """Add ``latent_error`` to the stored records of ``experiments`` that lack it (their
    success is not recomputed); returns the experiments updated. Deterministic: the same model
    and segments give the same numbers as a fresh run would store."""
    from tqdm.auto import tqdm

    todo = [e for e in dict.fromkeys(experiments)
            if store.has(e) and "latent_error" not in store.read(e)]
    for exp in tqdm(todo, desc="latent error", disable=not progress or not todo):
        record = store.read(exp)
        model = build_model(exp, device, cache_dir)
        record["latent_error"] = latent_error_of(exp, model, device)
        record.setdefault("provenance", {})["latent_error"] = {
            **provenance(), "device": str(device), "torch_threads": torch.get_num_threads()}
        store.write(exp, {k: v for k, v in record.items() if k not in ("experiment", "key")})
    return todo


def _nan_to_none(a: np.ndarray) -> list:
    return [[None if not np.isfinite(v) else float(v) for v in row] for row in np.asarray(a)]


def run_sweep(experiments: Sequence[Experiment], store: ResultStore,
              device: torch.device | str = "cpu", force: bool = False,
              on_done: Callable[[Experiment, dict[str, Any]], None] | None = None,
              cache_dir: str | Path = CACHE_DIR, workers: int = 1,
              **quant_options: Any) -> list[Experiment]:
    """Run every experiment without a stored result (all with ``force``); returns those run.

    Each result is written as soon as it is done, so an interrupted sweep resumes where it
    stopped and a rerun duplicates nothing. ``workers > 1`` runs experiments in that many
    processes, splitting the machine's torch threads between them. Every experiment is seeded
    on its own, so the outcomes do not depend on the order; a different thread count changes
    float reductions in the last bits (recorded as ``provenance.torch_threads``).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    todo = list(dict.fromkeys(experiments)) if force else store.missing(list(experiments))
    if workers == 1 or len(todo) <= 1:
        for exp in todo:
            record = run_experiment(exp, store, device, cache_dir, **quant_options)
            if on_done:
                on_done(exp, record)
        return todo

    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, torch.get_num_threads() // workers)
    context = multiprocessing.get_context("spawn")  # no forked torch/OpenMP state
    with ProcessPoolExecutor(workers, mp_context=context, initializer=torch.set_num_threads,
                             initargs=(threads,)) as pool:
        futures = {pool.submit(run_experiment, exp, store, str(device), cache_dir,
                               **quant_options): exp for exp in todo}
        for future in as_completed(futures):
            record = future.result()
            if on_done:
                on_done(futures[future], record)
    return todo
