"""Task ids, the unknown-id error, and specs."""

from __future__ import annotations

import numpy as np
import pytest

from dynalab.envs import DMC15, GYM6, UnknownEnvError, env_spec, list_envs, make_env, registry


# Written out by hand from the papers, not from the code. Gym6: the MuJoCo tasks of the
# original MBPO that Stealing That Free Lunch trains on (Fig 3); DMC15: the fifteen DMC
# tasks of Stealing That Free Lunch (Figs 12 and 14). Sets: order is not part of the claim.
PAPER_GYM6 = {
    "gym:Hopper-v5", "gym:Walker2d-v5", "gym:HalfCheetah-v5", "gym:Ant-v5", "gym:Humanoid-v5",
    "gym:InvertedPendulum-v5",
}
PAPER_DMC15 = {
    "dmc:acrobot-swingup", "dmc:cheetah-run", "dmc:finger-turn_hard", "dmc:fish-swim",
    "dmc:hopper-hop", "dmc:hopper-stand", "dmc:humanoid-run", "dmc:humanoid-stand",
    "dmc:humanoid-walk", "dmc:pendulum-swingup", "dmc:quadruped-run", "dmc:quadruped-walk",
    "dmc:reacher-hard", "dmc:swimmer-swimmer6", "dmc:walker-run",
}


def test_benchmark_lists_are_the_papers_tasks_and_come_first():
    assert len(GYM6) == 6 and set(GYM6) == PAPER_GYM6
    assert len(DMC15) == 15 and set(DMC15) == PAPER_DMC15
    ids = list_envs()
    assert set(ids[:6]) == PAPER_GYM6 and set(ids[6:21]) == PAPER_DMC15
    assert len(ids) == len(set(ids))
    rest = ids[21:]
    assert rest == sorted(rest)


def test_list_envs_holds_other_mujoco_tasks_of_both_suites_only():
    ids = set(list_envs())
    # A hand-picked sample of each suite's other tasks (Gymnasium 1.x, dm_control's suite).
    assert {
        "gym:Swimmer-v5", "gym:Reacher-v5", "gym:Pusher-v5", "gym:HumanoidStandup-v5",
        "gym:InvertedDoublePendulum-v5", "gym:Hopper-v4", "dmc:cartpole-balance",
        "dmc:point_mass-easy", "dmc:lqr-lqr_2_1", "dmc:dog-run", "dmc:manipulator-bring_ball",
    } <= ids
    assert "gym:CartPole-v1" not in ids  # not a MuJoCo task
    assert "gym:Pusher-v4" not in ids  # Gymnasium refuses it with MuJoCo >= 3
    assert all(i.startswith(("gym:", "dmc:")) for i in ids)


def _domain(env_id: str) -> str:
    backend, _, name = env_id.partition(":")
    return f"{backend}:{name.partition('-')[0]}"


def test_one_listed_task_per_domain_builds_and_steps():
    # Every listed id should build; one per domain (27 here, about 20 s) keeps CI short,
    # and each domain shares its model file and adapter path. Gym6 and DMC15 are built
    # by the snapshot tests.
    firsts = {}
    for env_id in list_envs()[len(GYM6) + len(DMC15) :]:
        firsts.setdefault(_domain(env_id), env_id)
    assert len(firsts) >= 20
    for env_id in firsts.values():
        env = make_env(env_id, seed=0)
        obs = env.reset()
        assert obs.shape == (env.spec.obs_dim,) and np.isfinite(obs).all(), env_id
        obs, reward, _, _ = env.step(np.zeros(env.spec.action_dim))
        assert np.isfinite(obs).all() and np.isfinite(reward), env_id
        assert env.get_state().shape == (env.spec.state_dim,), env_id
        env.close()


def test_task_needing_rendering_is_listed_exactly_when_it_builds():
    # Built without the registry's guard, so this checks the guard's probe.
    from dynalab.envs.dmc import DMCEnv

    try:
        DMCEnv("dmc:quadruped-escape", "quadruped", "escape", seed=0).reset()
        builds = True
    except Exception:
        builds = False
    assert ("dmc:quadruped-escape" in list_envs()) == builds


def test_task_needing_rendering_is_refused_in_one_line_without_a_backend(monkeypatch):
    monkeypatch.setattr(registry, "_rendering_error", lambda: "RuntimeError: no backend")
    assert "dmc:quadruped-escape" not in list_envs()
    assert "dmc:quadruped-run" in list_envs()
    with pytest.raises(registry.UnavailableEnvError) as info:
        make_env("dmc:quadruped-escape", seed=0)
    assert isinstance(info.value, UnknownEnvError)  # so every entry point reports it in one line
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("dmc:quadruped-escape cannot be built here: ")
    assert "OpenGL" in message and "RuntimeError: no backend" in message
    assert "MUJOCO_GL=egl" in message and "MUJOCO_GL=osmesa" in message


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
