"""Simulators stepped on several workers, threads or processes: results, snapshots and the perfect
model's callback are bit-identical to the sequential loop (one worker), whatever the worker count.
(Worker processes' own behaviour, errors and shutdown: test_env_workers.py.)"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dynalab.algos import ALGOS, default_config
from dynalab.config import RUN_CONTROL, ConfigError, TrainConfig, validate
from dynalab.envs import BatchEnv, env_spec, make_env
from dynalab.envs.batch import available_cores
from dynalab.models.perfect import Simulator
from dynalab.types import state_bits

from test_env_workers import poison  # noqa: E402 - a diverging row wherever its simulator lives

SEEDS = [3, 4, 5, 6, 7]  # five envs: three workers get uneven chunks (1, 2, 2)
BAD = 2  # the row whose simulator is made to diverge
HUGE = 1e12  # beyond MuJoCo's mjMAXVAL (1e10): the next step diverges


def _actions(t: int, n: int, dim: int) -> np.ndarray:
    return np.random.default_rng(1000 + t).uniform(-1, 1, (n, dim))


def _assert_same(actual, expected, t) -> None:
    for name in expected.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(actual, name), getattr(expected, name), err_msg=f"{name} at step {t}")


def _assert_same_snapshots(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


KINDS = ["threads", "processes"]


# Hopper falls within a few dozen random steps; a dm_control episode is 1000 steps, so the DMC case
# uses its cheapest task to reach the time-limit ends.
@pytest.mark.parametrize("parallel", KINDS)
@pytest.mark.parametrize(("env_id", "steps", "inject_at"), [("gym:Hopper-v5", 120, 7), ("dmc:pendulum-swingup", 1010, 400)])
def test_parallel_steps_equal_sequential_ones(env_id, steps, inject_at, parallel):
    sequential, parallel = BatchEnv(env_id, SEEDS, workers=1), BatchEnv(env_id, SEEDS, workers=3, parallel=parallel)
    assert (sequential.workers, parallel.workers) == (1, 3)
    np.testing.assert_array_equal(parallel.reset(), sequential.reset())
    ends = diverged = 0
    for t in range(steps):
        if t == inject_at:
            for batch in (sequential, parallel):
                poison(batch, BAD)  # its next step diverges
        actions = _actions(t, len(SEEDS), sequential.spec.action_dim)
        res, ref = parallel.step(actions), sequential.step(actions)
        _assert_same(res, ref, t)
        ends += int((ref.terminated | ref.truncated).sum())
        diverged += int(ref.diverged.sum())
    # The premise: episode ends (every env's but the reset one's, at least) and one divergence were crossed.
    assert ends >= len(SEEDS) - 1 and diverged == 1
    _assert_same_snapshots(parallel.snapshot(), sequential.snapshot())
    np.testing.assert_array_equal(parallel.get_states(), sequential.get_states())
    for batch in (sequential, parallel):
        batch.close()


@pytest.mark.parametrize("parallel", KINDS)
def test_snapshot_and_restore_under_parallel_stepping(tmp_path, parallel):
    env_id = "gym:Hopper-v5"
    original = BatchEnv(env_id, SEEDS, workers=2, parallel=parallel)
    original.reset()
    for t in range(15):
        original.step(_actions(t, len(SEEDS), original.spec.action_dim))
    np.savez(tmp_path / "batch.npz", **original.snapshot())
    with np.load(tmp_path / "batch.npz", allow_pickle=False) as f:
        snap = {key: f[key] for key in f.files}
    # The worker count is not part of the state: a snapshot restores under any count.
    restored = [BatchEnv(env_id, SEEDS, workers=w, parallel=parallel) for w in (1, 3)]
    for batch in restored:
        batch.restore(snap)
    for t in range(15, 60):
        actions = _actions(t, len(SEEDS), original.spec.action_dim)
        ref = original.step(actions)
        for batch in restored:
            _assert_same(batch.step(actions), ref, t)
    for batch in (original, *restored):
        batch.close()


@pytest.mark.parametrize("parallel", KINDS)
@pytest.mark.parametrize("env_id", ["gym:Hopper-v5", "dmc:hopper-stand"])
def test_perfect_model_parallel_callback_equals_sequential(env_id, parallel):
    spec = env_spec(env_id)
    env = make_env(env_id, 0)
    env.reset()
    rng = np.random.default_rng(0)
    states, actions = [], []
    for _ in range(23):
        a = rng.uniform(-1, 1, spec.action_dim).astype(np.float32)
        states.append(env.get_state())
        actions.append(a)
        _, _, term, trunc = env.step(a)
        if term or trunc:
            env.reset()
    bad = states[5].copy()
    bad[1 + env.model.nq: 1 + env.model.nq + env.model.nv] = HUGE  # [time, qpos, qvel, ...] (MuJoCo order)
    states.append(bad)
    actions.append(np.zeros(spec.action_dim, np.float32))
    env.close()
    # A (2, 12) batch of rows, as the vmapped learner hands the callback (members, rollouts).
    bits = state_bits(np.stack(states)).reshape(2, 12, -1)
    acts = np.stack(actions).reshape(2, 12, -1)
    sequential, parallel = Simulator(spec, workers=1), Simulator(spec, workers=3, parallel=parallel)
    ref, out = sequential.host_step(bits, acts), parallel.host_step(bits, acts)
    assert not ref[4][1, 11] and ref[4].sum() == 23  # the premise: one invalid (diverged) row
    for name, a, b in zip(("next_obs", "reward", "terminated", "next_state", "valid"), out, ref):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    # A second call on the same workers (which have stepped other rows since) still agrees.
    again = parallel.host_step(bits[::-1], acts[::-1])
    for a, b in zip(again, sequential.host_step(bits[::-1], acts[::-1])):
        np.testing.assert_array_equal(a, b)
    sequential.close()
    parallel.close()


@pytest.mark.parametrize("parallel", KINDS)
def test_one_worker_has_no_pool_and_more_workers_than_cores_or_envs_work(parallel):
    one = BatchEnv("gym:Hopper-v5", SEEDS[:2], workers=1, parallel=parallel)
    assert one.workers == 1 and one.parallel == "sequential" and one._rows.pool._pool is None  # a plain loop
    assert one.worker_pids == []
    many = BatchEnv("gym:Hopper-v5", SEEDS[:2], workers=available_cores() + 8, parallel=parallel)
    assert many.workers == 2 and many.parallel == parallel  # capped at the number of envs
    assert len(many.worker_pids) == (1 if parallel == "processes" else 0)  # this process steps a chunk too
    default = BatchEnv("gym:Hopper-v5", SEEDS, workers=0, parallel=parallel)
    assert default.workers == min(available_cores(), len(SEEDS))
    ref = one.reset()
    np.testing.assert_array_equal(many.reset(), ref)
    for t in range(5):
        actions = _actions(t, 2, one.spec.action_dim)
        _assert_same(many.step(actions), one.step(actions), t)
    for batch in (one, many, default):
        batch.close()


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_bad_worker_counts_are_refused_in_one_sentence(bad):
    message = r"^workers must be an integer >= 0 \(0 means one per available CPU core\), got .+\.$"
    with pytest.raises(ValueError, match=message):
        BatchEnv("gym:Hopper-v5", SEEDS[:1], workers=bad)
    with pytest.raises(ValueError, match=message):
        Simulator(env_spec("gym:Hopper-v5"), workers=bad)
    message = r"^parallel must be 'processes' or 'threads', got 'fork'\.$"
    with pytest.raises(ValueError, match=message):
        BatchEnv("gym:Hopper-v5", SEEDS[:1], workers=2, parallel="fork")
    with pytest.raises(ValueError, match=message):
        Simulator(env_spec("gym:Hopper-v5"), workers=2, parallel="fork")


def test_env_workers_config_is_validated_and_does_not_change_results():
    cfg = default_config("sac", env="gym:Hopper-v5", seeds=1, steps=100, warmup_steps=10, batch_size=8)
    with pytest.raises(ConfigError, match=r"^--env-workers must be >= 0 \(0 means one per available CPU core\), "
                                          r"got -1\.$"):
        validate(dataclasses.replace(cfg, env_workers=-1), list(ALGOS))
    validate(dataclasses.replace(cfg, env_workers=3), list(ALGOS))
    with pytest.raises(ConfigError, match=r"^--env-parallel must be one of: processes, threads, got 'fork'\.$"):
        validate(dataclasses.replace(cfg, env_parallel="fork"), list(ALGOS))
    validate(dataclasses.replace(cfg, env_parallel="threads"), list(ALGOS))
    # The default: one loop in the main process (worker processes did not reliably reach 1.6x on the 2-core
    # reference machine; README); asked for, workers are processes.
    assert (TrainConfig().env_workers, TrainConfig().env_parallel) == (1, "processes")
    assert {"env_workers", "env_parallel"} <= set(RUN_CONTROL)  # resuming with another count or kind is allowed
