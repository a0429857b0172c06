"""Observation, spec, action-scaling and seeding behaviour of every benchmark task."""

from __future__ import annotations

import numpy as np
import pytest

from dynalab.envs import DMC15, GYM6, Env, make_env

ALL = GYM6 + DMC15


@pytest.mark.parametrize("env_id", ALL)
def test_obs_and_spec_are_consistent(env_id):
    env = make_env(env_id, seed=0)
    assert isinstance(env, Env)
    spec = env.spec
    assert spec.env_id == env_id
    assert spec.action_dim == env.model.nu
    assert spec.max_episode_steps == 1000  # every GYM6 and DMC15 task
    obs = env.reset()
    rng = np.random.default_rng(0)
    for _ in range(3):
        assert obs.dtype == np.float32 and obs.shape == (spec.obs_dim,)
        assert np.all(np.isfinite(obs))
        obs, reward, terminated, truncated = env.step(rng.uniform(-1, 1, spec.action_dim))
        assert isinstance(reward, float) and np.isfinite(reward)
        assert type(terminated) is bool and type(truncated) is bool
    state = env.get_state()
    assert state.dtype == np.float64 and state.shape == (spec.state_dim,)
    env.close()


@pytest.mark.parametrize("env_id", ALL)
def test_actions_are_clipped_and_rescaled_to_actuator_bounds(env_id):
    env = make_env(env_id, seed=0)
    env.reset()
    low, high = env.model.actuator_ctrlrange.T
    d = env.spec.action_dim
    sign = np.where(np.arange(d) % 2 == 0, -1.0, 1.0)
    # Gymnasium's Box keeps float32 bounds, hence rtol rather than equality.
    tol = dict(rtol=1e-6, atol=0)
    # Outside [-1, 1] clips to the bounds; ctrl is what the simulator actually received.
    env.step(5.0 * sign)
    np.testing.assert_allclose(env.data.ctrl, np.where(sign < 0, low, high), **tol)
    env.step(-sign)
    np.testing.assert_allclose(env.data.ctrl, np.where(sign < 0, high, low), **tol)
    a = np.random.default_rng(1).uniform(-1, 1, d)
    env.step(a.astype(np.float32))
    np.testing.assert_allclose(
        env.data.ctrl, low + (a + 1) / 2 * (high - low), rtol=1e-6, atol=1e-6
    )
    env.close()


def test_quadruped_bounds_are_asymmetric_so_rescaling_is_exercised():
    env = make_env("dmc:quadruped-walk", seed=0)
    low, high = env.model.actuator_ctrlrange.T
    assert np.any(low != -high)
    np.testing.assert_array_equal(env.action_low, low)
    env.reset()
    env.step(np.zeros(env.spec.action_dim))
    np.testing.assert_allclose(env.data.ctrl, (low + high) / 2, atol=1e-12)


@pytest.mark.parametrize("env_id", ALL)
def test_seeding_is_deterministic_and_reset_seed_reseeds(env_id):
    a, b, c = make_env(env_id, seed=7), make_env(env_id, seed=7), make_env(env_id, seed=8)
    a1, b1, c1 = a.reset(), b.reset(), c.reset()
    np.testing.assert_array_equal(a1, b1)
    assert not np.array_equal(a1, c1)
    # Unseeded resets continue the env's RNG, so episode sequences reproduce.
    a2, b2 = a.reset(), b.reset()
    np.testing.assert_array_equal(a2, b2)
    assert not np.array_equal(a1, a2)
    # An explicit seed matches a fresh env made with that seed.
    np.testing.assert_array_equal(a.reset(seed=8), c1)
    for env in (a, b, c):
        env.close()
