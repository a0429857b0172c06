"""Sweeps: run folders per trial, skip finished ones, retry failures from their checkpoint, Ray backend."""

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from dynalab import config as config_lib
from dynalab.agents.sac import SACConfig
from dynalab.config import ConfigError, TrainConfig
from dynalab.metrics import read
from dynalab.sweep import Trial, run_sweep
from dynalab.train import Trainer, train

TINY = TrainConfig(
    algo="sac", env="gym:InvertedPendulum-v5", seeds=1, seed=0, steps=120, replay_ratio=1, warmup_steps=60,
    batch_size=16, eval_every=60, eval_episodes=1, log_every=30, checkpoint_every=40,
    sac=SACConfig(hidden=(16, 16)),
)
TRIALS = [Trial("sac__seed0", TINY), Trial("sac__seed1", dataclasses.replace(TINY, seed=1, label="other"))]


def folder_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "sweep.json"}


def sweep_json(out: Path) -> dict:
    return json.loads((out / "sweep.json").read_text())["trials"]


def assert_complete_run(folder: Path, cfg: TrainConfig) -> None:
    assert config_lib.load(folder / "config.json").seed == cfg.seed
    rows = read(folder / "metrics.csv")
    keys = [(s, k, m) for s, k, m, _ in rows]
    assert len(keys) == len(set(keys))  # no row twice after a resume
    assert max(s for s, *_ in rows) == cfg.steps
    assert sorted(s for s, _, m, _ in rows if m == "eval/return") == list(range(60, cfg.steps + 1, 60))
    assert sorted({s for s, _, m, _ in rows if m == "time/env_steps_per_sec"}) == list(range(30, cfg.steps + 1, 30))


def learning_rows(folder: Path) -> list[tuple]:
    """metrics.csv rows without the wall-clock ones (time/*), which differ between any two runs."""
    return [r for r in read(folder / "metrics.csv") if not r[2].startswith("time/")]


def test_local_sweep_writes_run_folders_and_skips_finished_trials(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray is optional: a local sweep must not import it
    statuses = run_sweep(TRIALS, tmp_path / "sweep", progress=False)
    assert statuses == {"sac__seed0": "done", "sac__seed1": "done"}
    for t in TRIALS:
        assert_complete_run(tmp_path / "sweep" / t.name, t.cfg)
        # Each trial ran exactly its own config: every field as the Trial says, with the replay capacity resolved
        # to its default, min(1e6, steps) = 120.
        saved = config_lib.load(tmp_path / "sweep" / t.name / "config.json")
        assert saved == dataclasses.replace(t.cfg, buffer_capacity=120)
        assert (saved.seed, saved.label) == ((0, "") if t.name == "sac__seed0" else (1, "other"))
    # A trial computes what `dynalab train` computes for the same config: a direct run of trial 0's config gives
    # the same metrics, bit for bit (same program on the same machine).
    train(TRIALS[0].cfg, tmp_path / "direct", progress=False)
    direct = learning_rows(tmp_path / "direct")
    assert len(direct) > 20 and learning_rows(tmp_path / "sweep" / "sac__seed0") == direct
    records = sweep_json(tmp_path / "sweep")
    assert [r["status"] for r in records.values()] == ["done", "done"]
    assert all(r["attempts"] == 1 and r["seconds"] > 0 and "error" not in r for r in records.values())
    for t in TRIALS:  # sweep.json's final return per seed is the run's last eval/return in metrics.csv
        rows = read(tmp_path / "sweep" / t.name / "metrics.csv")
        last = [v for s, _, m, v in rows if m == "eval/return" and s == 120]
        assert records[t.name]["final_eval_return"] == [round(v, 3) for v in last] and len(last) == 1
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("[1/2] sac__seed0 done in ") and line.endswith(" s") for line in lines)
    assert any(line.startswith("[2/2] sac__seed1 done in ") for line in lines)

    before = folder_hashes(tmp_path / "sweep")
    assert run_sweep(TRIALS, tmp_path / "sweep", progress=False) == {"sac__seed0": "finished-before",
                                                                     "sac__seed1": "finished-before"}
    assert folder_hashes(tmp_path / "sweep") == before  # nothing ran, nothing in the run folders changed
    assert {r["status"] for r in sweep_json(tmp_path / "sweep").values()} == {"finished-before"}
    assert all(r["attempts"] == 0 for r in sweep_json(tmp_path / "sweep").values())
    assert "[2/2] sac__seed1 finished before, skipped" in capsys.readouterr().out


@pytest.fixture
def failing_step(monkeypatch):
    """Trainer.step raises once for seed 0 when called at env step `fail_at[0]`; logs every call's step."""
    calls: dict[int, list[int]] = {}
    fail_at = [70]
    original = Trainer.step

    def step(self):
        seed = self.cfg.seed
        calls.setdefault(seed, []).append(self.env_step)
        if seed == 0 and self.env_step == fail_at[0] and calls[seed].count(fail_at[0]) == 1:
            raise RuntimeError("injected failure")
        return original(self)

    monkeypatch.setattr(Trainer, "step", step)
    return calls, fail_at


def test_failed_trial_is_retried_from_its_checkpoint(tmp_path, failing_step):
    calls, _ = failing_step
    statuses = run_sweep(TRIALS, tmp_path, retries=1, progress=False)
    assert statuses == {"sac__seed0": "done", "sac__seed1": "done"}
    rec = sweep_json(tmp_path)["sac__seed0"]
    assert rec["attempts"] == 2 and rec["retried_after"] == ["RuntimeError: injected failure"]
    assert sweep_json(tmp_path)["sac__seed1"]["attempts"] == 1
    # The second attempt resumed from the checkpoint of step 40 instead of restarting from step 0.
    assert calls[0] == list(range(71)) + list(range(40, 120))
    assert calls[1] == list(range(120))
    run = json.loads((tmp_path / "sac__seed0" / "run.json").read_text())
    assert [r["from_step"] for r in run["resumes"]] == [40]
    assert_complete_run(tmp_path / "sac__seed0", TINY)


def test_failure_after_retries_is_recorded_and_the_sweep_goes_on(tmp_path, failing_step, capsys):
    calls, fail_at = failing_step
    fail_at[0] = 5  # fail early: this test is about the bookkeeping
    # A third trial whose folder holds a run of another config: a config error, recorded without a retry.
    other = Trial("mismatch", dataclasses.replace(TINY, seed=2))
    (tmp_path / "mismatch").mkdir()
    config_lib.save(dataclasses.replace(TINY, seed=2, steps=999), tmp_path / "mismatch" / "config.json")
    statuses = run_sweep([*TRIALS, other], tmp_path, retries=0, progress=False)
    assert statuses == {"sac__seed0": "failed", "sac__seed1": "done", "mismatch": "failed"}
    records = sweep_json(tmp_path)
    assert records["sac__seed0"]["error"] == "RuntimeError: injected failure"
    assert records["sac__seed0"]["attempts"] == 1 and calls[0] == list(range(6))
    assert records["mismatch"]["error"].startswith("ConfigError: ") and "different config" in records["mismatch"]["error"]
    assert 2 not in calls  # the mismatched trial never ran
    assert_complete_run(tmp_path / "sac__seed1", TRIALS[1].cfg)
    out = capsys.readouterr().out
    assert "sac__seed0 failed after 1 attempt (" in out and out.count("\n[") + out.startswith("[") == 3


def test_unusable_trials_and_missing_ray_are_config_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="unique"):
        run_sweep([TRIALS[0], TRIALS[0]], tmp_path)
    with pytest.raises(ConfigError, match="folder name"):
        run_sweep([Trial("a/b", TINY)], tmp_path)
    with pytest.raises(ConfigError, match="trial bad: --warmup-steps"):
        run_sweep([Trial("bad", dataclasses.replace(TINY, warmup_steps=500))], tmp_path)
    with pytest.raises(ConfigError, match="trial w: --env-workers 0 .* cannot be used on Ray"):  # before connecting
        run_sweep([Trial("w", dataclasses.replace(TINY, env_workers=0))], tmp_path, ray_address="auto")
    with pytest.raises(ConfigError, match="cannot reach the Ray cluster"):  # fast, not ray.init's minutes of retries
        run_sweep(TRIALS, tmp_path, ray_address=f"127.0.0.1:{_free_port()}")
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError, match=r"pip install 'dynalab\[ray\]'"):
        run_sweep(TRIALS, tmp_path, ray_address="auto")
    assert not (tmp_path / TRIALS[0].name).exists()  # nothing ran


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session_pids(sid: int) -> list[int]:
    """Live processes in session `sid` (the Ray head and everything it started)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):  # the process may be gone already
                if os.getsid(int(entry)) == sid and int(entry) != sid:
                    pids.append(int(entry))
    return pids


@pytest.fixture
def ray_head():
    """A local one-node Ray cluster, started with `ray start --block` in its own session.

    Stopping it sends SIGTERM to that `ray start`, which stops exactly the processes it started
    (`ray stop` would kill every Ray process of this user on the machine). The head gets the
    tests' persistent JAX compile cache through its environment, which its workers inherit.
    """
    ray_cli = Path(sys.executable).parent / "ray"
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="dynalab-ray-", dir="/tmp")  # short: Ray's socket paths must stay short
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "JAX_COMPILATION_CACHE_DIR": os.environ.get("DYNALAB_JAX_CACHE", "/tmp/dynalab-jax-cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    log = Path(temp_dir) / "head.log"
    cmd = [str(ray_cli), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
           "--num-cpus", "2", "--num-gpus", "0", "--include-dashboard", "false", "--disable-usage-stats",
           "--object-store-memory", str(100 * 1024 * 1024), "--temp-dir", temp_dir,
           "--dashboard-port", str(_free_port()),
           "--dashboard-agent-listen-port", str(_free_port())]
    with log.open("w") as f:
        head = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None, f"ray start exited with {head.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"ray start did not come up in 60 s:\n{log.read_text()}"
            time.sleep(0.2)
        yield f"127.0.0.1:{port}", head.pid
    finally:
        import ray

        ray.shutdown()
        head.send_signal(signal.SIGTERM)  # the head drains running tasks (up to 30 s), then stops its processes
        try:
            head.wait(timeout=45)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        deadline = time.monotonic() + 10
        while (left := _session_pids(head.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in left:  # workers have process groups of their own, so kill them one by one
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"Ray processes left after stopping the head: {left}"


def _kill_worker_of(trial: str, sid: int, folder: Path, killed: list[int]) -> None:
    """Once `folder` holds its step-40 checkpoint, SIGKILL the Ray worker running `trial` (title ray::dynalab-<trial>)."""
    deadline = time.monotonic() + 60
    while not (folder / "checkpoints" / "step_000000000040").exists():
        if time.monotonic() > deadline:
            return
        time.sleep(0.02)
    for pid in _session_pids(sid):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            continue
        if title.startswith(f"ray::dynalab-{trial}"):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)


def test_ray_sweep_runs_trials_as_tasks_and_retries_a_killed_worker(tmp_path, ray_head):
    address, head_pid = ray_head
    # The first trial is longer, so that its worker is still running when it gets killed after step 40.
    trials = [Trial(TRIALS[0].name, dataclasses.replace(TINY, steps=480)), TRIALS[1]]
    killed: list[int] = []
    killer = threading.Thread(target=_kill_worker_of, args=(trials[0].name, head_pid, tmp_path / trials[0].name, killed))
    killer.start()
    try:
        statuses = run_sweep(trials, tmp_path, ray_address=address, retries=1, progress=False)
    finally:
        killer.join()
    assert len(killed) == 1, "found no worker to kill"
    assert statuses == {"sac__seed0": "done", "sac__seed1": "done"}
    for t in trials:
        assert_complete_run(tmp_path / t.name, t.cfg)
    doc = json.loads((tmp_path / "sweep.json").read_text())
    assert doc["backend"] == f"ray {address}"
    first, second = doc["trials"]["sac__seed0"], doc["trials"]["sac__seed1"]
    assert first["attempts"] == 2 and first["retried_after"][0].startswith("WorkerCrashedError: ")
    assert second["attempts"] == 1 and second["seconds"] > 0
    # The retry resumed from a checkpoint, not from step 0.
    resumes = json.loads((tmp_path / trials[0].name / "run.json").read_text())["resumes"]
    assert len(resumes) == 1 and resumes[0]["from_step"] >= 40
    import ray

    assert not ray.is_initialized()  # run_sweep connected, and disconnected when done
    for t in trials:  # the trials ran in Ray's workers, not in this process
        assert "default_worker.py" in json.loads((tmp_path / t.name / "run.json").read_text())["command"][0]


def test_a_stopped_local_sweep_records_the_time_its_trial_ran(tmp_path, monkeypatch):
    from dynalab import sweep as sweep_module
    from dynalab.train import Preempted

    stopped = {"ok": False, "seconds": 12.5, "retry": False, "preempted": True,
               "error": "Preempted: stopped by SIGTERM at env step 60 after checkpointing; run the same command to resume."}
    monkeypatch.setattr(sweep_module, "_attempt", lambda *args: stopped)
    with pytest.raises(Preempted, match="run the same sweep again"):
        run_sweep(TRIALS, tmp_path, progress=False)
    rec = sweep_json(tmp_path)["sac__seed0"]
    assert rec["seconds"] == 12.5 and rec["attempts"] == 1 and rec["error"].startswith("Preempted: ")
    assert sweep_json(tmp_path)["sac__seed1"]["status"] == "pending"  # never started: the sweep stopped
