"""A diverging simulator: the adapters raise SimulatorDiverged, BatchEnv flags and resets that env.

Divergence is injected by writing a huge velocity (1e12, beyond MuJoCo's mjMAXVAL of 1e10)
into the simulator's mjData between two steps. MuJoCo's mj_checkVel then resets mjData at
the start of the next step: Gymnasium silently returns the reset pose as the step's outcome,
and dm_control raises PhysicsError (the first test pins both behaviours down on the raw
simulators, so the premise of the others is checked rather than assumed).
"""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
from dm_control import suite
from dm_control.rl.control import PhysicsError

from dynalab.envs import BatchEnv, make_env
from dynalab.envs.base import SimulatorDiverged

IDS = ["gym:Hopper-v5", "dmc:hopper-stand"]
HUGE = 1e12  # m/s or rad/s; anything beyond 1e10 is "huge" to MuJoCo's checks
SEEDS = [3, 4, 5]
BAD = 1  # the row of SEEDS whose simulator is made to diverge


def _actions(t: int, n: int, dim: int) -> np.ndarray:
    return np.random.default_rng(100 + t).uniform(-1, 1, (n, dim))


def _inject(env) -> None:
    env.data.qvel[:] = HUGE


def test_injected_velocity_makes_raw_simulators_misbehave():
    # Gymnasium: the step "succeeds" and reports MuJoCo's reset pose (qpos0: hopper
    # upright at z = 1.25, every velocity ~0), not a consequence of the action.
    env = gymnasium.make("Hopper-v5")
    env.reset(seed=0)
    for _ in range(3):
        env.step(np.zeros(3))
    env.unwrapped.data.qvel[:] = HUGE
    obs, _, terminated, truncated, _ = env.step(np.zeros(3))
    assert not terminated and not truncated
    assert abs(obs[0] - 1.25) < 1e-2 and np.abs(obs[1:6]).max() < 1e-6  # the initial pose
    env.close()
    # dm_control: PhysicsError, which would end `dynalab train` with a traceback.
    env = suite.load("hopper", "stand", task_kwargs={"random": 0})
    env.reset()
    env.physics.data.qvel[:] = HUGE
    with pytest.raises(PhysicsError, match="mjWARN_BADQVEL"):
        env.step(np.zeros(4))
    env.close()


@pytest.mark.parametrize("env_id", IDS)
def test_adapter_raises_ends_episode_and_recovers_on_reset(env_id):
    env = make_env(env_id, seed=0)
    env.reset()
    zero = np.zeros(env.spec.action_dim)
    for _ in range(3):
        env.step(zero)
    _inject(env)
    with pytest.raises(SimulatorDiverged, match=rf"^{env_id}: the simulation diverged") as info:
        env.step(zero)
    assert "mjWARN_BADQVEL" in str(info.value)
    assert isinstance(info.value, RuntimeError)
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step(zero)  # the episode is over, as after a termination
    obs = env.reset()
    assert np.isfinite(obs).all()
    for _ in range(5):
        obs, reward, _, _ = env.step(zero)
        assert np.isfinite(obs).all() and np.isfinite(reward)
    env.close()


@pytest.mark.parametrize("env_id", IDS)
def test_second_divergence_after_set_state_is_detected(env_id):
    # MuJoCo's reset on a bad state clears its warning counters and then counts the
    # warning once, so without a reset in between (set_state keeps the counters) a
    # second divergence leaves the BADQVEL counter at 1: a plain before/after
    # comparison, dm_control's included, would let it through silently, and a check
    # for a non-zero counter would flag every later healthy step.
    env = make_env(env_id, seed=0)
    env.reset()
    zero = np.zeros(env.spec.action_dim)
    env.step(zero)
    good = env.get_state()
    for _ in range(2):
        env.set_state(good)
        _inject(env)
        with pytest.raises(SimulatorDiverged):
            env.step(zero)
    env.set_state(good)
    obs, _, _, _ = env.step(zero)  # healthy again: must not be flagged
    assert np.isfinite(obs).all()
    env.close()


def _step_all(batch: BatchEnv, t: int):
    return batch.step(_actions(t, batch.num_envs, batch.spec.action_dim))


def _assert_rows_equal(actual, expected, rows, t) -> None:
    for name in expected.__dataclass_fields__:
        np.testing.assert_array_equal(
            getattr(actual, name)[rows], getattr(expected, name)[rows], err_msg=f"{name} at step {t}"
        )


@pytest.mark.parametrize("env_id", IDS)
def test_batch_env_flags_resets_and_isolates_the_diverged_env(env_id):
    before, after = 5, 40
    batch, reference = BatchEnv(env_id, SEEDS), BatchEnv(env_id, SEEDS)
    # What the diverging env should do from its divergence on: start a new episode,
    # exactly as an env with the same history that was reset at that moment.
    alone = make_env(env_id, SEEDS[BAD])
    np.testing.assert_array_equal(batch.reset(), reference.reset())
    alone.reset()
    last = None
    for t in range(before):
        last = _step_all(batch, t)
        _assert_rows_equal(last, _step_all(reference, t), slice(None), t)
        alone.step(_actions(t, len(SEEDS), batch.spec.action_dim)[BAD])
    assert not last.diverged.any()

    _inject(batch._envs[BAD])  # no public handle on a BatchEnv's envs; tests only
    res, ref = _step_all(batch, before), _step_all(reference, before)
    assert res.diverged.dtype == np.bool_ and res.diverged.shape == (len(SEEDS),)
    np.testing.assert_array_equal(res.diverged, [i == BAD for i in range(len(SEEDS))])
    others = [i for i in range(len(SEEDS)) if i != BAD]
    _assert_rows_equal(res, ref, others, before)
    # The documented placeholders of a diverged row.
    np.testing.assert_array_equal(res.next_obs[BAD], last.obs[BAD])  # the step's start, never to be stored
    assert res.reward[BAD] == 0.0
    assert not res.terminated[BAD] and not res.truncated[BAD]
    assert np.isnan(res.episode_return[BAD]) and res.episode_length[BAD] == 0
    np.testing.assert_array_equal(res.obs[BAD], alone.reset())

    ended = None
    for t in range(before + 1, before + 1 + after):
        res, ref = _step_all(batch, t), _step_all(reference, t)
        assert not res.diverged.any()
        _assert_rows_equal(res, ref, others, t)
        obs, reward, terminated, truncated = alone.step(_actions(t, len(SEEDS), batch.spec.action_dim)[BAD])
        np.testing.assert_array_equal(res.next_obs[BAD], obs)
        assert res.reward[BAD] == np.float32(reward)
        assert (res.terminated[BAD], res.truncated[BAD]) == (terminated, truncated)
        if terminated or truncated:
            alone.reset()
            if ended is None:
                # The running return and length restarted at the divergence.
                assert res.episode_length[BAD] == t - before
                ended = t
    if env_id.startswith("gym:"):
        assert ended is not None, "a random-action Hopper episode should fall within 40 steps"
    for env in (batch, reference, alone):
        env.close()


def test_batch_env_snapshot_carries_the_placeholder_observation(tmp_path):
    env_id = "gym:Hopper-v5"
    original = BatchEnv(env_id, SEEDS)
    original.reset()
    for t in range(3):
        _step_all(original, t)
    np.savez(tmp_path / "batch.npz", **original.snapshot())
    with np.load(tmp_path / "batch.npz", allow_pickle=False) as f:
        snap = {key: f[key] for key in f.files}
    restored = BatchEnv(env_id, SEEDS)
    restored.restore(snap)
    results = []
    for batch in (original, restored):
        _inject(batch._envs[BAD])
        results.append(_step_all(batch, 3))
    _assert_rows_equal(results[1], results[0], slice(None), 3)
    assert results[0].diverged[BAD]
    for batch in (original, restored):
        batch.close()
