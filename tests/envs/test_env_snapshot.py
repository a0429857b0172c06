"""snapshot/restore continue an env bit-identically, across episode ends and a save to disk."""

from __future__ import annotations

import numpy as np
import pytest

from dynalab.envs import DMC15, GYM6, BatchEnv, make_env

ALL = GYM6 + DMC15
SEED = 3


def _roundtrip(snap: dict[str, np.ndarray], path) -> dict[str, np.ndarray]:
    """Save with np.savez and load back without pickle, as a checkpoint does."""
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in snap.values())
    np.savez(path, **snap)
    with np.load(path, allow_pickle=False) as f:
        loaded = {key: f[key] for key in f.files}
    _assert_same_snapshot(loaded, snap)
    return loaded


def _assert_same_snapshot(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype, key
        np.testing.assert_array_equal(actual[key], value, err_msg=key)


def _action(env, t: int) -> np.ndarray:
    """The same pseudo-random action for every env at rollout step t."""
    return np.random.default_rng(1000 + t).uniform(-1, 1, env.spec.action_dim)


def _to_snapshot_point(env) -> None:
    """Reset twice (so the reset RNG has moved past where one reset leaves it), then
    step to 5 steps before the time limit, or 3 steps into a new episode once one
    has ended (the terminating Gym tasks fall long before the limit)."""
    rng = np.random.default_rng(7)
    env.reset()
    for _ in range(3):
        env.step(rng.uniform(-1, 1, env.spec.action_dim))
    env.reset()
    t, ended = 0, False
    while t < env.spec.max_episode_steps - 5 and not (ended and t == 3):
        _, _, terminated, truncated = env.step(rng.uniform(-1, 1, env.spec.action_dim))
        t += 1
        if terminated or truncated:
            env.reset()
            t, ended = 0, True


def _rollout(env, steps: int | None = None) -> tuple[list[tuple], int]:
    """Step with the fixed actions, resetting at episode ends; record every output.

    Without `steps`, run until 10 steps after the first episode end (at most 1100).
    """
    out, t, end = [], 0, None

    def more() -> bool:
        if steps is not None:
            return t < steps
        return (end is None or t < end + 10) and t < 1100

    while more():
        obs, reward, terminated, truncated = env.step(_action(env, t))
        out.append(("step", obs, reward, terminated, truncated))
        t += 1
        if terminated or truncated:
            out.append(("reset", env.reset()))
            end = t if end is None else end
    return out, t


def _assert_same_rollout(actual: list[tuple], expected: list[tuple]) -> None:
    assert [r[0] for r in actual] == [r[0] for r in expected]
    for i, (a, e) in enumerate(zip(actual, expected)):
        for x, y in zip(a[1:], e[1:]):
            np.testing.assert_array_equal(x, y, err_msg=f"record {i} ({e[0]})")


@pytest.mark.parametrize("env_id", ALL)
def test_restored_env_continues_identically_across_episode_end(env_id, tmp_path):
    original = make_env(env_id, SEED)
    _to_snapshot_point(original)
    snap = _roundtrip(original.snapshot(), tmp_path / "env.npz")
    expected, steps = _rollout(original)
    assert any(r[0] == "reset" for r in expected), "the rollout must cross an episode end"
    assert expected[-1][0] == "step" and expected[-2][0] == "step"  # steps of the next episode

    fresh = make_env(env_id, SEED)
    fresh.restore(snap)
    _assert_same_snapshot(fresh.snapshot(), snap)
    actual, _ = _rollout(fresh, steps)
    _assert_same_rollout(actual, expected)

    used = make_env(env_id, SEED)
    used.reset()
    for t in range(7):
        used.step(_action(used, 50 + t))
    used.restore(snap)
    _assert_same_snapshot(used.snapshot(), snap)
    actual, _ = _rollout(used, steps)
    _assert_same_rollout(actual, expected)
    for env in (original, fresh, used):
        env.close()


@pytest.mark.parametrize("env_id", ["gym:HalfCheetah-v5", "dmc:pendulum-swingup"])
def test_set_state_alone_misses_time_limit_and_reset_rng(env_id):
    # Why snapshot exists: the simulator state alone truncates late and draws
    # different initial states for later episodes.
    original = make_env(env_id, SEED)
    _to_snapshot_point(original)
    snap = original.snapshot()
    expected, steps = _rollout(original)
    assert expected[5][0] == "reset" and expected[4][4]  # truncated on the 5th step
    partial = make_env(env_id, SEED)
    partial.set_state(snap["state"])
    actual, _ = _rollout(partial, 5)
    np.testing.assert_array_equal(actual[0][1], expected[0][1])  # physics does match
    assert not actual[4][4]
    assert not np.array_equal(partial.reset(), expected[5][1])


@pytest.mark.parametrize("env_id", ALL)
def test_snapshot_of_never_reset_env_restores_first_episodes(env_id, tmp_path):
    # How eval envs are checkpointed: before their first reset.
    original = make_env(env_id, SEED)
    snap = _roundtrip(original.snapshot(), tmp_path / "env.npz")
    fresh = make_env(env_id, SEED)
    fresh.restore(snap)
    used = make_env(env_id, SEED)  # its first seeded reset is already spent
    used.reset()
    used.step(_action(used, 0))
    used.reset()
    used.restore(snap)
    streams = []
    for env in (original, fresh, used):
        with pytest.raises(RuntimeError, match="after the episode ended"):
            env.step(_action(env, 0))
        first = env.reset()
        steps, _ = _rollout(env, 2)
        streams.append([("reset", first), *steps, ("reset", env.reset())])
        env.close()
    _assert_same_rollout(streams[1], streams[0])
    _assert_same_rollout(streams[2], streams[0])


@pytest.mark.parametrize("env_id", ["gym:InvertedPendulum-v5", "dmc:pendulum-swingup"])
def test_snapshot_at_episode_end_needs_reset_after_restore(env_id, tmp_path):
    original = make_env(env_id, SEED)
    original.reset()
    t = 0
    while True:
        _, _, terminated, truncated = original.step(_action(original, t))
        t += 1
        if terminated or truncated:
            break
    snap = _roundtrip(original.snapshot(), tmp_path / "env.npz")
    restored = make_env(env_id, SEED)
    restored.restore(snap)
    streams = []
    for env in (original, restored):
        with pytest.raises(RuntimeError, match="after the episode ended"):
            env.step(_action(env, 0))
        first = env.reset()
        steps, _ = _rollout(env, 3)
        streams.append([("reset", first), *steps])
    _assert_same_rollout(streams[1], streams[0])


def test_restore_rejects_snapshot_of_other_env():
    snap = make_env("dmc:pendulum-swingup", SEED).snapshot()
    with pytest.raises(ValueError, match="snapshot was taken from 'dmc:pendulum-swingup'"):
        make_env("dmc:acrobot-swingup", SEED).restore(snap)


def _assert_same_result(actual, expected, t: int) -> None:
    for name in expected.__dataclass_fields__:
        np.testing.assert_array_equal(
            getattr(actual, name), getattr(expected, name), err_msg=f"{name} at step {t}"
        )


@pytest.mark.parametrize(
    ("env_id", "before", "after"),
    [("gym:Hopper-v5", 12, 150), ("dmc:pendulum-swingup", 990, 20)],
)
def test_batch_env_restore_continues_identically(env_id, before, after, tmp_path):
    seeds = [3, 4]
    original = BatchEnv(env_id, seeds)
    original.reset()
    rng = np.random.default_rng(0)
    shape = (original.num_envs, original.spec.action_dim)
    for _ in range(before):
        original.step(rng.uniform(-1, 1, shape))
    snap = _roundtrip(original.snapshot(), tmp_path / "batch.npz")
    restored = BatchEnv(env_id, seeds)
    restored.restore(snap)
    _assert_same_snapshot(restored.snapshot(), snap)
    straddling = 0
    for t in range(after):
        actions = rng.uniform(-1, 1, shape)
        expected, actual = original.step(actions), restored.step(actions)
        _assert_same_result(actual, expected, t)
        straddling += int(np.sum(expected.episode_length > t + 1))
    # Some finished episodes began before the snapshot, so their return and
    # length rely on the restored running sums.
    assert straddling > 0
    original.close(), restored.close()


def test_batch_env_restore_rejects_other_env_count():
    snap = BatchEnv("dmc:pendulum-swingup", [0, 1]).snapshot()
    with pytest.raises(ValueError, match="snapshot holds 2 envs but this BatchEnv has 1"):
        BatchEnv("dmc:pendulum-swingup", [0]).restore(snap)
