"""The result store: one JSON file per finished experiment, written atomically.

A sweep asks the store what is done and runs only the rest, so an interrupted sweep resumes
and loses nothing; a result is either whole on disk or absent (never half-written), and an
experiment's file name is its key, so rerunning cannot duplicate it.

Each result records the SHA-1 of the checkpoint it was made with and the revision of its
quantization method (``quantwm.quant.METHOD_REVISIONS``). After a model is retrained or a
method's code changes what it computes, the old results are *stale*: ``has`` and ``missing``
treat them as not done, so the next sweep reruns them (and replaces the files) instead of mixing
two models or two versions of a method in one table.

Only ``<env>/<key>.json`` files are results. Dot-files beside them are not: ``.<key>.<random>
.tmp.json`` is a write in progress (or one a killed process left; :meth:`ResultStore
.remove_stale_files` deletes those), ``.<key>.claim`` marks an experiment a sweep is running
(:meth:`ResultStore.claim`). A result that cannot be read or lacks its fields is *corrupt*: it is
named in a one-line warning and treated as missing; a sweep sets it aside as
``<key>.json.corrupt`` and runs the experiment again.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from quantwm.study.grid import Experiment
from quantwm.utils import DATA_DIR, atomic_write_json

RESULTS_DIR = DATA_DIR / "results"
TEMP_MAX_AGE_S = 15 * 60  # a temporary file older than this belongs to no write in progress
CORRUPT_SUFFIX = ".corrupt"


class CorruptResult(ValueError):
    """A stored result that cannot be read or lacks its fields (the message names the file)."""


class ResultStore:
    """Results of experiments under ``root/<env>/<key>.json``."""

    def __init__(self, root: str | Path = RESULTS_DIR, check_checkpoints: bool = True) -> None:
        self.root = Path(root)
        self.check_checkpoints = check_checkpoints
        self._warned: set[Path] = set()

    def path(self, experiment: Experiment) -> Path:
        return self.root / experiment.env / f"{experiment.key()}.json"

    def has(self, experiment: Experiment) -> bool:
        """Whether a current result is stored (one made with another checkpoint is stale; a
        corrupt one counts as missing, with a warning)."""
        path = self.path(experiment)
        if not path.exists():
            return False
        try:
            record = self._load(path)
        except CorruptResult as err:
            self._warn(path, f"{err}; treated as missing")
            return False
        return not self.is_stale(record)

    def is_stale(self, record: dict[str, Any]) -> bool:
        """Whether ``record`` was made with another checkpoint than the one now shipped, with
        an older revision of its quantization method, or calibrated on another draw of
        calibration episodes."""
        exp = Experiment.from_dict(record["experiment"])
        if record.get("method_revision", 1) != exp.method_revision:
            return True
        wanted = exp.calibration_revision
        if wanted is not None and record.get("calibration_revision", 1) != wanted:
            return True
        made_with = record.get("checkpoint")
        if not self.check_checkpoints or made_with is None:
            return False
        from quantwm.model import checkpoint_digest

        try:
            return checkpoint_digest(record["experiment"]["env"]) != made_with["sha1"]
        except FileNotFoundError:
            return False  # no checkpoint to compare with: keep what is there

    def write(self, experiment: Experiment, result: dict[str, Any]) -> Path:
        """Store ``result`` for ``experiment`` atomically (replacing an older one)."""
        record = {"experiment": experiment.to_dict(), "key": experiment.key(), **result}
        path = self.path(experiment)
        atomic_write_json(path, record)
        return path

    def read(self, experiment: Experiment) -> dict[str, Any]:
        """The stored record; ValueError naming the file when it is missing or corrupt."""
        path = self.path(experiment)
        if not path.exists():
            raise ValueError(f"no result for {experiment.key()} under {self.root}")
        return self._load(path)

    def read_key(self, key: str) -> dict[str, Any]:
        """The stored record of an experiment key (``<env>-...``); ValueError naming the file
        when it is missing or corrupt."""
        path = self.root / key.split("-")[0] / f"{key}.json"
        if not path.exists():
            raise ValueError(f"no stored result {key!r} under {self.root}")
        return self._load(path)

    def missing(self, experiments: list[Experiment], set_aside: bool = False
                ) -> list[Experiment]:
        """The experiments without a current stored result, in order, without duplicates.

        With ``set_aside`` a corrupt result among them is renamed ``<key>.json.corrupt`` (kept
        for a look, never read again), so that running the experiment replaces it."""
        seen: set[str] = set()
        todo = []
        for e in experiments:
            if e.key() in seen:
                continue
            seen.add(e.key())
            if (set_aside and self.set_aside(e) is not None) or not self.has(e):
                todo.append(e)
        return todo

    def set_aside(self, experiment: Experiment) -> Path | None:
        """Rename a corrupt result of ``experiment`` to ``<key>.json.corrupt``; its new path,
        or None when there is no corrupt result."""
        path = self.path(experiment)
        if not path.exists():
            return None
        try:
            self._load(path)
            return None
        except CorruptResult:
            pass
        aside = path.with_name(path.name + CORRUPT_SUFFIX)
        try:
            os.replace(path, aside)
        except FileNotFoundError:  # another sweep set it aside first
            return None
        _warn(f"corrupt result {path} set aside as {aside.name}; it is run again")
        return aside

    def result_paths(self) -> list[Path]:
        """The result files, sorted: ``<env>/<key>.json``, never a dot-file (a write in
        progress, a temporary file a killed process left, a claim)."""
        return sorted(p for p in self.root.glob("*/*.json") if not p.name.startswith("."))

    def records(self) -> Iterator[dict[str, Any]]:
        """Every readable record (a corrupt one is skipped with a one-line warning)."""
        for path in self.result_paths():
            try:
                yield self._load(path)
            except CorruptResult as err:
                self._warn(path, f"{err}; skipped")

    def frame(self) -> pd.DataFrame:
        """One row per (experiment, iters) with the success rate and the experiment fields.

        ``planner`` is the planner profile the experiment ran with (``Experiment.profile``);
        ``study_profile`` the study profile whose planner, evaluation and calibration episodes
        it was run with (``quantwm.study.profiles.STUDY_PROFILES``; the seed is its own
        column), None where none has them. ``act_granularity`` is spelled as in every table of
        the kit, ``per-tensor`` / ``per-token`` (the records and ``QuantConfig`` keep the
        identifiers ``per_tensor`` / ``per_token``).
        """
        from quantwm.study.profiles import STUDY_PROFILES

        made_with = {(p.planner, p.episodes, p.calibration_episodes): name
                     for name, p in STUDY_PROFILES.items()}
        rows = []
        for rec in self.records():
            exp = rec["experiment"]
            base = {k: exp[k] for k in ("env", "method", "group")}
            base.update(act_granularity=exp["act_granularity"].replace("_", "-"),
                        planner=exp["profile"],
                        study_profile=made_with.get((exp["profile"], exp["episodes"],
                                                     exp["calib_episodes"])),
                        episodes=exp["episodes"], seed=exp["seed"],
                        enc_w=exp["encoder"][0], enc_a=exp["encoder"][1],
                        pred_w=exp["predictor"][0], pred_a=exp["predictor"][1], key=rec["key"])
            for iters, rate in rec.get("success", {}).items():
                rows.append({**base, "iters": int(iters), "success": rate})
        return pd.DataFrame(rows)

    # ------------------------------------------------------------------ damaged files
    def _load(self, path: Path) -> dict[str, Any]:
        """A record read from ``path``, or :class:`CorruptResult` naming it."""
        try:
            record = json.loads(path.read_bytes())
        except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
            raise CorruptResult(f"corrupt result {path} (not JSON: {err})") from None
        except IsADirectoryError:
            raise CorruptResult(f"corrupt result {path} (a directory, not a file)") from None
        problem = _record_problem(record)
        if problem:
            raise CorruptResult(f"corrupt result {path} ({problem})")
        return record

    def _warn(self, path: Path, message: str) -> None:
        if path not in self._warned:  # once per file and store
            self._warned.add(path)
            _warn(message)

    def remove_stale_files(self, max_age_s: float = TEMP_MAX_AGE_S) -> list[Path]:
        """Delete what killed processes left in the store's env folders: temporary files
        (``.<name>.<random>.tmp.<ext>``) older than ``max_age_s`` (younger ones may be writes in
        progress; readers ignore them anyway) and claims no live process holds. Returns their
        paths."""
        import fcntl

        removed = []
        now = time.time()
        for tmp in self.root.glob("*/.*.tmp.*"):
            try:
                if now - tmp.stat().st_mtime > max_age_s:
                    tmp.unlink()
                    removed.append(tmp)
            except FileNotFoundError:  # its writer finished, or another sweep removed it
                pass
        for path in self.root.glob("*/.*.claim"):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    path.unlink()
                    removed.append(path)
            except (BlockingIOError, FileNotFoundError):  # held, or released meanwhile
                pass
            finally:
                os.close(fd)
        return removed

    # ------------------------------------------------------------------------ claims
    def claim_path(self, experiment: Experiment) -> Path:
        return self.root / experiment.env / f".{experiment.key()}.claim"

    def claim(self, experiment: Experiment) -> Claim | None:
        """Claim ``experiment`` for this process, or None when another live process holds it.

        A claim is ``.<key>.claim`` beside the result, holding the claimer's pid, host and
        start time, and locked (``flock``) while held: the lock ends with its process however
        that ends (even SIGKILL), so the claim of a dead sweep is stale at once and taken over.
        Release it with :meth:`Claim.release` (or ``with``), which removes the file.
        """
        import fcntl

        path = self.claim_path(experiment)
        path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # held by a live process
                os.close(fd)
                return None
            except BaseException:
                os.close(fd)
                raise
            try:  # the holder we replace may have removed the file after we opened it
                current = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if not current:
                os.close(fd)
                continue
            info = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time(),
                    "key": experiment.key()}
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(info).encode())
            return Claim(path, fd)
        return None

    def claim_holder(self, experiment: Experiment) -> str:
        """Who holds ``experiment``'s claim, in words (for messages)."""
        try:
            info = json.loads(self.claim_path(experiment).read_text())
            since = time.strftime("%H:%M:%S", time.localtime(info["time"]))
            return f"pid {info['pid']} on {info['host']} since {since}"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"


class Claim:
    """A held experiment claim (see :meth:`ResultStore.claim`)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        """Remove the claim file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _record_problem(record: Any) -> str | None:
    """What makes ``record`` unusable, or None."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    for field, kind in (("experiment", dict), ("key", str), ("success", dict)):
        if field not in record and field != "success":  # success: in every record a run makes
            return f"no {field!r} field"
        if field in record and not isinstance(record[field], kind):
            return f"{field!r} is not a {kind.__name__}"
    try:
        Experiment.from_dict(record["experiment"])
    except (TypeError, ValueError, KeyError) as err:
        return f"its experiment is invalid: {' '.join(str(err).split())}"
    return None


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)
