"""Known termination functions agree with the real environments' `terminated` flag."""

from __future__ import annotations

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynalab.envs import make_env
from dynalab.envs.termination import (
    NoTerminationFnError,
    has_termination_fn,
    supported_ids,
    termination_fn,
)

# Random-action steps per task: enough for several falls each (seed 0 gives
# Hopper 28, Walker2d 27, Humanoid 25, InvertedPendulum 77/500, Ant 10/1500).
ROLLOUT_STEPS = {
    "gym:Hopper-v5": 600,
    "gym:Walker2d-v5": 600,
    "gym:Ant-v5": 1500,  # a random Ant rarely terminates (z > 1.0 when it bounces)
    "gym:Humanoid-v5": 600,
    "gym:InvertedPendulum-v5": 300,
}


def _rollout(env_id: str, steps: int, seed: int = 0):
    """(obs, action, next_obs, terminated) for `steps` random-action transitions.

    At an episode's end next_obs is the last observation step returned, before reset.
    """
    env = make_env(env_id, seed=seed)
    rng = np.random.default_rng(seed)
    obs_l, act_l, next_l, term_l = [], [], [], []
    obs = env.reset()
    for _ in range(steps):
        action = rng.uniform(-1.0, 1.0, env.spec.action_dim).astype(np.float32)
        next_obs, _, terminated, truncated = env.step(action)
        obs_l.append(obs)
        act_l.append(action)
        next_l.append(next_obs)
        term_l.append(terminated)
        obs = env.reset() if terminated or truncated else next_obs
    env.close()
    return np.stack(obs_l), np.stack(act_l), np.stack(next_l), np.array(term_l)


@pytest.mark.parametrize("env_id", list(ROLLOUT_STEPS))
def test_matches_real_terminated_on_random_trajectories(env_id):
    obs, action, next_obs, terminated = _rollout(env_id, ROLLOUT_STEPS[env_id])
    assert terminated.sum() >= 5, "too few terminations to test anything"
    assert (~terminated).sum() >= 200
    done = jax.jit(termination_fn(env_id))(obs, action, next_obs)
    assert done.shape == terminated.shape and done.dtype == jnp.bool_
    mismatch = np.flatnonzero(np.asarray(done) != terminated)
    assert mismatch.size == 0, f"disagrees at steps {mismatch[:10]}"
    # One transition at a time through vmap gives the same answers.
    done_vmap = jax.vmap(termination_fn(env_id))(obs, action, next_obs)
    np.testing.assert_array_equal(np.asarray(done_vmap), terminated)


def _real(name: str, qpos, qvel):
    """(float32 obs as our adapter returns it, Gymnasium's termination flag)."""
    env = gymnasium.make(name).unwrapped
    env.reset(seed=0)
    env.set_state(np.asarray(qpos, dtype=np.float64), np.asarray(qvel, dtype=np.float64))
    obs = np.asarray(env._get_obs(), dtype=np.float32)
    flag = not env.is_healthy
    env.close()
    return obs, flag


# (qpos index, value) edits of the initial state: on, just inside and just outside
# every threshold (strict in Hopper/Walker2d/Humanoid, inclusive in Ant), and NaN.
BOUNDARY_EDITS = {
    "Hopper-v5": [
        ("q", 1, 0.7), ("q", 1, 0.7 + 1e-6), ("q", 1, 0.69), ("q", 1, 1e3),
        ("q", 2, 0.2), ("q", 2, -0.2), ("q", 2, 0.199), ("q", 2, -0.199),
        ("q", 3, 100.0), ("q", 3, -100.0), ("q", 3, 99.9), ("q", 3, -99.9),
        ("q", 4, np.nan), ("v", 3, np.nan), ("v", 3, 99.0),
    ],
    "Walker2d-v5": [
        ("q", 1, 0.8), ("q", 1, 0.8 + 1e-6), ("q", 1, 2.0), ("q", 1, 1.999),
        ("q", 2, 1.0), ("q", 2, -1.0), ("q", 2, 0.999), ("q", 2, -0.999),
        ("q", 1, np.nan), ("q", 5, 500.0),
    ],
    "Ant-v5": [
        ("q", 2, 0.2), ("q", 2, 1.0), ("q", 2, 0.1999), ("q", 2, 1.0001), ("q", 2, 0.5),
        ("q", 7, np.nan), ("v", 4, np.inf), ("v", 0, 1e6),
    ],
    "Humanoid-v5": [
        ("q", 2, 1.0), ("q", 2, 2.0), ("q", 2, 1.0001), ("q", 2, 1.9999), ("q", 2, 0.5),
        ("q", 2, np.nan), ("v", 0, 1e6),
    ],
}


@pytest.mark.parametrize("name", list(BOUNDARY_EDITS))
def test_matches_gymnasium_is_healthy_at_thresholds_and_nan(name):
    env = gymnasium.make(name).unwrapped
    init_qpos, init_qvel = env.init_qpos.copy(), env.init_qvel.copy()
    env.close()
    obs_l, flags = [], []
    for which, index, value in BOUNDARY_EDITS[name]:
        qpos, qvel = init_qpos.copy(), init_qvel.copy()
        (qpos if which == "q" else qvel)[index] = value
        obs, flag = _real(name, qpos, qvel)
        obs_l.append(obs)
        flags.append(flag)
    assert any(flags) and not all(flags)
    next_obs = np.stack(obs_l)
    done = termination_fn(f"gym:{name}")(next_obs, None, next_obs)
    np.testing.assert_array_equal(np.asarray(done), np.array(flags))


def test_inverted_pendulum_matches_gymnasium_step_at_threshold_and_non_finite():
    # InvertedPendulum decides in step() from the observation; skip the physics
    # (do_simulation is a no-op) so step judges exactly the state we set.
    env = gymnasium.make("InvertedPendulum-v5").unwrapped
    env.reset(seed=0)
    env.do_simulation = lambda action, n_frames: None
    states = [
        ([0.0, 0.2], [0.0, 0.0]), ([0.0, -0.2], [0.0, 0.0]),
        ([0.0, 0.2001], [0.0, 0.0]), ([0.0, -0.2001], [0.0, 0.0]), ([0.5, 0.1], [1.0, -2.0]),
        ([np.nan, 0.0], [0.0, 0.0]), ([0.0, 0.0], [np.inf, 0.0]), ([0.0, 0.0], [0.0, -np.inf]),
    ]
    obs_l, flags = [], []
    for qpos, qvel in states:
        env.set_state(np.array(qpos), np.array(qvel))
        obs, _, terminated, _, _ = env.step(np.zeros(1))
        obs_l.append(np.asarray(obs, dtype=np.float32))
        flags.append(terminated)
    env.close()
    assert flags == [False, False, True, True, False, True, True, True]
    next_obs = np.stack(obs_l)
    done = termination_fn("gym:InvertedPendulum-v5")(next_obs, None, next_obs)
    np.testing.assert_array_equal(np.asarray(done), np.array(flags))


@pytest.mark.parametrize(
    "name, which, index, value",
    [
        # Hopper tests unclipped qvel against (-100, 100); the obs clips it to +-10.
        ("Hopper-v5", "v", 2, 150.0),
        # Ant also needs x, y finite; the obs leaves them out.
        ("Ant-v5", "q", 0, np.inf),
    ],
)
def test_documented_blind_spots_not_visible_in_the_observation(name, which, index, value):
    env = gymnasium.make(name).unwrapped
    qpos, qvel = env.init_qpos.copy(), env.init_qvel.copy()
    env.close()
    (qpos if which == "q" else qvel)[index] = value
    obs, flag = _real(name, qpos, qvel)
    assert flag  # Gymnasium terminates ...
    assert not termination_fn(f"gym:{name}")(obs[None], None, obs[None])[0]  # ... we cannot see why


def _mbpo_hopper_done(next_obs: np.ndarray) -> np.ndarray:
    """The original MBPO (static_fns/hopper.py) Hopper termination, bug included."""
    height = next_obs[:, 0]
    angle = next_obs[:, 1]
    not_done = (
        np.isfinite(next_obs).all(axis=-1)
        * np.abs(next_obs[:, 1:] < 100).all(axis=-1)  # abs of a bool: no lower bound
        * (height > 0.7)
        * (np.abs(angle) < 0.2)
    )
    return ~not_done


def test_original_mbpo_hopper_logic_misses_the_lower_state_bound():
    env = gymnasium.make("Hopper-v5").unwrapped
    qpos, qvel = env.init_qpos.copy(), env.init_qvel.copy()
    env.close()
    qpos[3] = -150.0  # thigh joint far below -100: Gymnasium calls this unhealthy
    obs, flag = _real("Hopper-v5", qpos, qvel)
    assert flag
    assert not _mbpo_hopper_done(obs[None])[0]
    assert termination_fn("gym:Hopper-v5")(obs[None], None, obs[None])[0]


# Gym tasks outside Gym6 whose step() returns terminated=False unconditionally (read in
# Gymnasium 1.x's source; Pusher-v4 cannot be built).
NEVER_TERMINATE = (
    "gym:HalfCheetah-v4", "gym:Swimmer-v4", "gym:Swimmer-v5", "gym:Reacher-v4", "gym:Reacher-v5",
    "gym:Pusher-v5", "gym:HumanoidStandup-v4", "gym:HumanoidStandup-v5",
)


@pytest.mark.parametrize("env_id", ["gym:HalfCheetah-v5", *NEVER_TERMINATE, "dmc:cheetah-run", "dmc:walker-run"])
def test_never_terminating_tasks_return_all_false(env_id):
    obs, action, next_obs, terminated = _rollout(env_id, 50)
    assert not terminated.any()
    fn = termination_fn(env_id)
    for x in (next_obs, np.full_like(next_obs, np.nan), 1e6 * np.ones_like(next_obs)):
        done = jax.jit(fn)(obs, action, x)
        assert done.shape == (50,) and not np.asarray(done).any()


def test_dmc_lqr_terminates_when_the_state_norm_is_tiny():
    # dm_control's LQR task is the one suite task that terminates (||state|| < 1e-6);
    # its obs is exactly qpos ++ qvel. Start from states of several sizes.
    env = make_env("dmc:lqr-lqr_2_1", seed=0)
    env.reset()
    rng = np.random.default_rng(0)
    fn = jax.jit(termination_fn("dmc:lqr-lqr_2_1"))
    zero = np.zeros(env.spec.action_dim)
    flags, obs_l = [], []
    for scale in (1e-3, 1e-5, 2e-6, 1.2e-6, 1e-6, 8e-7, 5e-7, 1e-8, 0.0):
        direction = rng.normal(size=env.model.nq + env.model.nv)
        direction /= np.linalg.norm(direction)
        env.data.qpos[:] = scale * direction[: env.model.nq]
        env.data.qvel[:] = scale * direction[env.model.nq :]
        env.set_state(env.get_state())
        next_obs, _, terminated, _ = env.step(zero)
        obs_l.append(next_obs)
        flags.append(terminated)
    env.close()
    assert any(flags) and not all(flags)
    next_obs = np.stack(obs_l)
    np.testing.assert_array_equal(np.asarray(fn(next_obs, None, next_obs)), np.array(flags))


def test_jit_and_vmap_on_synthetic_batches():
    rng = np.random.default_rng(0)
    for env_id, dim in (("gym:Hopper-v5", 11), ("gym:Ant-v5", 105), ("gym:InvertedPendulum-v5", 4)):
        fn = termination_fn(env_id)
        x = jnp.asarray(rng.normal(size=(2, 8, dim)), dtype=jnp.float32)
        a = jnp.zeros((2, 8, 1))
        batched = jax.jit(fn)(x, a, x)
        assert batched.shape == (2, 8)
        nested = jax.jit(jax.vmap(jax.vmap(fn)))(x, a, x)
        np.testing.assert_array_equal(np.asarray(nested), np.asarray(batched))
        with pytest.raises(ValueError, match="expected"):
            fn(x, a, x[..., :-1])


def test_unknown_and_unsupported_ids():
    assert has_termination_fn("gym:Hopper-v5")
    assert has_termination_fn("dmc:cheetah-run")
    assert has_termination_fn("dmc:lqr-lqr_6_2")
    assert set(supported_ids()) == {
        "gym:Hopper-v5", "gym:Walker2d-v5", "gym:Ant-v5", "gym:Humanoid-v5",
        "gym:InvertedPendulum-v5", "gym:HalfCheetah-v5", *NEVER_TERMINATE,
    }
    for bad in ("gym:InvertedDoublePendulum-v5", "gym:Hopper-v4", "gym:NoSuch-v5", "dmc:cheetah-runn", "zzz"):
        assert not has_termination_fn(bad)
        with pytest.raises(NoTerminationFnError) as info:
            termination_fn(bad)
        assert isinstance(info.value, ValueError)
        message = str(info.value)
        assert repr(bad) in message and "gym:Hopper-v5" in message and "dmc:" in message


def test_never_terminates_names_the_tasks_whose_episodes_all_last_the_time_limit():
    from dynalab.envs.termination import never_terminates

    assert [never_terminates(e) for e in ("gym:HalfCheetah-v5", "gym:Swimmer-v5", "dmc:cheetah-run",
                                           "dmc:walker-walk")] == [True] * 4
    # Tasks that can end early, and ids with no built-in rule.
    assert [never_terminates(e) for e in ("gym:Hopper-v5", "gym:InvertedPendulum-v5", "dmc:lqr-lqr_2_1",
                                           "gym:NoSuchTask-v0", "dmc:nosuch-task")] == [False] * 5
