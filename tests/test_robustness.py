"""Bad inputs and interruptions (issue 27): every bad input a one-line error naming it before
any work, every interruption clean, nothing read that was not written.

Grouped by area: the result store (temporary and corrupt records), claims (two sweeps on one
store), interrupting sweeps and notebook batches (real subprocesses, signals to the parent),
notebook failures, checkpoints and caches, training states, quantization inputs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from procs import alive as _alive
from procs import as_from_a_terminal
from procs import descendants as _descendants
from procs import wait_gone as _wait_gone

from quantwm.study import Experiment, ResultStore
from quantwm.utils import DATA_DIR, REPO_DIR

QUANTWM = str(Path(sys.executable).with_name("quantwm"))
HAVE_WALL = (DATA_DIR / "checkpoints" / "wall.pt").exists()
needs_wall = pytest.mark.skipif(not HAVE_WALL, reason="no shipped wall checkpoint")


def one_line_error(text: str, *needles: str) -> str:
    """The single non-empty line of ``text``, checked to name each of ``needles``."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    from quantwm.cli import main

    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def fake_record(exp: Experiment, rate: float = 0.5) -> dict:
    return {"experiment": exp.to_dict(), "key": exp.key(), "success": {"0": rate},
            "method_revision": exp.method_revision}


def experiments(n: int = 3) -> list[Experiment]:
    return [Experiment("wall", "rtn", (8, 8), (8, 8), profile="smoke", episodes=2, seed=i,
                       calib_episodes=2) for i in range(n)]


# ------------------------------------------------------------------ the store (items 2, 3)
def test_temp_files_beside_results_are_never_read(tmp_path, capsys) -> None:
    store = ResultStore(tmp_path, check_checkpoints=False)
    [a, b] = experiments(2)
    path = store.write(a, {"success": {"0": 0.5}})
    # what a write killed mid-way leaves: an empty, a partial and a complete temporary copy
    for i, text in enumerate(["", path.read_text()[:40], path.read_text()]):
        (path.parent / f".{a.key()}.{i:08x}.tmp.json").write_text(text)
    (path.parent / f".{b.key()}.1234abcd.tmp.json").write_text(path.read_text())
    assert [r["key"] for r in store.records()] == [a.key()]
    assert len(store.frame()) == 1
    assert store.has(a) and not store.has(b)
    assert store.missing([a, b]) == [b]
    assert capsys.readouterr().err == ""


def test_stale_temp_files_and_dead_claims_are_removed(tmp_path) -> None:
    store = ResultStore(tmp_path, check_checkpoints=False)
    [a] = experiments(1)
    path = store.write(a, {"success": {"0": 0.5}})
    old, young = (path.parent / f".{a.key()}.{x}.tmp.json" for x in ("0000aaaa", "0000bbbb"))
    old.write_text("{")
    young.write_text("{")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    store.claim(a).release()
    store.claim_path(a).write_text("{}")  # a claim file its (dead) process left
    removed = store.remove_stale_files()
    assert set(removed) == {old, store.claim_path(a)}
    assert young.exists() and path.exists()


@pytest.mark.parametrize("content, problem", [
    ('{"experiment": {"env": "wall", "method": "rt', "not JSON"),
    ("{}", "no 'experiment' field"),
    ("[1, 2]", "not an object"),
    ('{"experiment": {"env": "maze"}, "key": "k", "success": {}}', "experiment is invalid"),
])
def test_a_corrupt_record_is_named_skipped_and_set_aside(tmp_path, capsys, content, problem):
    store = ResultStore(tmp_path, check_checkpoints=False)
    good, bad = experiments(2)
    store.write(good, {"success": {"0": 0.5}})
    path = store.path(bad)
    path.write_text(content)
    assert [r["key"] for r in store.records()] == [good.key()]  # no crash: skipped
    assert len(store.frame()) == 1
    one_line_error(capsys.readouterr().err, str(path), problem, "skipped")
    assert not store.has(bad)
    with pytest.raises(ValueError, match=problem):
        store.read(bad)
    assert store.missing([good, bad], set_aside=True) == [bad]
    one_line_error(capsys.readouterr().err, str(path), "set aside", "run again")
    assert not path.exists() and path.with_name(path.name + ".corrupt").read_text() == content


def test_sweep_reruns_a_corrupt_record_and_its_dry_run_lists_it(tmp_path, capsys, monkeypatch):
    from quantwm.study import runner
    from quantwm.study.profiles import study_profile

    grid = study_profile("smoke").study_experiments([1], ("wall",), "paper", width=False)
    store = ResultStore(tmp_path)
    truncated, empty = grid[0], grid[1]
    store.path(truncated).parent.mkdir(parents=True)
    store.path(truncated).write_text('{"experiment": {"env": "wall", "meth')
    store.path(empty).write_text("{}")
    status, out, err = cli(capsys, "sweep", "--profile", "smoke", "--table", "1", "--dry-run",
                           "--results", str(tmp_path))
    assert status == 0 and truncated.key() in out and empty.key() in out
    assert "Traceback" not in err
    assert str(store.path(truncated)) in err and str(store.path(empty)) in err

    ran = []

    def run_experiment(exp, store, *args, **kwargs):
        ran.append(exp.key())
        record = {"success": {"0": 1.0}, "label": "x", "seconds": {"total": 0.0}}
        store.write(exp, record)
        return record

    monkeypatch.setattr(runner, "run_experiment", run_experiment)
    monkeypatch.setattr(runner, "ensure_latent_error", lambda *a, **k: [])
    status, out, err = cli(capsys, "sweep", "--profile", "smoke", "--table", "1",
                           "--results", str(tmp_path))
    assert status == 0 and sorted(ran) == sorted([truncated.key(), empty.key()])
    assert err.count("set aside") == 2
    assert {r["key"] for r in store.records()} == {truncated.key(), empty.key()}
    assert store.path(empty).with_name(store.path(empty).name + ".corrupt").exists()


# ------------------------------------------------------------------------ claims (item 4)
def test_a_held_claim_is_exclusive_and_released(tmp_path) -> None:
    store = ResultStore(tmp_path, check_checkpoints=False)
    [a] = experiments(1)
    claim = store.claim(a)
    assert claim is not None and store.claim(a) is None
    info = json.loads(store.claim_path(a).read_text())
    assert info["pid"] == os.getpid() and info["host"] and info["time"] > 0
    assert f"pid {os.getpid()}" in store.claim_holder(a)
    claim.release()
    assert not store.claim_path(a).exists()
    with store.claim(a) as again:
        assert again is not None


def test_the_claim_of_a_killed_process_is_taken_over(tmp_path) -> None:
    store = ResultStore(tmp_path, check_checkpoints=False)
    [a] = experiments(1)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from quantwm.study import Experiment, ResultStore
        claim = ResultStore({str(tmp_path)!r}).claim(Experiment.from_dict({a.to_dict()!r}))
        print("held" if claim else "refused", flush=True)
        time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert store.claim(a) is None
    finally:
        holder.kill()
        holder.wait()
    assert store.claim_path(a).exists()  # left behind by SIGKILL, but no longer locked
    claim = store.claim(a)
    assert claim is not None
    claim.release()


SHARING_SWEEP = """
import os, sys, time
from pathlib import Path
from quantwm.study import Experiment, ResultStore, runner

root, log, me, other = sys.argv[1:5]
def run_experiment(exp, store, *args, **kwargs):
    with open(log, "a") as f:
        f.write(f"{{os.getpid()}} {{exp.key()}}\\n")
    time.sleep(0.4)
    record = {{"success": {{"0": 1.0}}}}
    store.write(exp, record)
    return record
runner.run_experiment = run_experiment
exps = [Experiment.from_dict(d) for d in {dicts!r}]
Path(me).touch()
while not Path(other).exists():  # start together
    time.sleep(0.01)
ran = runner.run_sweep(exps, ResultStore(root, check_checkpoints=False))
print(len(ran))
"""


def test_two_sweeps_on_one_store_run_each_experiment_once(tmp_path) -> None:
    exps = experiments(8)
    script = SHARING_SWEEP.format(dicts=[e.to_dict() for e in exps])
    log = tmp_path / "log.txt"
    ready = [tmp_path / "a.ready", tmp_path / "b.ready"]
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "store"), str(log),
                               str(ready[i]), str(ready[1 - i])],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in (0, 1)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    runs = [line.split() for line in log.read_text().splitlines()]
    keys = [k for _, k in runs]
    assert sorted(keys) == sorted(e.key() for e in exps)  # each exactly once
    assert len({pid for pid, _ in runs}) == 2  # and the work was shared
    assert sum(int(out) for out, _ in outs) == len(exps)
    store = ResultStore(tmp_path / "store", check_checkpoints=False)
    assert store.missing(exps) == [] and not list((tmp_path / "store").glob("*/.*"))


# ----------------------------------------- interrupting sweeps and notebook batches (item 1)
def _result_files(root: Path) -> list[Path]:
    return sorted(root.glob("wall/*.json"))


SWEEP = ["sweep", "--profile", "smoke", "--env", "wall", "--workers", "2"]
SIGNALS = ("SIGINT", "SIGTERM", "SIGKILL")

# a notebook batch (`quantwm notebooks` on a folder of one notebook) whose kernel runs a
# `workers=2` sweep of the same 4 experiments
KERNEL_SWEEP = """\
from quantwm.study import ResultStore, run_sweep
from quantwm.study.profiles import study_profile
exps = study_profile("smoke").study_experiments([1, 2], ("wall",), "paper", figures=True,
                                                width=False)
run_sweep(exps, ResultStore({store!r}), workers=2)
"""
BATCH = """\
import functools, sys
import quantwm.study.notebooks as nb
nb.run_notebooks = functools.partial(nb.run_notebooks, notebook_dir=sys.argv[1])
from quantwm.cli import main
sys.exit(main(["notebooks", "--profile", "smoke", "--output", sys.argv[2]]))
"""


def _write_notebook(path: Path, *cells: str) -> None:
    """A report notebook: a ``parameters`` cell, then ``cells``."""
    import nbformat

    params = nbformat.v4.new_code_cell('profile = "quick"', metadata={"tags": ["parameters"]})
    nb = nbformat.v4.new_notebook(
        cells=[params, *(nbformat.v4.new_code_cell(c) for c in cells)],
        metadata={"kernelspec": {"name": "python3", "language": "python",
                                 "display_name": "Python 3"}})
    nbformat.write(nb, str(path))


def _start(kind: str, root: Path) -> subprocess.Popen:
    store = root / "store"
    if kind == "sweep":
        argv = [QUANTWM, *SWEEP, "--results", str(store)]
    else:
        (root / "nb").mkdir(parents=True)
        _write_notebook(root / "nb" / "00_sweep.ipynb", KERNEL_SWEEP.format(store=str(store)))
        argv = [sys.executable, "-c", BATCH, str(root / "nb"), str(root / "out")]
    return subprocess.Popen(argv, cwd=REPO_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            preexec_fn=as_from_a_terminal)


# Ctrl-C of a notebook batch takes the SIGTERM path (both raise Interrupted in the batch)
FAULTS = [*(("sweep", name) for name in SIGNALS), ("notebooks", "SIGTERM"),
          ("notebooks", "SIGKILL")]


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """Each of `quantwm sweep --workers 2` and a notebook batch whose kernel sweeps with 2
    workers, once per signal, all side by side; each parent gets its signal once its first
    result is stored (SIGINT to the process group, as Ctrl-C does)."""
    if not HAVE_WALL:
        pytest.skip("no shipped wall checkpoint")
    base = tmp_path_factory.mktemp("interrupted")
    runs = {}
    for kind, name in FAULTS:
        root = base / f"{kind}-{name}"
        runs[kind, name] = {"proc": _start(kind, root), "store": root / "store",
                            "root": root, "family": set()}
    try:
        deadline = time.monotonic() + 300
        pending = set(FAULTS)
        while pending and time.monotonic() < deadline:
            for fault in list(pending):
                run = runs[fault]
                proc = run["proc"]
                run["family"] |= _descendants(proc.pid)
                if proc.poll() is not None:
                    pending.discard(fault)  # ended before its signal: the test says so
                elif _result_files(run["store"]):
                    run["family"] |= _descendants(proc.pid)
                    run["signalled_at"] = time.time()
                    sig = getattr(signal, fault[1])
                    if sig == signal.SIGINT:
                        os.killpg(proc.pid, sig)
                    else:
                        os.kill(proc.pid, sig)
                    pending.discard(fault)
            time.sleep(0.1)
        for run in runs.values():
            run["out"], run["err"] = run["proc"].communicate(timeout=120)
            run["survivors"] = _wait_gone(run["family"])
        yield runs
    finally:
        for run in runs.values():
            if run["proc"].poll() is None:
                run["proc"].kill()
            for pid in run["family"]:  # only processes this test started
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("kind, name", FAULTS)
def test_an_interrupted_sweep_stops_and_leaves_no_process(interrupted, kind, name):
    run = interrupted[kind, name]
    assert "signalled_at" in run, f"it ended before its {name}: {run['err'][-2000:]}"
    assert len(run["family"]) >= 3, "no worker processes were seen"
    assert run["survivors"] == set(), "processes survived their parent"
    stored = _result_files(run["store"])
    assert 1 <= len(stored) < 4  # stopped: the grid was not finished
    # nothing written once the parent was gone (orphans exit without writing)
    assert [p for p in stored if p.stat().st_mtime > run["signalled_at"] + 1.0] == []
    for path in stored:
        assert json.loads(path.read_text())["key"] == path.stem  # whole records only
    status = run["proc"].returncode
    if name == "SIGKILL":
        assert status == -signal.SIGKILL
        return
    assert status == 128 + getattr(signal, name)
    if kind == "sweep":
        line = one_line_error(run["err"], f"interrupted by {name}", "rerun the same command")
        assert "of 4 experiment(s) not stored yet" in line
    else:  # the kernel shares the batch's stderr: what it says at exit is not ours
        ours = [ln for ln in run["err"].splitlines() if ln.startswith("quantwm")]
        line = one_line_error("\n".join(ours), f"interrupted by {name}", "00_sweep", "rerun")
        assert str(run["root"] / "out" / "00_sweep.failed.ipynb") in line
        assert "Traceback" not in run["err"]


def test_a_rerun_completes_the_store_exactly_once(interrupted) -> None:
    """After a SIGKILL, the store a sweep and its orphans left (a complete temporary copy
    added, as a killed write can leave) completes on a rerun, each experiment once."""
    run = interrupted["sweep", "SIGKILL"]
    before = _result_files(run["store"])
    tmp = before[0].with_name(f".{before[0].stem}.deadbeef.tmp.json")
    tmp.write_text(before[0].read_text())
    proc = subprocess.run([QUANTWM, *SWEEP, "--results", str(run["store"])], cwd=REPO_DIR,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    done = [ln for ln in proc.stdout.splitlines() if ln.startswith("wall ")]
    assert len(done) == 4 - len(before), proc.stdout  # only what was missing ran
    store = ResultStore(run["store"])
    keys = [r["key"] for r in store.records()]
    assert len(keys) == len(set(keys)) == 4
    assert len(store.frame()["key"].unique()) == 4
    assert not list(run["store"].glob("wall/.*.claim"))


# ----------------------------------------------------------------- notebook failures (6)
def test_a_failing_notebook_is_named_kept_and_the_batch_goes_on(tmp_path, capsys, monkeypatch):
    import functools

    import quantwm.study.notebooks as nb

    (tmp_path / "nb").mkdir()
    _write_notebook(tmp_path / "nb" / "00_fails.ipynb", "x = 1", "1 / 0")
    _write_notebook(tmp_path / "nb" / "01_works.ipynb", "y = 2")
    out = tmp_path / "out"
    out.mkdir()
    for stale in ("00_fails.html", "00_fails.ipynb"):  # reports of an earlier, good run
        (out / stale).write_text("old")
    monkeypatch.setattr(nb, "run_notebooks",
                        functools.partial(nb.run_notebooks, notebook_dir=tmp_path / "nb"))
    status, stdout, err = cli(capsys, "notebooks", "--profile", "smoke", "--output", str(out))
    assert status == 1
    lines = [ln for ln in err.splitlines() if "00_fails" in ln]
    assert any("ZeroDivisionError" in ln and "00_fails.failed.ipynb" in ln and
               ln.startswith("error: notebook 00_fails failed") for ln in lines), err
    assert "1 of 2 notebook(s) failed: 00_fails" in err and "Traceback" not in err
    partial = json.loads((out / "00_fails.failed.ipynb").read_text())
    assert any(o.get("ename") == "ZeroDivisionError" for c in partial["cells"]
               for o in c.get("outputs", []))
    assert not (out / "00_fails.html").exists() and not (out / "00_fails.ipynb").exists()
    assert (out / "01_works.html").exists() and "01_works" in stdout


def test_notebooks_profile_given_as_a_parameter_is_validated(tmp_path, capsys) -> None:
    status, out, err = cli(capsys, "notebooks", "-p", "profile", "bogus", "--output",
                           str(tmp_path))
    assert status == 2
    one_line_error(err, "unknown profile 'bogus'")
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------- checkpoints and caches (8)
def _bad_checkpoints(tmp_path: Path) -> dict[str, Path]:
    import collections

    good = tmp_path / "good.pt"
    torch.save({"a": torch.zeros(3)}, good)
    data = good.read_bytes()
    files = {"truncated": data[: len(data) // 2], "random": os.urandom(4096), "empty": b""}
    paths = {}
    for name, content in files.items():
        paths[name] = tmp_path / f"{name}.pt"
        paths[name].write_bytes(content)
    paths["config-less"] = tmp_path / "configless.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, paths["config-less"])
    paths["a pickle of code"] = tmp_path / "code.pt"
    torch.save({"x": collections.Counter(a=1), "f": os.system}, paths["a pickle of code"])
    paths["directory"] = tmp_path / "dir.pt"
    paths["directory"].mkdir()
    return paths


def test_unreadable_checkpoints_are_one_line_errors_naming_the_file(tmp_path, capsys) -> None:
    for what, path in _bad_checkpoints(tmp_path).items():
        status, out, err = cli(capsys, "eval", "--env", "wall", "--checkpoint", str(path),
                               "--episodes", "1")
        assert status == 2, what
        line = one_line_error(err, str(path))
        assert "weights_only=False" not in line and "weights_only` set to `False" not in line
        assert out == "", what


def test_random_bytes_of_any_kind_are_a_one_line_error(tmp_path) -> None:
    """Random bytes make torch raise anything (UnpicklingError, IndexError, KeyError,
    UnicodeDecodeError, ...): always the same clear ValueError."""
    from quantwm.model.checkpoint import load_torch_file

    path = tmp_path / "random.pt"
    for seed in range(40):
        path.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8,
                                       generator=torch.Generator().manual_seed(seed)).numpy()
                         .tobytes())
        with pytest.raises(ValueError, match=f"cannot read file {path}: not a torch file"):
            load_torch_file(path)


@needs_wall
def test_a_checkpoint_of_the_wrong_kind_is_refused_before_any_data(tmp_path) -> None:
    from quantwm.model import CHECKPOINT_DIR, load

    with pytest.raises(ValueError, match="is a wall world model, not a pusht one"):
        load(CHECKPOINT_DIR / "wall.pt", env="pusht")
    encoder = CHECKPOINT_DIR / "encoder.pt"
    if encoder.exists():
        with pytest.raises(ValueError, match="holds only the encoder and decoder"):
            load(encoder, env="wall")
    assert load(CHECKPOINT_DIR / "wall.pt", env="wall").config.env == "wall"


@needs_wall
def test_a_corrupt_calibration_cache_is_recorded_again(tmp_path, capsys, one_thread) -> None:
    from quantwm.model import checkpoint_digest, load
    from quantwm.plan import load_calibration
    from quantwm.study.runner import calibration_data

    path = tmp_path / f"calibration-wall-{checkpoint_digest('wall')}-smoke-n2.pt"
    path.write_bytes(b"PK\x03\x04 not a whole file")
    model = load("wall")
    calib = calibration_data("wall", "smoke", cache_dir=tmp_path, episodes=2, model=model)
    one_line_error(capsys.readouterr().err, str(path), "recording it again")
    assert calib["encoder"] and calib["predictor"]
    assert [t.shape for t in load_calibration(path)["encoder"]] == \
        [t.shape for t in calib["encoder"]]
    with pytest.raises(ValueError, match="calibration file"):
        path.write_bytes(b"")
        load_calibration(path)


def test_a_corrupt_trajectory_cache_is_generated_again(tmp_path, capsys, monkeypatch) -> None:
    import quantwm.data.trajectories as trajectories

    base = trajectories.make_trajectories("pusht", 4, 5, seed=0)
    monkeypatch.setattr(trajectories, "DATA_DIR", tmp_path)
    (tmp_path / "pusht").mkdir()
    (tmp_path / "pusht" / "extensions.json").write_text(json.dumps([{"seed": 9, "n_traj": 2}]))
    made = []

    def extend(traj, n_traj, seed, **options):
        made.append(seed)
        return trajectories.make_trajectories("pusht", 4 + n_traj, 5, seed=1)

    monkeypatch.setattr(trajectories, "extend_trajectories", extend)
    first = trajectories._with_shipped_extensions("pusht", base)
    [cache] = (tmp_path / "cache").glob("pusht-trajectories-*.npz")
    capsys.readouterr()
    cache.write_bytes(cache.read_bytes()[:100])  # truncated
    again = trajectories._with_shipped_extensions("pusht", base)
    err = capsys.readouterr().err
    warning = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    one_line_error("\n".join(warning), str(cache), "generating it again")
    assert made == [9, 9] and again.n_traj == first.n_traj == 6
    assert trajectories.Trajectories.load(cache).n_traj == 6
    with pytest.raises(ValueError, match=str(cache)):
        cache.write_bytes(os.urandom(300))
        trajectories.Trajectories.load(cache)


# -------------------------------------------------------------- training states (item 5)
def test_each_output_has_its_own_resume_state(tmp_path) -> None:
    from quantwm.model import CHECKPOINT_DIR
    from quantwm.model.train import STATE_DIR, resume_state_path

    a, b = resume_state_path(tmp_path / "A.pt"), resume_state_path(tmp_path / "B.pt")
    assert a != b and a.parent == b.parent == STATE_DIR
    assert resume_state_path(tmp_path / "sub" / "A.pt") != a  # same name, other folder
    assert resume_state_path(tmp_path / "x" / ".." / "A.pt") == a
    # the shipped outputs keep the state names of earlier versions
    assert resume_state_path(CHECKPOINT_DIR / "pusht.pt") == STATE_DIR / "pusht.state.pt"
    assert resume_state_path(CHECKPOINT_DIR / "encoder.pt") == STATE_DIR / "encoder.state.pt"
    assert resume_state_path(tmp_path / "A.pt", tmp_path).parent == tmp_path


def test_resuming_run_b_continues_b_not_a(tmp_path, capsys, one_thread) -> None:
    from test_model import DotWindows, tiny_model

    from quantwm.model.train import dataset_stats, resume_state_path, train_dynamics

    data = DotWindows(32, num_frames=2, proprio_dim=2)

    def fresh():
        model = tiny_model("wall", seed=1)
        model.set_normalization(**dataset_stats(data, n=32))
        return model

    kw = dict(batch_size=8, seed=0, quiet=True, ckpt_minutes=0.0)
    state_a = resume_state_path(tmp_path / "A.pt", tmp_path)
    state_b = resume_state_path(tmp_path / "B.pt", tmp_path)
    train_dynamics(fresh(), data, max_steps=5, state_path=state_a, **kw)
    train_dynamics(fresh(), data, max_steps=2, state_path=state_b, **kw)  # B, "interrupted"
    b = train_dynamics(fresh(), data, max_steps=4, state_path=state_b, resume=True, **kw)
    assert b["steps"] == 4 and len(b["history"]) <= 4  # continued B's 2 steps, not A's 5
    assert torch.load(state_a, weights_only=True)["step"] == 5  # A's state untouched
    state_a.write_bytes(state_a.read_bytes()[:50])
    with pytest.raises(ValueError, match="cannot read training state .*A-"):
        train_dynamics(fresh(), data, max_steps=6, state_path=state_a, resume=True, **kw)
    capsys.readouterr()
    train_dynamics(fresh(), data, max_steps=1, state_path=tmp_path / "none.pt", resume=True,
                   **kw)
    assert "no training state at" in capsys.readouterr().err


# ------------------------------------------------------------ quantization inputs (11)
@pytest.mark.parametrize("field, value", [("alpha", "0.5"), ("seed", "abc"),
                                          ("omni_let", "yes"), ("lr_lwc", "1e-3"),
                                          ("awq_max_shrink", float("nan"))])
def test_quant_config_names_a_bad_option(field, value) -> None:
    from quantwm.quant import QuantConfig

    with pytest.raises(ValueError, match=f"^{field} must be") as err:
        QuantConfig("omniquant", (4, 8), (4, 8), **{field: value})
    assert "\n" not in str(err.value) and repr(value) in str(err.value)


@pytest.fixture(scope="module")
def tiny_wm():
    from quantwm.model.world_model import WorldModel, WorldModelConfig

    cfg = WorldModelConfig.for_env("pusht", img_size=16, patch_size=8, enc_dim=32, enc_depth=1,
                                   enc_heads=2, pred_depth=1, pred_heads=2, pred_head_dim=16,
                                   num_hist=3)
    torch.manual_seed(0)
    model = WorldModel(cfg).eval()
    n, d = cfg.num_patches, cfg.pred_dim
    calib = {"encoder": [torch.rand(4, 3, 16, 16) for _ in range(2)],
             "predictor": [torch.randn(4, t * n, d) for t in (1, 3)]}
    return model, calib


def _spoil(calib: dict, part: str, index: int, how: str) -> dict:
    out = {k: [t.clone() for t in v] for k, v in calib.items()}
    t = out[part][index]
    if how == "nan":
        t.view(-1)[5] = float("nan")
    elif how == "inf":
        t.view(-1)[0] = float("inf")
    elif how == "no rows":
        out[part][index] = t[:0]
    elif how == "wrong shape":
        out[part][index] = t[..., :-3]
    return out


@pytest.mark.parametrize("part, index, how, message", [
    ("predictor", 1, "nan", "non-finite"),
    ("encoder", 0, "inf", "non-finite"),
    ("encoder", 1, "no rows", "has no rows"),
    ("predictor", 0, "wrong shape", "does not fit the predictor"),
    ("encoder", 0, "wrong shape", "does not fit the encoder"),
])
def test_bad_calibration_fails_before_any_work(tiny_wm, monkeypatch, part, index, how, message):
    from quantwm.quant import QuantConfig, apply, quantize

    model, calib = tiny_wm

    def never(ctx):
        raise AssertionError("the method ran on bad calibration")

    monkeypatch.setitem(apply.METHOD_RUNNERS, "smoothquant", never)
    with pytest.raises(ValueError, match=message) as err:
        quantize(model, QuantConfig("smoothquant", (8, 8), (8, 8)), _spoil(calib, part, index,
                                                                          how))
    assert f"calibration[{part!r}][{index}]" in str(err.value) and "\n" not in str(err.value)
    monkeypatch.undo()
    q = quantize(model, QuantConfig("smoothquant", (8, 8), (8, 8)), calib)  # the good one works
    assert all(torch.isfinite(p).all() for p in q.parameters())


# ---------------------------------------- wired in the CLIs (quantwm/model/cli.py, plan/cli.py)
def _cli_passes(module: str, function: str, text: str) -> bool:
    import importlib
    import inspect

    return text in inspect.getsource(getattr(importlib.import_module(module), function))


@pytest.mark.skipif(not _cli_passes("quantwm.model.cli", "train_world_model",
                                    "resume_state_path"),
                    reason="quantwm/model/cli.py does not key training states on --out yet")
def test_train_resume_out_b_continues_run_b(tmp_path, monkeypatch, one_thread) -> None:
    from test_model import tiny_model

    import quantwm.model.cli as model_cli
    import quantwm.model.sources as sources
    from quantwm.data import make_trajectories
    from quantwm.model import save
    from quantwm.model.train import resume_state_path

    trajs = make_trajectories("wall", 8, 20, seed=2)
    monkeypatch.setattr(sources, "load_trajectories", lambda env, path=None: trajs)
    monkeypatch.setattr(model_cli, "STATE_DIR", tmp_path / "states")
    fields = dict(img_size=32, patch_size=8, enc_dim=32, enc_depth=1, enc_heads=2, dec_width=16)
    encoder = save(tiny_model("wall", seed=3, **fields), tmp_path / "encoder.pt")
    small = dict(fields, pred_depth=1, pred_heads=2, pred_head_dim=16)

    def train(out: str, steps: int, resume: bool = False) -> None:
        model_cli.train_world_model("wall", tmp_path / out, encoder_path=encoder, minutes=None,
                              steps=steps, quiet=True, model_config=small, batch_size=4,
                              resume=resume)

    def step_of(out: str) -> int:
        path = resume_state_path(tmp_path / out, tmp_path / "states")
        return torch.load(path, weights_only=True)["step"]

    train("A.pt", 3)
    train("B.pt", 1)  # a second run: A's state stays
    assert (step_of("A.pt"), step_of("B.pt")) == (3, 1)
    train("B.pt", 2, resume=True)  # continues B (1 -> 2), not A (already at 3)
    assert (step_of("A.pt"), step_of("B.pt")) == (3, 2)


@needs_wall
@pytest.mark.skipif(not _cli_passes("quantwm.plan.cli", "run", "env=args.env"),
                    reason="quantwm/plan/cli.py does not pass env= to load yet")
def test_eval_refuses_a_checkpoint_of_the_wrong_kind_before_loading_data(capsys) -> None:
    from quantwm.model import CHECKPOINT_DIR

    status, out, err = cli(capsys, "eval", "--env", "pusht", "--checkpoint",
                           str(CHECKPOINT_DIR / "wall.pt"), "--episodes", "1")
    assert status == 2 and out == ""
    one_line_error(err, "wall.pt", "is a wall world model, not a pusht one")
    if (CHECKPOINT_DIR / "encoder.pt").exists():
        status, out, err = cli(capsys, "eval", "--env", "wall", "--checkpoint",
                               str(CHECKPOINT_DIR / "encoder.pt"), "--episodes", "1")
        assert status == 2 and out == ""
        one_line_error(err, "encoder.pt", "holds only the encoder and decoder")
