"""Termination vs truncation, and BatchEnv's automatic reset at an episode's end."""

from __future__ import annotations

import numpy as np
import pytest

from dynalab.envs import BatchEnv, make_env


def test_gym_hopper_falls_and_terminates():
    env = make_env("gym:Hopper-v5", seed=0)
    env.reset()
    rng = np.random.default_rng(0)
    steps = 0
    terminated = truncated = False
    while not (terminated or truncated):
        _, _, terminated, truncated = env.step(rng.uniform(-1, 1, env.spec.action_dim))
        steps += 1
    assert terminated and not truncated
    assert steps < 1000
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step(np.zeros(env.spec.action_dim))
    env.reset()
    env.step(np.zeros(env.spec.action_dim))  # a new episode steps again


@pytest.mark.parametrize("env_id", ["dmc:pendulum-swingup", "gym:HalfCheetah-v5"])
def test_time_limit_truncates_and_batch_env_auto_resets(env_id):
    seeds = [0, 1]
    batch = BatchEnv(env_id, seeds)
    # Reference single envs with the same seeds and actions.
    singles = [make_env(env_id, s) for s in seeds]
    obs = batch.reset()
    np.testing.assert_array_equal(obs, np.stack([e.reset() for e in singles]))
    rng = np.random.default_rng(0)
    n, horizon = batch.num_envs, batch.spec.max_episode_steps
    assert horizon == 1000
    returns = np.zeros(n)
    for t in range(1, horizon + 1):
        actions = rng.uniform(-1, 1, (n, batch.spec.action_dim))
        result = batch.step(actions)
        ref = [e.step(a) for e, a in zip(singles, actions)]
        returns += [r for _, r, _, _ in ref]
        np.testing.assert_array_equal(result.next_obs, np.stack([o for o, _, _, _ in ref]))
        np.testing.assert_array_equal(result.reward, np.float32([r for _, r, _, _ in ref]))
        assert not result.terminated.any()
        if t < horizon:
            assert not result.truncated.any()
            assert np.isnan(result.episode_return).all() and (result.episode_length == 0).all()
            np.testing.assert_array_equal(result.obs, result.next_obs)
    assert result.truncated.all()
    assert (result.episode_length == horizon).all()
    np.testing.assert_array_equal(result.episode_return, returns)
    # obs is the new episode's first observation, next_obs the old one's last.
    np.testing.assert_array_equal(result.obs, np.stack([e.reset() for e in singles]))
    assert not np.array_equal(result.obs, result.next_obs)
    # The reset envs keep going without complaint.
    result = batch.step(np.zeros((n, batch.spec.action_dim)))
    assert not result.truncated.any()
    batch.close()


def test_batch_env_reports_gym_termination_per_env():
    batch = BatchEnv("gym:Hopper-v5", [0, 1, 2])
    batch.reset()
    rng = np.random.default_rng(0)
    lengths = np.zeros(3, dtype=np.int64)
    seen = np.zeros(3, dtype=bool)
    for _ in range(300):
        result = batch.step(rng.uniform(-1, 1, (3, batch.spec.action_dim)))
        lengths += 1
        done = result.terminated | result.truncated
        assert not result.truncated.any()
        np.testing.assert_array_equal(result.episode_length[done], lengths[done])
        assert np.isfinite(result.episode_return[done]).all()
        assert np.isnan(result.episode_return[~done]).all()
        lengths[done] = 0
        seen |= result.terminated
        if seen.all():
            break
    assert seen.all()
    batch.close()
