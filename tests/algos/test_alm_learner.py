"""ALM and ALM without Dyna as learners: defaults, capacity, schedule, readiness, seeds in a batch.

The maths of one ALM update is tested against numpy in tests/agents/test_alm.py and sequence
sampling in tests/test_sequences.py; resume is covered by tests/test_resume.py and the random
streams by tests/algos/test_random_streams.py. Here: what the learner adds around them.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynalab.agents.alm import ALMConfig
from dynalab.algos import default_config, make_learner
from dynalab.algos.base import MEASURED, init_key, step_key
from dynalab.config import ConfigError, ignored_settings, validate
from dynalab.envs import env_spec
from dynalab.metrics import read
from dynalab.train import train
from dynalab.types import Transition

import tiny_configs

TINY = tiny_configs.ALM  # std_duration 10
TINY_ALM = TINY.alm


def test_algo_defaults_are_stfl_table_3():
    for algo in ("alm", "alm-nodyna"):
        cfg = default_config(algo)
        assert (cfg.replay_ratio, cfg.batch_size, cfg.warmup_steps) == (1, 512, 5_000)
        assert cfg.alm == ALMConfig()


@pytest.mark.parametrize("env, steps, capacity", [
    ("dmc:humanoid-stand", 2_000_000, 1_000_000),
    ("gym:Humanoid-v5", 300_000, 300_000),  # capped at the run length
    ("dmc:cheetah-run", 500_000, 100_000),
    ("gym:HalfCheetah-v5", 30_000, 30_000),
])
def test_replay_capacity_is_1e6_on_humanoid_else_1e5_capped_at_the_run(env, steps, capacity):
    assert default_config("alm", env=env, steps=steps).capacity == capacity
    assert default_config("alm", env=env, steps=steps, buffer_capacity=123).capacity == 123
    assert default_config("sac", env=env, steps=2_000_000).capacity == 1_000_000


@pytest.mark.parametrize("change, words", [
    (dict(reset_agent_every=10), "--reset-agent-every"),
    (dict(perfect_model=True), "--perfect-model"),
    (dict(sweep_field="sac.tau", sweep_values=(0.1,)), "does not use sac.tau"),
    (dict(alm=dataclasses.replace(TINY_ALM, horizon=0)), "--alm.horizon"),
    (dict(alm=dataclasses.replace(TINY_ALM, horizon=1_001)), "cannot exceed the buffer capacity"),
    (dict(alm=dataclasses.replace(TINY_ALM, std_start=0.05)), r"--alm.std-start \(0.05\) must be >= --alm.std-end"),
])
def test_settings_alm_does_not_have_are_refused(change, words):
    with pytest.raises(ConfigError, match=words):
        validate(dataclasses.replace(TINY, **change), ["alm", "alm-nodyna"])


def test_settings_an_algorithm_never_reads_are_named():
    sac = dataclasses.replace(TINY.sac, tau=0.1)
    assert ignored_settings(dataclasses.replace(TINY, sac=sac, synthetic_ratio=0.5)) == ["--sac.tau",
                                                                                         "--synthetic-ratio"]
    assert ignored_settings(TINY) == []
    assert ignored_settings(default_config("mbpo", alm=TINY_ALM)) == ["--alm.hidden", "--alm.latent-dim",
                                                                      "--alm.model-hidden", "--alm.std-duration"]
    assert ignored_settings(default_config("mbpo", synthetic_ratio=0.5)) == []


def transition(spec, value):
    return Transition(obs=jnp.full(spec.obs_dim, value, jnp.float32), action=jnp.zeros(spec.action_dim),
                      reward=jnp.float32(value), next_obs=jnp.full(spec.obs_dim, value + 1, jnp.float32),
                      discount=jnp.float32(1))


def test_schedule_counts_updates_and_nothing_learns_before_a_sequence_exists():
    """sigma(t) = 0.1 + 0.9 (1 - min(t / 10, 1)) with t the update count: after updates 1, 2, 3
    the learning-side std is 0.91, 0.82, 0.73 (hand values). With K = 3, the first two stored
    rows cannot form a sequence: those updates change nothing and log nothing."""
    cfg = dataclasses.replace(TINY, warmup_steps=0, replay_ratio=1)
    spec = env_spec(cfg.env)
    learner = make_learner(cfg, spec)
    root = jax.random.PRNGKey(0)
    update = jax.jit(learner.update)
    state = learner.init(init_key(root))
    stds = []
    for step in range(5):
        before = state
        state, metrics = update(state, transition(spec, step), jnp.bool_(True), step_key(root, step, "update"))
        ready = bool(metrics[MEASURED]["loss/actor"])
        assert ready == (step >= 2)  # rows 0, 1, 2 of one episode make the first sequence
        if not ready:
            assert int(state.updates) == 0
            for a, b in zip(jax.tree.leaves(state.agent), jax.tree.leaves(before.agent)):
                np.testing.assert_array_equal(a, b)
        else:
            stds.append(float(metrics["explore/std"]))
    assert int(state.updates) == 3
    np.testing.assert_allclose(stds, [0.91, 0.82, 0.73], rtol=1e-6)


def test_replay_ratio_counts_every_update():
    cfg = dataclasses.replace(TINY, warmup_steps=0, replay_ratio=3)
    spec = env_spec(cfg.env)
    learner = make_learner(cfg, spec)
    root = jax.random.PRNGKey(1)
    state = learner.init(init_key(root))
    for step in range(3):
        state = learner.observe(state, transition(spec, step), jnp.bool_(True))
    state, metrics = learner.update(state, transition(spec, 3), jnp.bool_(True), step_key(root, 3, "update"))
    assert int(state.updates) == 3
    # The logged std is the mean over the step's three updates: sigma(1), sigma(2), sigma(3).
    np.testing.assert_allclose(float(metrics["explore/std"]), (0.91 + 0.82 + 0.73) / 3, rtol=1e-6)


def learning_rows(path):
    return {r[:3]: r[3] for r in read(path) if not r[2].startswith("time/")}


def test_seed_inside_a_batch_matches_it_alone(tmp_path):
    """ALM; ALM without Dyna differs only in the actor loss (tests/agents/test_alm.py)."""
    cfg = TINY
    train(dataclasses.replace(cfg, seeds=2), tmp_path / "two", progress=False)
    train(dataclasses.replace(cfg, seed=1), tmp_path / "alone", progress=False)
    alone = learning_rows(tmp_path / "alone" / "metrics.csv")
    batch = {k: v for k, v in learning_rows(tmp_path / "two" / "metrics.csv").items() if k[1] == 1}
    names = {k[2] for k in alone}
    assert alone.keys() == batch.keys()
    assert {"loss/model_kl", "loss/critic", "q/mean_real", "explore/std", "eval/return"} <= names
    assert "q/mean_imagined" in names
    keys = sorted(k for k in alone if k[2] != "eval/return")
    np.testing.assert_allclose([batch[k] for k in keys], [alone[k] for k in keys], rtol=1e-3, atol=1e-4)
    # A terminating task: an episode's return is its length, which a rounding-sized action
    # difference can change by one step.
    evals = sorted(k for k in alone if k[2] == "eval/return")
    np.testing.assert_allclose([batch[k] for k in evals], [alone[k] for k in evals], atol=1.0)
