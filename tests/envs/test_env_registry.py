"""Task ids, the unknown-id error, and specs."""

from __future__ import annotations

import pytest
from dm_control import suite

from dynalab.envs import DMC15, GYM6, UnknownEnvError, env_spec, list_envs, make_env


def test_list_envs_starts_with_benchmarks_and_has_no_duplicates():
    ids = list_envs()
    assert ids[: len(GYM6) + len(DMC15)] == list(GYM6 + DMC15)
    assert len(ids) == len(set(ids))
    rest = ids[len(GYM6) + len(DMC15) :]
    assert rest == sorted(rest)
    assert all(i.startswith(("gym:", "dmc:")) for i in ids)


def test_list_envs_covers_every_suite_task_and_other_gym_mujoco_tasks():
    ids = set(list_envs())
    assert {f"dmc:{d}-{t}" for d, t in suite.ALL_TASKS} <= ids
    assert {"gym:Swimmer-v5", "gym:Reacher-v5", "gym:Hopper-v4"} <= ids
    assert "gym:CartPole-v1" not in ids  # not a MuJoCo task


@pytest.mark.parametrize(
    "bad, suggestion",
    [
        ("dmc:cheetah-runn", "dmc:cheetah-run"),
        ("gym:hopper-v5", "gym:Hopper-v5"),
        ("dmc:finger-turn-hard", "dmc:finger-turn_hard"),
    ],
)
def test_unknown_id_names_the_problem_and_suggests(bad, suggestion):
    with pytest.raises(UnknownEnvError) as info:
        make_env(bad, seed=0)
    message = str(info.value)
    assert message.startswith(f"unknown env {bad!r}; valid ids look like")
    assert f"(did you mean {suggestion}?)" in message
    assert "run 'dynalab envs' for the full list." in message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("bad", ["zzz", "dmc:cheetah", "gym:CartPole-v1", "cheetah-run"])
def test_unknown_id_without_close_match_still_explains(bad):
    with pytest.raises(
        UnknownEnvError, match="valid ids look like 'gym:<Name>-v5' or 'dmc:<domain>-<task>'"
    ):
        make_env(bad, seed=0)


@pytest.mark.parametrize(
    "env_id", ["dmc:cartpole-balance", "gym:Swimmer-v5", "dmc:point_mass-hard"]
)
def test_other_supported_ids_build_and_match_env_spec(env_id):
    env = make_env(env_id, seed=0)
    obs = env.reset()
    assert obs.shape == (env.spec.obs_dim,)
    env.step(env.spec.action_dim * [0.0])
    assert env_spec(env_id) == env.spec
    assert len(env.get_state()) == env.spec.state_dim
    env.close()
