"""The Ray executor (issue 24) on a real two-node Ray cluster on this machine, no mocks.

A helper process starts the cluster (``ray.cluster_utils.Cluster``): a head node with no CPUs
and a worker node with 2, whose processes see an empty data directory (``QUANTWM_DATA``), so
every task runs there on what the driver shipped. Both listen on 127.0.0.1 only, with token
authentication (a token made for this test). ``quantwm sweep --executor ray --address ...``
runs as a real subprocess (the driver), next to the same smoke grid run by the local executor
(``--workers 2``: one torch thread per experiment, as a 1-CPU task has), whose stderr is a
terminal so that its progress bar shows. Both drivers read a copy of ``data/`` without its cache:
each records the calibration itself (the Ray driver in a task), at one thread.

Skipped only when Ray is not installed (``pip install 'quantwm[ray]'``; ``make test`` has it).
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import pty
import secrets
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest
from procs import alive as _alive  # noqa: E402
from procs import as_from_a_terminal, kill_left  # noqa: E402
from procs import descendants as _descendants  # noqa: E402

pytest.importorskip("ray", reason="Ray is the optional extra: pip install 'quantwm[ray]'")

from quantwm.cli import main  # noqa: E402
from quantwm.utils import DATA_DIR, REPO_DIR  # noqa: E402

QUANTWM = str(Path(sys.executable).with_name("quantwm"))
HAVE_WALL = (DATA_DIR / "checkpoints" / "wall.pt").exists()
pytestmark = pytest.mark.skipif(not HAVE_WALL, reason="no shipped wall checkpoint")

SMOKE = ["sweep", "--profile", "smoke", "--env", "wall"]  # 4 experiments
TABLE1 = ["sweep", "--profile", "smoke", "--table", "1"]  # 2 of them
NOT_COMPARED = ("seconds", "provenance")  # time and where: the rest must be equal

CLUSTER = """\
import json, os, sys
import ray
from ray.cluster_utils import Cluster

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
worker = cluster.add_node(num_cpus=2, env_vars={"QUANTWM_DATA": sys.argv[1]})
cluster.wait_for_nodes()
ray.init(address=cluster.address)

@ray.remote(num_cpus=1)
def probe():
    import quantwm.utils
    return {"data_dir": str(quantwm.utils.DATA_DIR),
            "listing": sorted(os.listdir(quantwm.utils.DATA_DIR)),
            "node": ray.get_runtime_context().get_node_id()}

info = ray.get(probe.remote())
ray.shutdown()
print(json.dumps({"address": cluster.address, "probe": info, "worker_node": worker.node_id,
                  "raylet": worker.all_processes["raylet"][0].process.pid}), flush=True)
sys.stdin.read()  # until the test closes it
cluster.shutdown()
"""


# ------------------------------------------------------------------------------ helpers
def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def _records(root: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(root.glob("wall/*.json"))}


def _compared(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in NOT_COMPARED}


def _data_copy(dst: Path) -> Path:
    """What a Wall sweep reads from data/, without the cache."""
    import shutil

    (dst / "checkpoints").mkdir(parents=True)
    shutil.copy2(DATA_DIR / "checkpoints" / "wall.pt", dst / "checkpoints")
    shutil.copytree(DATA_DIR / "wall", dst / "wall")
    shutil.copy2(DATA_DIR / "paper_tables.csv", dst)
    return dst


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_error(text: str, *needles: str) -> str:
    errors = [ln for ln in text.splitlines() if "error:" in ln]
    assert len(errors) == 1, text
    assert "Traceback" not in text, text
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


class Setup:
    """The cluster, then the local executor's reference run (beside the first Ray sweep)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # the drivers read a copy of data/ without data/cache: the first Ray sweep records the
        # calibration in a task, as the local run records it in its workers, at one thread
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
                    "RAY_USAGE_STATS_ENABLED": "0", "QUANTWM_DATA": str(_data_copy(root / "data"))}
        self.env.pop("RAY_ADDRESS", None)
        self.started: list[subprocess.Popen] = []
        self.family: set[int] = set()  # every process this test started, for the clean-up
        self.cluster: subprocess.Popen | None = None

    def start(self) -> None:
        root = self.root
        # the cluster: its nodes see an empty data directory and listen on 127.0.0.1 only.
        # Ray gives a node 30 s to register: on a loaded machine a start can time out, and is
        # tried again
        (root / "empty").mkdir()
        for attempt in range(3):
            self.cluster = self.popen([sys.executable, "-c", CLUSTER, str(root / "empty")],
                                      env={**self.env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"},
                                      stdin=subprocess.PIPE,
                                      stderr=open(root / f"cluster-{attempt}.log", "w"))
            line = self._line(self.cluster, 240)
            if line.strip():
                break
            self._end(self.cluster)
        else:
            log = (root / f"cluster-{attempt}.log").read_text()[-3000:]
            raise AssertionError(f"the Ray cluster did not start: {log}")
        self.info = json.loads(line)
        self.address = self.info["address"]
        # the local executor: 2 workers with one torch thread each, stderr on a terminal
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a size
        self.local_store = root / "local"
        local_env = {**self.env, "QUANTWM_DATA": str(_data_copy(root / "local-data")),
                     "OMP_NUM_THREADS": "2"}  # 2 workers of one thread, on any machine
        self.local = self.popen([QUANTWM, *SMOKE, "--workers", "2", "--results",
                                 str(self.local_store)], env=local_env, stderr=slave)
        os.close(slave)
        self.bar = bytearray()
        self.reader = threading.Thread(target=self._read_terminal, args=(master,), daemon=True)
        self.reader.start()
        self._local_out: str | None = None

    def popen(self, argv: list[str], env: dict | None = None, **kwargs) -> subprocess.Popen:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        proc = subprocess.Popen(argv, cwd=REPO_DIR, env=env or self.env, text=True, **kwargs)
        self.started.append(proc)
        return proc

    def _read_terminal(self, fd: int) -> None:
        while True:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the other end closed
                break
            if not chunk:
                break
            self.bar += chunk
        os.close(fd)

    def _line(self, proc: subprocess.Popen, timeout: float) -> str:
        """``proc``'s first line of output ('' if it ends or times out first)."""
        box: list[str] = []
        reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout
        while reader.is_alive() and time.monotonic() < deadline:
            self.family |= _descendants(proc.pid)
            reader.join(0.5)
        return box[0] if box else ""

    def _end(self, proc: subprocess.Popen) -> None:
        """End ``proc`` and every process it started (by pid)."""
        self.family |= _descendants(proc.pid)
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        kill_left(self.family)

    def local_records(self) -> dict[str, dict]:
        if self._local_out is None:
            self._local_out, _ = self.local.communicate(timeout=300)
            self.reader.join(10)
            assert self.local.returncode == 0, self.bar.decode(errors="replace")[-3000:]
        return _records(self.local_store)

    def sweep(self, *argv: str, timeout: float = 240) -> subprocess.CompletedProcess:
        return subprocess.run([QUANTWM, *argv], cwd=REPO_DIR, env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def worker_tasks(self) -> list[int]:
        """The worker node's processes running one of our experiments now."""
        self.family |= (found := _descendants(self.info["raylet"]))
        return [p for p in found if _title(p).startswith("ray::quantwm wall-")]

    def close(self) -> None:
        for proc in self.started:
            self.family |= _descendants(proc.pid)
        if self.cluster is not None and self.cluster.poll() is None:
            self.cluster.stdin.close()  # the helper shuts its cluster down
            try:
                self.cluster.wait(60)
            except subprocess.TimeoutExpired:
                pass
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)
        kill_left(self.family)  # only processes this test started


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    s = Setup(tmp_path_factory.mktemp("ray"))
    try:
        s.start()
        yield s
    finally:
        s.close()


# --------------------------------------------------------------------------------- tests
def test_the_worker_node_sees_an_empty_data_directory(setup) -> None:
    probe = setup.info["probe"]
    assert probe["node"] == setup.info["worker_node"]  # the head has no CPU for tasks
    assert probe["listing"] == [] and probe["data_dir"] == str(setup.root / "empty")


def test_a_two_node_sweep_stores_what_the_local_executor_stores(setup) -> None:
    store = setup.root / "two-node"
    proc = setup.sweep(*SMOKE, "--executor", "ray", "--address", setup.address,
                       "--results", str(store))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ray_records, local = _records(store), setup.local_records()
    assert len(local) == 4 and sorted(ray_records) == sorted(local)
    for key, record in ray_records.items():
        assert _compared(record) == _compared(local[key]), key
        assert record["provenance"]["torch_threads"] == local[key]["provenance"][
            "torch_threads"] == 1
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("wall ")]
    assert len(lines) == 4 and lines[-1].endswith("[4/4, 00:00 left]"), proc.stdout
    assert "Ray (the Ray cluster at" in proc.stdout
    assert not list(store.glob("wall/.*"))  # no claim or temporary file left
    cached = list((Path(setup.env["QUANTWM_DATA"]) / "cache").glob("calibration-wall-*.pt"))
    assert len(cached) == 1  # recorded by a task, cached by the driver


def test_the_local_sweep_shows_a_bar_with_an_eta_on_a_terminal(setup) -> None:
    setup.local_records()
    bar = setup.bar.decode(errors="replace")
    assert "sweep: 100%" in bar and "4/4 [" in bar and "<00:00" in bar, bar[-2000:]
    lines = [ln for ln in setup._local_out.splitlines() if ln.startswith("wall ")]
    assert len(lines) == 4 and all(not ln.endswith("left]") for ln in lines)  # the bar has it


def test_a_task_process_killed_mid_sweep_is_retried(setup) -> None:
    store = setup.root / "killed-task"
    proc = setup.popen([QUANTWM, *TABLE1, "--executor", "ray", "--address", setup.address,
                        "--results", str(store)])
    killed = None
    deadline = time.monotonic() + 180
    while killed is None and proc.poll() is None and time.monotonic() < deadline:
        for pid in setup.worker_tasks():
            key = _title(pid).split()[-1]
            if not (store / "wall" / f"{key}.json").exists():
                os.kill(pid, signal.SIGKILL)
                killed = (pid, key)
                break
        time.sleep(0.05)
    out, err = proc.communicate(timeout=240)
    assert killed is not None, f"no running task was seen: {err[-2000:]}"
    assert proc.returncode == 0, err[-3000:]
    assert not _alive(killed[0])
    records, local = _records(store), setup.local_records()
    assert killed[1] in records and len(records) == 2
    for key, record in records.items():
        assert _compared(record) == _compared(local[key]), key
    assert len([ln for ln in out.splitlines() if ln.startswith("wall ")]) == 2
    assert not list(store.glob("wall/.*"))


def test_a_driver_killed_mid_sweep_resumes_without_recomputing(setup) -> None:
    store = setup.root / "killed-driver"
    argv = [*TABLE1, "--executor", "ray", "--address", setup.address, "--workers", "1",
            "--results", str(store)]
    proc = setup.popen([QUANTWM, *argv])
    deadline = time.monotonic() + 180
    while not _records(store) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    ended = proc.poll()
    proc.kill()  # SIGKILL: nothing runs after it
    _, err = proc.communicate(timeout=30)
    assert ended is None, f"the sweep ended before the driver was killed: {err[-3000:]}"
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in store.glob("wall/*.json")}
    assert len(before) == 1
    time.sleep(2.0)  # a task that was running cannot store anything: only the driver writes
    assert {p.name for p in store.glob("wall/*.json")} == set(before)

    rerun = setup.sweep(*argv)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    ran = [ln for ln in rerun.stdout.splitlines() if ln.startswith("wall ")]
    assert len(ran) == 1, rerun.stdout  # only what was missing ran
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in store.glob("wall/*.json")}
    assert {k: after[k] for k in before} == before  # nothing stored was recomputed
    local = setup.local_records()
    records = _records(store)
    assert len(records) == 2 and set(records) <= set(local)
    for key, record in records.items():
        assert _compared(record) == _compared(local[key]), key
    assert not list(store.glob("wall/.*"))


def test_sigterm_cancels_the_tasks_and_says_how_to_resume(setup) -> None:
    store = setup.root / "sigterm"
    proc = setup.popen([QUANTWM, *TABLE1, "--executor", "ray", "--address", setup.address,
                        "--workers", "1", "--results", str(store)])
    deadline = time.monotonic() + 180
    while not _records(store) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    signalled = time.time()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "interrupted by SIGTERM" in lines[0] and "rerun the same command" in lines[0]
    assert "1 of 2 experiment(s) not stored yet" in lines[0]
    stored = list(store.glob("wall/*.json"))
    assert len(stored) == 1
    assert [p for p in stored if p.stat().st_mtime > signalled + 1.0] == []
    deadline = time.monotonic() + 20  # the running task was cancelled: its process is gone
    while setup.worker_tasks() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert setup.worker_tasks() == []
    assert not list(store.glob("wall/.*"))


def _listening(pids: set[int]) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses ``pids`` listen on (TCP, from /proc)."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:  # ended meanwhile
            continue
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            cols = row.split()
            if cols[3] == "0A" and cols[9] in inodes:  # LISTEN
                raw = bytes.fromhex(cols[1].split(":")[0])
                raw = b"".join(raw[i: i + 4][::-1] for i in range(0, len(raw), 4))
                found.append(ipaddress.ip_address(raw))
    return found


def _loopback(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def test_a_local_instance_is_private_and_ctrl_c_stops_it(setup) -> None:
    """No --address: Ray starts on this machine with token authentication (its token made in
    a fresh home), listening on 127.0.0.1 only; Ctrl-C stops the sweep and the instance."""
    store, home = setup.root / "local-instance", setup.root / "home"
    home.mkdir()
    env = {k: v for k, v in setup.env.items() if not k.startswith("RAY_AUTH")}
    proc = setup.popen([QUANTWM, *TABLE1, "--executor", "ray", "--workers", "1", "--results",
                        str(store)], env={**env, "HOME": str(home)}, start_new_session=True,
                       preexec_fn=as_from_a_terminal)
    deadline = time.monotonic() + 240
    while not _records(store) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    family = _descendants(proc.pid)
    setup.family |= family
    listening = _listening(family | {proc.pid})
    gcs = [p for p in family if "gcs_server" in _title(p)]
    gcs_env = Path(f"/proc/{gcs[0]}/environ").read_bytes().split(b"\0") if gcs else []
    os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C does
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT, err[:3000]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "interrupted by SIGINT" in lines[0], err
    assert listening and all(_loopback(ip) for ip in listening), listening
    assert b"RAY_AUTH_MODE=token" in gcs_env
    assert (home / ".ray" / "auth_token").stat().st_size > 0  # Ray's own token
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in family) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in family if _alive(p)], "Ray processes survived the sweep"
    assert len(list(store.glob("wall/*.json"))) == 1 and not list(store.glob("wall/.*"))


# ----------------------------------------------------------------------------- bad input
def _no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    import quantwm.study.ray_executor as rx
    import quantwm.study.runner as runner

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the work started although an input was bad")

    monkeypatch.setattr(rx, "run_ray_sweep", never)
    monkeypatch.setattr(runner, "run_experiment", never)


@pytest.mark.parametrize("extra, named", [
    (["--executor", "dask"], ["--executor", "'dask'"]),
    (["--executor", "ray", "--cpus", "0"], ["--cpus", "0"]),
    (["--executor", "ray", "--cpus", "many"], ["--cpus", "'many'"]),
    (["--executor", "ray", "--gpus", "-1"], ["--gpus", "-1"]),
    (["--executor", "ray", "--max-retries", "-2"], ["--max-retries", "-2"]),
    (["--executor", "ray", "--device", "cuda"], ["--device cuda", "--gpus"]),
    (["--gpus", "1"], ["--gpus", "--executor ray"]),
    (["--executor", "ray", "--address", "127.0.0.1:{port}"], ["--address 127.0.0.1:{port}",
                                                              "can be reached there"]),
    (["--executor", "ray", "--address", "nowhere"], ["--address", "'nowhere'", "HOST:PORT"]),
])
def test_bad_input_is_one_line_before_any_work(tmp_path, capsys, monkeypatch, extra,
                                               named) -> None:
    _no_work(monkeypatch)
    port = str(_free_port())  # nothing listens there
    extra = [a.replace("{port}", port) for a in extra]
    status = main([*SMOKE, "--results", str(tmp_path), *extra])
    err = capsys.readouterr().err
    assert status == 2, err
    _one_error(err, *(n.replace("{port}", port) for n in named))
    assert not list(tmp_path.glob("wall/*"))


def test_gpus_on_a_machine_without_one_is_refused_before_ray_starts(tmp_path, capsys,
                                                                    monkeypatch) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    _no_work(monkeypatch)
    status = main([*SMOKE, "--results", str(tmp_path), "--executor", "ray", "--gpus", "1"])
    assert status == 2
    _one_error(capsys.readouterr().err, "--gpus 1", "no CUDA GPU")


def test_gpus_on_a_cluster_without_one_is_refused_before_any_task(setup) -> None:
    store = setup.root / "gpus"
    t0 = time.monotonic()
    proc = setup.sweep(*SMOKE, "--executor", "ray", "--address", setup.address, "--gpus", "1",
                       "--results", str(store), timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    _one_error(proc.stderr, "--gpus 1", f"the Ray cluster at {setup.address} has 0 GPU(s)")
    assert not list(store.glob("wall/*.json")) and time.monotonic() - t0 < 60
    assert "wall " not in proc.stdout


def test_the_store_is_not_touched_by_a_dry_run(tmp_path, capsys) -> None:
    assert main([*SMOKE, "--results", str(tmp_path), "--executor", "ray", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 to run with Ray (a local Ray instance, 1 CPU per task)" in out
    assert not list(tmp_path.glob("wall/*"))
