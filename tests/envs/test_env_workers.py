"""Worker processes (dynalab.envs.workers): errors come back with their own type, a dead worker is a
clear error rather than a hang, nothing outlives close() or the main process, and the user's tasks
are built in the workers. (Bit-identity of processes and threads with the sequential loop, for
steps, snapshots and the perfect model: test_parallel_env.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dynalab.envs import BatchEnv, env_spec, make_env
from dynalab.envs import workers as W
from dynalab.models.perfect import Simulator
from dynalab.types import state_bits

HUGE = 1e12  # beyond MuJoCo's mjMAXVAL (1e10): the next step diverges
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom_task"


def poison(batch: BatchEnv, row: int) -> None:
    """Give one env a huge velocity through a snapshot, wherever its simulator lives: its next step
    diverges. The env's state vector is [time, qpos, qvel, ...] (MuJoCo's order)."""
    model = make_env(batch.spec.env_id, 0).model
    snap = batch.snapshot()
    state = snap[f"env{row}/state"].copy()
    state[1 + model.nq: 1 + model.nq + model.nv] = HUGE
    snap[f"env{row}/state"] = state
    batch.restore(snap)


@pytest.fixture(scope="module", autouse=True)
def warm_workers():
    """Worker processes booted once for this file's tests (they are shared by every BatchEnv and
    Simulator of the process, and stop when the last user lets go)."""
    pool, _ = W.acquire(2)
    yield
    W.release(pool)


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped by an adopting init, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_gone(pids, seconds=20.0) -> list[int]:
    deadline = time.time() + seconds
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def test_an_error_in_a_worker_is_raised_with_its_type_and_message():
    seeds = [0, 1, 2]
    sequential, parallel = BatchEnv("gym:Hopper-v5", seeds), BatchEnv("gym:Hopper-v5", seeds, workers=3)
    snap = sequential.snapshot()
    snap["env2/id"] = np.asarray("gym:Walker2d-v5")  # row 2 lives in the second worker process
    errors = []
    for batch in (sequential, parallel):
        with pytest.raises(ValueError) as e:
            batch.restore(snap)
        errors.append(e.value)
    assert str(errors[1]) == str(errors[0]) == "snapshot was taken from 'gym:Walker2d-v5', not 'gym:Hopper-v5'."
    assert "raised in env worker process" in "".join(getattr(errors[1], "__notes__", []))
    # The workers are still in step: the batch goes on.
    np.testing.assert_array_equal(parallel.reset(), sequential.reset())
    for batch in (sequential, parallel):
        batch.close()


def test_a_dead_worker_is_a_one_sentence_error_not_a_hang():
    batch = BatchEnv("gym:Hopper-v5", [0, 1, 2], workers=3)
    batch.reset()
    victim = batch.worker_pids[1]
    os.kill(victim, signal.SIGKILL)
    actions = np.zeros((3, batch.spec.action_dim))
    message = (rf"^env worker process {victim} was killed by SIGKILL while stepping its envs; the simulators it held "
               r"are lost, so close this BatchEnv or Simulator and build a new one \(a training run resumes from its "
               r"last checkpoint\)\.$")
    for _ in range(2):  # again, at once
        with pytest.raises(W.EnvWorkerError, match=message):
            batch.step(actions)
    batch.close()
    # A new BatchEnv gets new workers.
    again = BatchEnv("gym:Hopper-v5", [0, 1, 2], workers=3)
    assert victim not in again.worker_pids
    np.testing.assert_array_equal(again.reset(), BatchEnv("gym:Hopper-v5", [0, 1, 2]).reset())
    again.close()


# Run in a fresh interpreter, so that no other test's envs keep the workers up.
LIFECYCLE = """
import os, sys, numpy as np
from dynalab.envs import BatchEnv, env_spec
from dynalab.models.perfect import Simulator
batch = BatchEnv("gym:InvertedPendulum-v5", [0, 1, 2], workers=3)
sim = Simulator(env_spec("gym:InvertedPendulum-v5"), workers=2)
batch.reset()
batch.step(np.zeros((3, 1)))
from dynalab.types import state_bits
sim.host_step(np.repeat(state_bits(batch.get_states()), 2, 0), np.zeros((6, 1)))
print(*batch.worker_pids, *sim._procs.pids, flush=True)
if sys.argv[1] == "close":
    pids = [*batch.worker_pids, *sim._procs.pids]
    batch.close()
    sim.close()
    print(*[p for p in pids if os.path.exists(f"/proc/{p}")], flush=True)
elif sys.argv[1] == "raise":
    raise RuntimeError("the main loop died")
else:
    import time; time.sleep(600)
"""


def _lifecycle(how: str):
    return subprocess.Popen([sys.executable, "-c", LIFECYCLE, how], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_close_leaves_no_worker_process():
    proc = _lifecycle("close")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    pids, left = (out.splitlines() + [""])[:2]
    pids = [int(p) for p in pids.split()]
    assert len(pids) == 3 and len(set(pids)) == 2  # BatchEnv: 2 processes; the Simulator shares the first
    assert left == ""  # after close(), every worker process has exited and been reaped


@pytest.mark.parametrize("how", ["raise", "sigkill"])
def test_workers_do_not_outlive_the_main_process(how):
    proc = _lifecycle(how)
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 3, proc.stderr.read()
    if how == "sigkill":
        proc.send_signal(signal.SIGKILL)  # no atexit: the workers see their connection close
    proc.wait(timeout=60)
    assert _wait_gone(set(pids)) == []


def test_the_users_tasks_are_built_in_the_workers():
    # As with PYTHONPATH=examples/custom_task and --import my_tasks, but the path is added after the
    # workers started and the modules are not named: the workers import what registered the tasks.
    sys.path.insert(0, str(EXAMPLE))
    try:
        import my_tasks  # noqa: F401 - registers the tasks

        for env_id in ("gym:my_tasks/GentlePendulum-v0", "dmc:slider-reach"):
            sequential, parallel = BatchEnv(env_id, [0, 1, 2]), BatchEnv(env_id, [0, 1, 2], workers=3)
            np.testing.assert_array_equal(parallel.reset(), sequential.reset())
            for t in range(30):
                actions = np.random.default_rng(t).uniform(-1, 1, (3, sequential.spec.action_dim))
                a, b = parallel.step(actions), sequential.step(actions)
                for name in b.__dataclass_fields__:
                    np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=f"{env_id} {name} {t}")
            sim = Simulator(env_spec(env_id), workers=2)
            bits = np.repeat(state_bits(sequential.get_states()), 2, 0)
            acts = np.zeros((6, sequential.spec.action_dim))
            for x, y in zip(sim.host_step(bits, acts), Simulator(env_spec(env_id)).host_step(bits, acts)):
                np.testing.assert_array_equal(x, y)
            for closable in (sequential, parallel, sim):
                closable.close()
    finally:
        sys.path.remove(str(EXAMPLE))
        import gymnasium
        from dm_control import suite

        from dynalab.envs import registry

        for name in [n for n in gymnasium.registry if n.startswith("my_tasks/")]:
            del gymnasium.registry[name]
        suite._DOMAINS.pop("slider", None)
        for name in [m for m in sys.modules if m == "my_tasks" or m.startswith("my_tasks.")]:
            del sys.modules[name]
        for env_id in ("gym:my_tasks/GentlePendulum-v0", "dmc:slider-reach"):
            registry._checked_user_tasks.pop(env_id, None)
        env_spec.cache_clear()


def test_closing_a_trainer_stops_the_perfect_models_workers_too():
    """Trainer.close releases every user of the worker pool, the perfect model's simulator included
    (`Learner.close`): the last user's release stops the worker processes."""
    from dynalab.algos import default_config
    from dynalab.models.ensemble import ModelConfig
    from dynalab.train import Trainer

    cfg = default_config("mbpo", env="gym:InvertedPendulum-v5", seeds=2, steps=40, warmup_steps=20, replay_ratio=1,
                         batch_size=16, eval_every=40, eval_episodes=1, log_every=20, rollouts_per_step=4,
                         synthetic_retain_steps=10, model_refit_every=20, perfect_model=True, env_workers=2,
                         env_parallel="processes", model=ModelConfig(width=8, depth=1, refit_steps=1,
                                                                      batch_size=8, max_holdout=8))
    pool, _ = W.acquire(1)  # held here, so that its count of users is what to watch
    try:
        users = pool.users
        trainer = Trainer(cfg)
        try:
            while trainer.env_step < 23:  # past warm-up: rollouts step the perfect model's simulators
                trainer.step()
            assert trainer.state.synthetic.size.max() > 0
            assert pool.users == users + 3  # training envs, eval envs, the perfect model's simulator
        finally:
            trainer.close()
        assert pool.users == users
    finally:
        W.release(pool)
