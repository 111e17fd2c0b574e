"""Process-tree helpers for the fault tests (Linux /proc): find what a test started, wait for
it to end, and kill only that."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def as_from_a_terminal() -> None:
    """``preexec_fn`` of a process a test will Ctrl-C: SIGINT back to its default action. A
    shell starts background jobs with SIGINT ignored and children inherit that, so a test
    suite run with ``&`` or ``nohup`` would otherwise send SIGINT to a process that ignores
    it (the kit, rightly, leaves an ignored SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (every thread's)."""
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        for kid in children(todo.pop()):
            if kid not in found:
                found.add(kid)
                todo.append(kid)
    return found


def alive(pid: int) -> bool:
    """Running (a zombie or a reaped pid is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def wait_gone(pids: set[int], timeout: float = 20.0) -> set[int]:
    """Wait up to ``timeout`` s for ``pids`` to end; returns those still alive."""
    deadline = time.monotonic() + timeout
    while (left := {p for p in pids if alive(p)}) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def kill_left(pids: set[int], timeout: float = 20.0) -> None:
    """SIGKILL whatever of ``pids`` is still alive after ``timeout`` s (only pids a test
    started)."""
    for pid in wait_gone(pids, timeout):
        os.kill(pid, signal.SIGKILL)
