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

import collections
import functools
import hashlib
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantwm.study.grid import Experiment, paper_iters
from quantwm.study.store import ResultStore
from quantwm.utils import DATA_DIR, provenance

CACHE_DIR = DATA_DIR / "cache"
CALIBRATION_SEED = 1


def calibration_path(env: str, profile: str, cache_dir: str | Path = CACHE_DIR,
                     episodes: int = 50) -> Path:
    """Where :func:`calibration_data` caches the calibration of ``env``'s shipped checkpoint
    (named after the draw of episodes, ``CALIBRATION_REVISION``, from revision 2 on)."""
    from quantwm.data.episodes import CALIBRATION_REVISION
    from quantwm.model import checkpoint_digest

    revision = CALIBRATION_REVISION[env]
    tag = "" if revision == 1 else f"-c{revision}"
    return (Path(cache_dir)
            / f"calibration-{env}-{checkpoint_digest(env)}-{profile}-n{episodes}{tag}.pt")


def cached_calibration(path: Path) -> dict[str, list[torch.Tensor]] | None:
    """The calibration cached at ``path``, or None when there is none or it cannot be read
    (then with a warning: it is recorded again, deterministically)."""
    from quantwm.plan import load_calibration

    if not path.exists():
        return None
    try:
        return load_calibration(path)
    except ValueError as err:  # a damaged cache: record it again (it is deterministic)
        print(f"warning: {' '.join(str(err).split())}; recording it again", file=sys.stderr,
              flush=True)
        return None


def record_calibration_of(model: torch.nn.Module, env: str, profile: str, episodes: Any,
                          device: torch.device | str = "cpu") -> dict[str, list[torch.Tensor]]:
    """Record ``model``'s calibration inputs: 2 FP32 MPC rounds on ``episodes`` (the calibration
    episodes: ``calibration_episodes(env, n, seed=CALIBRATION_SEED)``)."""
    from quantwm.plan import planner_config, record_calibration

    return record_calibration(model, episodes, planner_config(env, profile), rounds=2,
                              device=device)


def calibration_data(env: str, profile: str, device: torch.device | str = "cpu",
                     cache_dir: str | Path = CACHE_DIR, episodes: int = 50,
                     model: torch.nn.Module | None = None) -> dict[str, list[torch.Tensor]]:
    """The recorded encoder/predictor inputs of 2 FP32 MPC rounds (cached on disk; a cache
    that cannot be read is recorded again, with a warning)."""
    from quantwm.data import calibration_episodes
    from quantwm.model import load
    from quantwm.plan import save_calibration

    path = calibration_path(env, profile, cache_dir, episodes)
    calib = cached_calibration(path)
    if calib is not None:
        return calib
    model = model if model is not None else load(env, device)
    eps = calibration_episodes(env, n=episodes, seed=CALIBRATION_SEED)
    calib = record_calibration_of(model, env, profile, eps, device)
    save_calibration(calib, path)
    return calib


@dataclass
class ExperimentInputs:
    """What :func:`run_experiment` otherwise reads from ``data/``, handed to it instead (by the
    Ray executor, whose workers share no filesystem with the driver). Built from the same files,
    they give the same record.

    ``checkpoint`` holds the bytes of the env's checkpoint file (named ``checkpoint_file``,
    :func:`quantwm.model.checkpoint_digest` ``checkpoint_sha1``); ``episodes`` the evaluation
    episodes (``evaluation_episodes(env, n=experiment.episodes, seed=experiment.seed)``);
    ``segments`` the latent-error validation segments (``validation_segments(env,
    num_hist=...)``); ``calibration`` the calibration (:func:`calibration_data`; None for FP32).
    """

    checkpoint: bytes
    checkpoint_file: str
    checkpoint_sha1: str
    episodes: Any
    segments: Any
    calibration: dict[str, list[torch.Tensor]] | None = None

    def __post_init__(self) -> None:
        digest = hashlib.sha1(self.checkpoint).hexdigest()[:10]
        if digest != self.checkpoint_sha1:
            raise ValueError(f"the checkpoint bytes handed in for {self.checkpoint_file} have "
                             f"SHA-1 {digest}, not {self.checkpoint_sha1}")

    def load_model(self, device: torch.device | str = "cpu") -> torch.nn.Module:
        """The checkpoint's model (eval mode, on ``device``), as ``quantwm.model.load`` gives it."""
        from quantwm.model import load

        with tempfile.TemporaryDirectory(prefix="quantwm-checkpoint-") as tmp:
            path = Path(tmp) / Path(self.checkpoint_file).name
            path.write_bytes(self.checkpoint)
            return load(path, device)


def build_model(experiment: Experiment, device: torch.device | str = "cpu",
                cache_dir: str | Path = CACHE_DIR, *, inputs: ExperimentInputs | None = None,
                **quant_options: Any) -> torch.nn.Module:
    """The (quantized) world model of an experiment, on ``device`` (from ``inputs`` when given,
    else from ``data/``)."""
    from quantwm.model import load
    from quantwm.quant import quantize
    from quantwm.quant.apply import needs_calibration

    model = load(experiment.env, device) if inputs is None else inputs.load_model(device)
    if experiment.is_float:
        return model
    config = experiment.quant_config(**quant_options)
    if not needs_calibration(config):  # RTN / OMSE weights, dynamic or float activations
        return quantize(model, config, None)
    if inputs is None:
        calib = calibration_data(experiment.env, experiment.profile, device, cache_dir,
                                 experiment.calib_episodes, model=model)
    elif inputs.calibration is None:
        raise ValueError(f"{experiment.key()} needs calibration: its inputs have none")
    else:
        calib = inputs.calibration
    calib = {part: [t.to(device) for t in ts] for part, ts in calib.items()}
    return quantize(model, config, calib)


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
                   progress: bool = False, *, inputs: ExperimentInputs | None = None,
                   **quant_options: Any) -> dict[str, Any]:
    """Quantize, plan on the evaluation episodes, and return (and store) one result record.

    With ``inputs`` (:class:`ExperimentInputs`) nothing is read from ``data/``: the checkpoint,
    calibration, episodes and validation segments are those handed in (the same record)."""
    from quantwm.data import evaluation_episodes
    from quantwm.model import checkpoint_digest, checkpoint_path
    from quantwm.plan import plan_episodes, planner_config
    from quantwm.quant import model_size_bits
    from quantwm.study.latent import latent_error_record

    t0 = time.perf_counter()
    if inputs is None:
        checkpoint = {"file": checkpoint_path(experiment.env).name,
                      "sha1": checkpoint_digest(experiment.env)}
    else:
        checkpoint = {"file": inputs.checkpoint_file, "sha1": inputs.checkpoint_sha1}
    model = build_model(experiment, device, cache_dir, inputs=inputs, **quant_options)
    quant_seconds = time.perf_counter() - t0
    episodes = (evaluation_episodes(experiment.env, n=experiment.episodes, seed=experiment.seed)
                if inputs is None else inputs.episodes)
    config = planner_config(experiment.env, experiment.profile, seed=experiment.seed)
    result = plan_episodes(model, episodes, config, device=device, progress=progress)

    t_latent = time.perf_counter()
    if inputs is None:
        latent = latent_error_of(experiment, model, device)
    else:  # as _reference gives it: the FP32 model of the same checkpoint, in eval mode
        latent = latent_error_record(model, inputs.load_model(device).eval(), inputs.segments)
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
        **({} if (revision := experiment.calibration_revision) is None
           else {"calibration_revision": revision}),
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


EXECUTORS = ("local", "ray")


def run_sweep(experiments: Sequence[Experiment], store: ResultStore,
              device: torch.device | str = "cpu", force: bool = False,
              on_done: Callable[[Experiment, dict[str, Any]], None] | None = None,
              cache_dir: str | Path = CACHE_DIR, workers: int = 1, executor: str = "local",
              ray_options: Any = None, **quant_options: Any) -> list[Experiment]:
    """Run every experiment without a stored result (all with ``force``); returns those run.

    ``executor="ray"`` runs them as Ray tasks instead of local processes
    (:mod:`quantwm.study.ray_executor`; ``ray_options`` a
    :class:`~quantwm.study.ray_executor.RayOptions`, which says where and with what resources;
    ``device`` and ``workers`` are then unused); the same experiment gives the same record.
    Ray is not started when nothing is left to run.

    Each result is written as soon as it is done, so an interrupted sweep resumes where it
    stopped and a rerun duplicates nothing. ``workers > 1`` runs experiments in that many
    processes, splitting the machine's torch threads between them. Every experiment is seeded
    on its own, so the outcomes do not depend on the order; a different thread count changes
    float reductions in the last bits (recorded as ``provenance.torch_threads``).

    Robustness: a corrupt stored result is set aside and run again; temporary files killed
    writers left are removed. Each experiment is claimed while it runs
    (:meth:`ResultStore.claim`), so two sweeps on one store share the work: one skips what the
    other is running (said on stderr; it looks again once before it ends). Ctrl-C or SIGTERM
    stops the sweep at once: the experiments not started are dropped, running workers are
    terminated (nothing half-written) and :class:`quantwm.study.interrupt.Interrupted` (a
    ``KeyboardInterrupt``) is raised. Workers end by themselves, writing nothing, if the
    sweep's process dies (even by SIGKILL).
    """
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; expected one of {EXECUTORS}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    from quantwm.study.interrupt import terminate_as_interrupt

    if executor == "ray":
        from quantwm.study.ray_executor import RayOptions, check_ray_options

        ray_options = check_ray_options(ray_options if ray_options is not None else RayOptions())
    store.remove_stale_files()
    todo = (list(dict.fromkeys(experiments)) if force
            else store.missing(list(experiments), set_aside=True))
    queue = _ClaimQueue(todo, store, force)
    if executor == "ray":
        from quantwm.study.ray_executor import run_ray_sweep

        ran = (run_ray_sweep(queue, store, ray_options, on_done, cache_dir, quant_options)
               if todo else [])
        _say_skipped(queue, store)
        return ran
    with terminate_as_interrupt():
        if workers == 1 or len(todo) <= 1:
            ran = _run_serial(queue, store, device, on_done, cache_dir, quant_options)
        else:
            ran = _run_parallel(queue, store, device, on_done, cache_dir, workers, quant_options)
    _say_skipped(queue, store)
    return ran


def _say_skipped(queue: _ClaimQueue, store: ResultStore) -> None:
    for exp in queue.skipped:
        print(f"skipped {exp.key()}: another sweep is running it ({store.claim_holder(exp)}); "
              "its result will be in this store", file=sys.stderr, flush=True)


class _ClaimQueue:
    """The experiments of a sweep in order, each handed out with its claim held. One claimed by
    another process is put off, and tried once more when the rest is done."""

    def __init__(self, todo: Sequence[Experiment], store: ResultStore, force: bool) -> None:
        self.pending = collections.deque(todo)
        self.store = store
        self.force = force
        self.deferred: list[Experiment] = []
        self.skipped: list[Experiment] = []
        self.second_pass = False

    def next(self) -> tuple[Experiment, Any] | None:
        while True:
            if not self.pending:
                if self.second_pass or not self.deferred:
                    return None
                self.pending.extend(self.deferred)
                self.deferred.clear()
                self.second_pass = True
            exp = self.pending.popleft()
            claim = self.store.claim(exp)
            if claim is None:
                (self.skipped if self.second_pass else self.deferred).append(exp)
                continue
            if not self.force and self.store.has(exp):  # another sweep finished it meanwhile
                claim.release()
                continue
            return exp, claim


def _run_serial(queue: _ClaimQueue, store: ResultStore, device: torch.device | str,
                on_done: Callable[[Experiment, dict[str, Any]], None] | None,
                cache_dir: str | Path, quant_options: dict[str, Any]) -> list[Experiment]:
    ran = []
    while (item := queue.next()) is not None:
        exp, claim = item
        with claim:
            record = run_experiment(exp, store, device, cache_dir, **quant_options)
        ran.append(exp)
        if on_done:
            on_done(exp, record)
    return ran


def _run_parallel(queue: _ClaimQueue, store: ResultStore, device: torch.device | str,
                  on_done: Callable[[Experiment, dict[str, Any]], None] | None,
                  cache_dir: str | Path, workers: int, quant_options: dict[str, Any]
                  ) -> list[Experiment]:
    """At most ``workers`` experiments at a time in spawned processes, each claimed when it
    starts. A failed experiment lets the running ones finish (their results are kept) and then
    raises; an interrupt terminates the workers at once."""
    import multiprocessing
    import os
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from quantwm.study.interrupt import init_worker, signals_blocked

    threads = max(1, torch.get_num_threads() // workers)
    context = multiprocessing.get_context("spawn")  # no forked torch/OpenMP state
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=init_worker,
                               initargs=(os.getpid(), threads))
    running: dict[Any, tuple[Experiment, Any]] = {}
    ran: list[Experiment] = []
    completed = False
    try:
        try:
            while True:
                while len(running) < workers and (item := queue.next()) is not None:
                    exp, claim = item
                    try:
                        with signals_blocked():  # a worker starts with Ctrl-C held back
                            future = pool.submit(_work, exp, store, str(device), cache_dir,
                                                 quant_options)
                    except BaseException:
                        claim.release()
                        raise
                    running[future] = (exp, claim)
                if not running:
                    break
                done, _ = wait(running, timeout=1.0, return_when=FIRST_COMPLETED)
                for future in done:
                    exp, claim = running.pop(future)
                    claim.release()
                    record = future.result()
                    ran.append(exp)
                    if on_done:
                        on_done(exp, record)
        except Exception:
            wait(running)  # the others finish and keep their results; then the error
            raise
        completed = True
    finally:
        if not completed:  # interrupted (or failed): no worker may go on with anything
            _terminate_workers(pool)
        for _, claim in running.values():
            claim.release()
        pool.shutdown(wait=True, cancel_futures=True)
    return ran


def _work(experiment: Experiment, store: ResultStore, device: str, cache_dir: str | Path,
          quant_options: dict[str, Any]) -> dict[str, Any]:
    """A worker's job: run the experiment and store it, unless the sweep has died meanwhile."""
    from quantwm.study.interrupt import ORPHAN_EXIT_STATUS, exit_now, parent_alive

    record = run_experiment(experiment, None, device, cache_dir, **quant_options)
    if not parent_alive():
        exit_now(ORPHAN_EXIT_STATUS)
    store.write(experiment, record)  # as run_experiment(experiment, store) writes it
    return record


def _terminate_workers(pool: Any, grace_s: float = 5.0) -> None:
    """SIGTERM every worker process of ``pool``, SIGKILL those alive after ``grace_s``."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for p in processes:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in processes:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(1.0)
