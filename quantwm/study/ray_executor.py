"""Sweeps on Ray: one machine's cores or GPUs, or a cluster (``quantwm sweep --executor ray``).

Each experiment is a Ray task with a CPU / GPU request (:class:`RayOptions`); a GPU task plans on
``cuda``. Workers share no filesystem with the driver (the process that runs the sweep): the
driver reads ``data/`` and puts what tasks need into Ray's object store, once each: every env's
checkpoint bytes and latent-error validation segments, every episode set, every calibration
(cached in ``data/cache`` on the driver; one that is not yet cached is recorded by a Ray task
with the same resources and then cached by the driver). A task runs
:func:`quantwm.study.runner.run_experiment` on those (:class:`~quantwm.study.runner
.ExperimentInputs`) and returns its record; only the driver writes the store, atomically, and
holds each experiment's claim while its task runs, as the local executor does. The same
experiment gives the same record on either executor (at the same device and thread count; the
time and provenance fields aside).

Failures: a task whose process or node dies is retried by Ray (``max_retries``); an exception
inside an experiment is not retried (it would fail again): the running tasks finish, are
stored, and the error is raised. Ctrl-C or SIGTERM cancels the running tasks, stops a local
instance and raises :class:`quantwm.study.interrupt.Interrupted`; a driver that is killed
leaves the store as it was after its last result (Ray ends the tasks of a driver that is gone),
and a rerun resumes.

Security: a local instance is started with Ray's token authentication (``RAY_AUTH_MODE=token``
is set for this process; the token is Ray's own, ``~/.ray/auth_token``, made on first use),
without a dashboard (``--dashboard`` asks for one), and listening on 127.0.0.1 only; joining a
cluster uses the cluster's own settings (start it with ``RAY_AUTH_MODE=token``).
Ray is an optional extra: ``pip install 'quantwm[ray]'``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantwm.study.grid import Experiment
from quantwm.study.store import ResultStore

RAY_EXTRA = "pip install 'quantwm[ray]'"
CONNECT_TIMEOUT_S = 5.0
# Ray's switch for single-machine use: every node IP is 127.0.0.1, so its servers listen there
_LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@dataclass(frozen=True)
class RayOptions:
    """Where and how a sweep's tasks run on Ray.

    ``address``: None starts a new local instance (even where another runs); ``"auto"`` joins
    the cluster ``RAY_ADDRESS`` names or, without it, the one this machine is part of;
    ``HOST:PORT`` joins the cluster whose head listens there. ``cpus`` / ``gpus``: per task (a
    GPU task plans on ``cuda``; fractions share a device). ``max_retries``: how often a task
    whose process or node died is run again. ``workers``: tasks in flight at a time (default:
    as many as the cluster holds when the sweep starts); a local instance gets ``workers *
    cpus`` CPUs (default: all of this machine's). ``dashboard``: start Ray's dashboard with a
    local instance (off: it is a web server).
    """

    address: str | None = None
    cpus: float = 1.0
    gpus: float = 0.0
    max_retries: int = 3
    workers: int | None = None
    dashboard: bool = False

    @property
    def device(self) -> str:
        """The torch device a task plans on."""
        return "cuda" if self.gpus > 0 else "cpu"

    @property
    def where(self) -> str:
        """The cluster in words (for messages)."""
        address = self.resolved_address()
        return "a local Ray instance" if address is None else f"the Ray cluster at {address}"

    def resolved_address(self) -> str | None:
        """The cluster to join (None: a new local instance, whatever else runs here)."""
        return self.address

    def check(self) -> RayOptions:
        """``self``, or a one-line ValueError naming the bad value (nothing is started)."""
        for flag, value in (("--cpus", self.cpus), ("--gpus", self.gpus)):
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not math.isfinite(value):
                raise ValueError(f"{flag} must be a number, got {value!r}")
        if self.cpus <= 0:
            raise ValueError(f"--cpus must be > 0 (CPUs per task), got {self.cpus:g}")
        if self.gpus < 0:
            raise ValueError(f"--gpus must be >= 0 (GPUs per task), got {self.gpus:g}")
        if self.gpus > 1 and self.gpus != int(self.gpus):
            raise ValueError(f"--gpus above 1 must be a whole number, got {self.gpus:g}")
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) \
                or self.max_retries < 0:
            raise ValueError(f"--max-retries must be an integer >= 0, got {self.max_retries!r}")
        if self.workers is not None and (isinstance(self.workers, bool)
                                         or not isinstance(self.workers, int)
                                         or self.workers < 1):
            raise ValueError(f"--workers must be an integer >= 1, got {self.workers!r}")
        if self.address is not None and not str(self.address).strip():
            raise ValueError("--address is empty; give auto or HOST:PORT (leave it out to "
                             "start a local instance)")
        return self


def check_ray_options(options: RayOptions) -> RayOptions:
    """Everything about ``options`` that can be checked before Ray starts: the values, Ray's
    presence, the address's reachability (a TCP connection to HOST:PORT, at most
    :data:`CONNECT_TIMEOUT_S`) and, for a local instance, a GPU when ``gpus`` asks for one.
    One-line ValueErrors naming the value."""
    options.check()
    import_ray()
    address = options.resolved_address()
    if address is None:
        if options.gpus > 0:
            import torch

            if not torch.cuda.is_available():
                raise ValueError(f"--gpus {options.gpus:g}: this machine has no CUDA GPU for a "
                                 "local Ray instance (torch sees none); leave --gpus out, or "
                                 "give the --address of a cluster with GPUs")
    elif address != "auto":
        _check_reachable(address)
    return options


def import_ray() -> Any:
    """The ``ray`` module, or a ValueError saying how to install it."""
    try:
        import ray
    except ImportError as err:
        raise ValueError(f"--executor ray needs Ray, an optional extra: {RAY_EXTRA} "
                         f"({err})") from None
    return ray


def _host_port(address: str) -> tuple[str, str, str]:
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    return host.strip("[]"), sep, port


def _is_loopback(address: str) -> bool:
    import ipaddress

    host = _host_port(address)[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_reachable(address: str) -> None:
    host, sep, port = _host_port(address)
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--address {address!r} is not HOST:PORT (or auto)")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        if isinstance(err, TimeoutError | socket.timeout):
            reason = f"no answer within {CONNECT_TIMEOUT_S:g} s"
        raise ValueError(f"--address {address}: no Ray cluster can be reached there "
                         f"({reason})") from None


# ----------------------------------------------------------------------------- connecting
class _Connection:
    """ray.init for a sweep and its undoing: a local instance is shut down afterwards, a
    cluster disconnected from; a connection this process already had is left as it was."""

    def __init__(self, options: RayOptions) -> None:
        self.options = options
        self.ray = import_ray()
        self.owned = False
        self._env: dict[str, str | None] = {}
        self._local_constant: Any = None

    def open(self) -> None:
        ray = self.ray
        if ray.is_initialized():  # a notebook that connected itself: use that
            return
        address = self.options.resolved_address()
        kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
        if address is None:
            self._local_settings()
            cpus = None  # Ray's default: every CPU of this machine
            if self.options.workers is not None:
                cpus = max(1, math.ceil(self.options.workers * self.options.cpus))
            kwargs.update(num_cpus=cpus, include_dashboard=self.options.dashboard)
        elif _is_loopback(address):
            self._loopback_only()
        self.owned = True  # from here on, close() shuts down whatever init left
        try:  # "local": a new instance, never one that happens to run on this machine
            ray.init(address=address or "local", **kwargs)
        except SystemExit as err:  # Ray's own SIGTERM handler, set while init runs
            if err.code == signal.SIGTERM:
                from quantwm.study.interrupt import Interrupted

                raise Interrupted(signal.SIGTERM) from None
            raise
        except Exception as err:  # ConnectionError, AuthenticationError, ...: one line
            self.close()
            first = " ".join(str(err).split())[:300]
            raise ValueError(f"--address {address}: cannot join a Ray cluster there "
                             f"({first})" if address else
                             f"cannot start a local Ray instance ({first})") from None

    def _local_settings(self) -> None:
        """Token authentication and no usage report (as Ray leaves them), servers on 127.0.0.1
        only."""
        from ray._raylet import Config

        mode = os.environ.get("RAY_AUTH_MODE")
        if mode is not None and mode.lower() != "token":
            print(f"quantwm sweep: RAY_AUTH_MODE={mode} ignored: a local Ray instance uses token "
                  "authentication", file=sys.stderr, flush=True)
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
        Config.initialize("")  # this process reads the mode again, as Ray does when it sets it
        self._loopback_only()

    def _loopback_only(self) -> None:
        """Ray's single-machine mode: this node's IP is 127.0.0.1 (a local instance listens
        there only; a cluster at a loopback address is reached there). Undone on close: a later
        connection of this process may go elsewhere."""
        from ray._private import ray_constants

        self._env[_LOCAL_ONLY_ENV] = os.environ.get(_LOCAL_ONLY_ENV)
        os.environ[_LOCAL_ONLY_ENV] = "0"  # Ray's child processes read it from the environment
        self._local_constant = ray_constants.ENABLE_RAY_CLUSTER  # read by Ray at its import
        ray_constants.ENABLE_RAY_CLUSTER = False

    def _restore(self) -> None:
        for name, value in self._env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._env.clear()
        if self._local_constant is not None:
            from ray._private import ray_constants

            ray_constants.ENABLE_RAY_CLUSTER = self._local_constant
            self._local_constant = None

    def close(self) -> None:
        if self.owned:
            with suppress(Exception):
                self.ray.shutdown()
            self.owned = False
        self._restore()


@contextlib.contextmanager
def ray_session(options: RayOptions | None = None) -> Iterator[Any]:
    """Ray connected (or a local instance started) as a sweep does it, for several sweeps in a
    row: each :func:`quantwm.study.runner.run_sweep` with ``executor="ray"`` inside uses it
    instead of starting its own. Yields the ``ray`` module; disconnects (stops a local
    instance) at the end.

        with ray_session(RayOptions(workers=2)):
            run_sweep(grid_a, store, executor="ray", ray_options=RayOptions(workers=2))
            run_sweep(grid_b, store, executor="ray", ray_options=RayOptions(workers=2))
    """
    connection = _Connection(check_ray_options(options or RayOptions()))
    try:
        connection.open()
        yield connection.ray
    finally:
        connection.close()


def _slots(resources: dict[str, float], options: RayOptions) -> int:
    """How many tasks of ``options`` the cluster's ``resources`` hold at once."""
    slots = resources.get("CPU", 0.0) / options.cpus
    if options.gpus > 0:
        slots = min(slots, resources.get("GPU", 0.0) / options.gpus)
    return int(slots + 1e-9)


def _check_resources(ray: Any, options: RayOptions) -> int:
    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    if options.gpus > 0 and gpus < options.gpus:
        raise ValueError(f"--gpus {options.gpus:g}: {options.where} has {gpus:g} GPU(s)")
    if cpus < options.cpus:
        raise ValueError(f"--cpus {options.cpus:g}: {options.where} has {cpus:g} CPU(s)")
    return max(1, _slots(resources, options))


# --------------------------------------------------------------------------- the tasks
def _run_task(experiment: Experiment, checkpoint: bytes, checkpoint_file: str,
              checkpoint_sha1: str, episodes: Any, segments: Any, calibration: Any,
              threads: int, device: str, quant_options: dict[str, Any]) -> dict[str, Any]:
    """A task: one experiment on the inputs the driver shipped; returns its record."""
    import torch

    from quantwm.study.runner import ExperimentInputs, run_experiment

    torch.set_num_threads(threads)
    inputs = ExperimentInputs(checkpoint, checkpoint_file, checkpoint_sha1, episodes, segments,
                              calibration)
    return run_experiment(experiment, None, device, inputs=inputs, **quant_options)


def _record_calibration_task(env: str, profile: str, checkpoint: bytes, checkpoint_file: str,
                             checkpoint_sha1: str, episodes: Any, threads: int,
                             device: str) -> dict[str, Any]:
    """A task: the calibration of ``env``'s checkpoint (not yet cached on the driver)."""
    import torch

    from quantwm.study.runner import ExperimentInputs, record_calibration_of

    torch.set_num_threads(threads)
    inputs = ExperimentInputs(checkpoint, checkpoint_file, checkpoint_sha1, None, None)
    calib = record_calibration_of(inputs.load_model(device), env, profile, episodes, device)
    return {part: [t.cpu() for t in ts] for part, ts in calib.items()}


class _Shipped:
    """What tasks need from ``data/``, put into Ray's object store once each, when first
    needed. Calibrations not cached are recorded by tasks and cached here when they finish."""

    def __init__(self, ray: Any, options: RayOptions, cache_dir: str | Path) -> None:
        self.ray = ray
        self.options = options
        self.cache_dir = cache_dir
        self.threads = max(1, int(options.cpus))
        self._checkpoints: dict[str, tuple[Any, str, str]] = {}
        self._segments: dict[str, Any] = {}
        self._episodes: dict[tuple[str, int, int], Any] = {}
        self._calibrations: dict[tuple[str, str, int], Any] = {}
        self.recording: dict[Any, Path] = {}  # calibration task -> its cache file
        self._run = ray.remote(_run_task)  # each defined once per sweep
        self._record = ray.remote(_record_calibration_task)

    def checkpoint(self, env: str) -> tuple[Any, str, str]:
        if env not in self._checkpoints:
            from quantwm.model import checkpoint_digest, checkpoint_path

            path = checkpoint_path(env)
            sha1 = checkpoint_digest(env)
            self._checkpoints[env] = (self.ray.put(path.read_bytes()), path.name, sha1)
        return self._checkpoints[env]

    def segments(self, env: str) -> Any:
        if env not in self._segments:
            from quantwm.model import load
            from quantwm.study.latent import validation_segments

            num_hist = int(load(env).config.num_hist)
            self._segments[env] = self.ray.put(validation_segments(env, num_hist=num_hist))
        return self._segments[env]

    def episodes(self, exp: Experiment) -> Any:
        key = (exp.env, exp.episodes, exp.seed)
        if key not in self._episodes:
            from quantwm.data import evaluation_episodes

            self._episodes[key] = self.ray.put(
                evaluation_episodes(exp.env, n=exp.episodes, seed=exp.seed))
        return self._episodes[key]

    def calibration(self, exp: Experiment) -> Any:
        if exp.calibration_revision is None:  # FP32, or quantized without recorded inputs
            return None
        key = (exp.env, exp.profile, exp.calib_episodes)
        if key not in self._calibrations:
            from quantwm.study.runner import (
                CALIBRATION_SEED,
                cached_calibration,
                calibration_path,
            )

            path = calibration_path(exp.env, exp.profile, self.cache_dir, exp.calib_episodes)
            calib = cached_calibration(path)
            if calib is not None:
                self._calibrations[key] = self.ray.put(calib)
            else:
                from quantwm.data import calibration_episodes

                eps = calibration_episodes(exp.env, n=exp.calib_episodes, seed=CALIBRATION_SEED)
                task = self._record.options(
                    **self.task_options(f"quantwm calibration {exp.env} {exp.profile} "
                                        f"n{exp.calib_episodes}"))
                ref = task.remote(exp.env, exp.profile, *self.checkpoint(exp.env),
                                  self.ray.put(eps), self.threads, self.options.device)
                self._calibrations[key] = ref
                self.recording[ref] = path
        return self._calibrations[key]

    def task_options(self, name: str) -> dict[str, Any]:
        return {"num_cpus": self.options.cpus, "num_gpus": self.options.gpus,
                "max_retries": self.options.max_retries, "retry_exceptions": False,
                "name": name}

    def submit(self, exp: Experiment, quant_options: dict[str, Any]) -> Any:
        task = self._run.options(**self.task_options(f"quantwm {exp.key()}"))
        return task.remote(exp, *self.checkpoint(exp.env), self.episodes(exp),
                           self.segments(exp.env), self.calibration(exp), self.threads,
                           self.options.device, quant_options)

    def save_recorded(self, ref: Any) -> None:
        """Cache a finished calibration task's result (an error is its experiments' to tell)."""
        from quantwm.plan import save_calibration

        path = self.recording.pop(ref)
        with suppress(Exception):
            save_calibration(self.ray.get(ref), path)


# ------------------------------------------------------------------------------- the sweep
def run_ray_sweep(queue: Any, store: ResultStore, options: RayOptions,
                  on_done: Callable[[Experiment, dict[str, Any]], None] | None,
                  cache_dir: str | Path, quant_options: dict[str, Any]) -> list[Experiment]:
    """Run what ``queue`` (``quantwm.study.runner._ClaimQueue``) hands out as Ray tasks; the
    driver stores each record as it arrives. A failed experiment lets the running ones finish
    and then raises; an interrupt cancels every task at once (see the module doc)."""
    from quantwm.study.interrupt import Interrupted, terminate_as_interrupt

    connection = _Connection(options)
    running: dict[Any, tuple[Experiment, Any]] = {}
    ran: list[Experiment] = []
    shipped = None
    completed = False
    try:
        connection.open()  # Ray sets its own SIGTERM handler: ours is set after
        ray = connection.ray
        slots = _check_resources(ray, options)
        window = options.workers or slots
        shipped = _Shipped(ray, options, cache_dir)
        failure: BaseException | None = None
        with terminate_as_interrupt() as signals:
            try:
                while True:
                    while failure is None and len(running) < window \
                            and (item := queue.next()) is not None:
                        exp, claim = item
                        try:
                            running[shipped.submit(exp, quant_options)] = (exp, claim)
                        except BaseException:
                            claim.release()
                            raise
                    if not running:
                        break
                    refs = [*running, *shipped.recording]
                    done, _ = ray.wait(refs, num_returns=1, timeout=1.0)
                    for ref in done:
                        if ref in shipped.recording:
                            shipped.save_recorded(ref)
                            continue
                        exp, claim = running.pop(ref)
                        try:
                            record = _result(ray, ref, exp, options)
                        except Exception as err:  # the others finish and are kept; then this
                            claim.release()
                            failure = failure or err
                            continue
                        store.write(exp, record)
                        claim.release()
                        ran.append(exp)
                        if on_done:
                            on_done(exp, record)
                for ref in list(shipped.recording):  # a calibration no experiment waited for
                    shipped.save_recorded(ref)
            except KeyboardInterrupt as err:  # Ray re-raises a signal's as its own
                if signals.signum is not None and not isinstance(err, Interrupted):
                    raise Interrupted(signals.signum) from None
                raise
        if failure is not None:
            raise failure
        completed = True
    finally:
        if not completed and shipped is not None and not connection.owned:
            _cancel(connection.ray, [*running, *shipped.recording])
        for _, claim in running.values():
            claim.release()
        # interrupted or failed: disconnecting stops every task left (Ray ends the tasks of a
        # driver that is gone; a local instance ends with it). ray.cancel first would race
        # the disconnection (Ray 2.60's task manager can abort the driver on it)
        connection.close()
    return ran


def _cancel(ray: Any, refs: list[Any], wait_s: float = 10.0) -> None:
    """Stop the tasks of ``refs`` (a connection this sweep did not open stays open)."""
    for ref in refs:
        with suppress(Exception):
            ray.cancel(ref, force=True)
    with suppress(Exception):
        ray.wait(refs, num_returns=len(refs), timeout=wait_s)


def _result(ray: Any, ref: Any, exp: Experiment, options: RayOptions) -> dict[str, Any]:
    """A finished task's record; its experiment's own error as raised (a bad input: one line),
    a task that Ray gave up on as a RuntimeError naming the experiment."""
    from ray.exceptions import RayError, RayTaskError

    try:
        return ray.get(ref)
    except RayTaskError as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, ValueError | FileNotFoundError):
            raise cause from None
        raise
    except RayError as err:  # its process or node died more than max_retries
        first = (str(err).strip().splitlines() or [""])[0]
        raise RuntimeError(f"{exp.key()}: its Ray task failed {options.max_retries + 1} "
                           f"time(s) ({type(err).__name__}: {first})") from None


def describe(options: RayOptions) -> str:
    """The executor in words, for the sweep's first line."""
    per_task = f"{options.cpus:g} CPU" + (f" + {options.gpus:g} GPU" if options.gpus else "")
    return f"Ray ({options.where}, {per_task} per task)"


def local_slots(options: RayOptions) -> int:
    """Tasks a local instance runs at once (for the cost estimate before it starts)."""
    if options.workers is not None:
        return options.workers
    return max(1, int((os.cpu_count() or 1) / options.cpus))


__all__: Sequence[str] = ["RayOptions", "check_ray_options", "describe", "import_ray",
                          "local_slots", "ray_session", "run_ray_sweep"]
