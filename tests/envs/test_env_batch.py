"""BatchEnv determinism, seeding and shapes."""

from __future__ import annotations

import numpy as np
import pytest

from dynalab.envs import BatchEnv, StepResult, env_spec

IDS = ["gym:Hopper-v5", "dmc:cheetah-run"]


def _run(batch: BatchEnv, steps: int) -> list[np.ndarray]:
    rng = np.random.default_rng(42)
    stream = [batch.reset()]
    for _ in range(steps):
        stream.append(batch.get_states())
        result = batch.step(rng.uniform(-1, 1, (batch.num_envs, batch.spec.action_dim)))
        stream += [result.obs, result.next_obs, result.reward, result.terminated]
    return stream


@pytest.mark.parametrize("env_id", IDS)
def test_same_seeds_give_identical_streams(env_id):
    a, b = BatchEnv(env_id, [3, 4]), BatchEnv(env_id, [3, 4])
    for x, y in zip(_run(a, 40), _run(b, 40), strict=True):
        np.testing.assert_array_equal(x, y)
    a.close(), b.close()


@pytest.mark.parametrize("env_id", IDS)
def test_different_seeds_give_different_initial_obs(env_id):
    batch = BatchEnv(env_id, [0, 1, 2])
    obs = batch.reset()
    for i in range(3):
        for j in range(i + 1, 3):
            assert not np.array_equal(obs[i], obs[j])
    batch.close()


@pytest.mark.parametrize("env_id", IDS)
def test_shapes_and_dtypes(env_id):
    batch = BatchEnv(env_id, [0, 1])
    spec = env_spec(env_id)
    assert batch.spec == spec and batch.num_envs == 2
    obs = batch.reset()
    assert obs.shape == (2, spec.obs_dim) and obs.dtype == np.float32
    states = batch.get_states()
    assert states.shape == (2, spec.state_dim) and states.dtype == np.float64
    result = batch.step(np.zeros((2, spec.action_dim), dtype=np.float32))
    assert isinstance(result, StepResult)
    expected = {
        "obs": ((2, spec.obs_dim), np.float32),
        "next_obs": ((2, spec.obs_dim), np.float32),
        "reward": ((2,), np.float32),
        "terminated": ((2,), np.bool_),
        "truncated": ((2,), np.bool_),
        "episode_return": ((2,), np.float64),
        "episode_length": ((2,), np.int64),
    }
    for name, (shape, dtype) in expected.items():
        value = getattr(result, name)
        assert value.shape == shape and value.dtype == dtype, name
    batch.close()


def test_misuse_raises_clear_errors():
    batch = BatchEnv("dmc:pendulum-swingup", [0])
    with pytest.raises(RuntimeError, match="before reset"):
        batch.step(np.zeros((1, 1)))
    batch.reset()
    with pytest.raises(ValueError, match=r"actions has shape \(2, 1\)"):
        batch.step(np.zeros((2, 1)))
    with pytest.raises(ValueError, match="seeds is empty"):
        BatchEnv("dmc:pendulum-swingup", [])
    batch.close()
