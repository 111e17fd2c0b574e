"""Stopping long runs cleanly: SIGTERM handled like Ctrl-C, and workers that die with their parent.

A sweep or a notebook batch turns SIGTERM into :class:`Interrupted` (a ``KeyboardInterrupt``)
while it runs, so that the same clean-up as for Ctrl-C happens: workers are terminated,
temporary files removed, and the command says how to resume. Worker processes ignore SIGINT
(Ctrl-C reaches the whole process group; the parent stops them) and run a watchdog thread that
ends them, without writing anything, as soon as their parent is gone, even after a SIGKILL of
the parent, which nothing can catch.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator

RESUME_HINT = "rerun the same command to resume (finished results are kept)"


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived while a sweep or notebook batch ran."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        self.signum = int(signum)
        self.detail = ""  # what was stopped, for the message (set by whoever stopped)
        super().__init__(signal.Signals(self.signum).name)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_status(self) -> int:
        """The shell's status of a process ended by this signal (130 for SIGINT, 143 SIGTERM)."""
        return 128 + self.signum


def interruption(err: BaseException) -> Interrupted:
    """``err`` (a KeyboardInterrupt) as an :class:`Interrupted`: Ctrl-C is SIGINT."""
    return err if isinstance(err, Interrupted) else Interrupted(signal.SIGINT)


class SignalLog:
    """The interrupting signal :func:`terminate_as_interrupt` saw, if any (``signum``)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = signum
        raise Interrupted(signum)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[SignalLog]:
    """While the block runs, SIGTERM (like SIGINT) raises :class:`Interrupted` in the main
    thread instead of ending the process at once, and the yielded :class:`SignalLog` records
    which arrived (code that catches the exception cannot hide the interruption). A signal the
    process ignores (``nohup``, a background job) stays ignored; outside the main thread, where
    Python cannot set handlers, nothing changes."""
    log = SignalLog()
    if threading.current_thread() is not threading.main_thread():
        yield log
        return
    previous = {sig: signal.signal(sig, log._handle) for sig in (signal.SIGINT, signal.SIGTERM)
                if signal.getsignal(sig) is not signal.SIG_IGN}
    try:
        yield log
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back in this thread while the block runs (a child started here
    inherits the mask, so a Ctrl-C cannot interrupt it before :func:`init_worker` ignores it);
    a signal that arrived meanwhile is delivered when the block ends."""
    sigs = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# ------------------------------------------------------------------------------ workers
_PARENT_PID: int | None = None
WATCHDOG_SECONDS = 0.5
ORPHAN_EXIT_STATUS = 75  # os.EX_TEMPFAIL: nothing written, rerun to do the work


def parent_alive() -> bool:
    """In a worker started with :func:`init_worker`: whether the process that started it is
    still its parent (always True elsewhere)."""
    return _PARENT_PID is None or os.getppid() == _PARENT_PID


def init_worker(parent_pid: int, threads: int | None = None) -> None:
    """Initializer of a sweep's worker processes: ignore Ctrl-C (the parent stops the pool),
    die on SIGTERM, exit as soon as ``parent_pid`` is no longer the parent, and use
    ``threads`` torch threads."""
    global _PARENT_PID
    _PARENT_PID = parent_pid
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_term)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    if not parent_alive():
        exit_now(ORPHAN_EXIT_STATUS)
    threading.Thread(target=_watch_parent, name="quantwm-parent-watchdog", daemon=True).start()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _watch_parent() -> None:
    while parent_alive():
        time.sleep(WATCHDOG_SECONDS)
    exit_now(ORPHAN_EXIT_STATUS)  # at once: no result of an orphan is written


def _exit_on_term(signum: int, frame: object) -> None:
    exit_now(128 + signum)


def exit_now(status: int) -> None:
    """End this worker at once, writing nothing more; multiprocessing's finalizers run first,
    so that the locks it made (tqdm's, ...) are not reported leaked by the resource tracker."""
    try:
        from multiprocessing import util

        util._run_finalizers(0)
    finally:
        os._exit(status)
