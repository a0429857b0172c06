"""MBPO/FTFL: composition with SAC, rollouts, the perfect model, seed independence."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynalab.agents.sac import SACConfig
from dynalab.algos import default_config, make_learner
from dynalab.algos.mbpo import rollout_horizon
from dynalab.envs import DMC15, GYM6, env_spec, make_env
from dynalab.metrics import read
from dynalab.models.ensemble import ModelConfig
from dynalab.models.perfect import Simulator
from dynalab.train import train
from dynalab.types import Transition, bits_state, state_bits

TINY_MODEL = ModelConfig(width=16, depth=2, refit_steps=20, batch_size=32, max_holdout=64)
TINY = default_config(
    "mbpo",
    env="gym:InvertedPendulum-v5",
    steps=240,
    warmup_steps=100,
    replay_ratio=2,
    batch_size=32,
    eval_every=120,
    eval_episodes=2,
    log_every=60,
    rollouts_per_step=8,
    synthetic_retain_steps=50,
    model_refit_every=60,
    sac=SACConfig(hidden=(32, 32)),
    model=TINY_MODEL,
)


def learning_rows(path, rename=None):
    rename = rename or {}
    return {(s, k, rename.get(m, m)): v for s, k, m, v in read(path) if not m.startswith("time/")}


def test_synthetic_ratio_zero_reproduces_sac(tmp_path):
    train(dataclasses.replace(TINY, synthetic_ratio=0.0), tmp_path / "mbpo", progress=False)
    train(dataclasses.replace(TINY, algo="sac"), tmp_path / "sac", progress=False)
    mbpo = learning_rows(tmp_path / "mbpo" / "metrics.csv")
    sac = learning_rows(tmp_path / "sac" / "metrics.csv")
    shared = {k for k in sac if k[2].startswith(("loss/", "sac/", "eval/", "train/", "q/", "reward/"))}
    assert {"q/mean_real", "q/mean_batch", "reward/mean_real"} <= {k[2] for k in shared}
    assert len(shared) > 20
    # The learning curves are identical number for number: S = 0 is SAC, and every metric the
    # two share (Q on real data included) is the same measurement.
    assert {k: mbpo[k] for k in shared} == {k: sac[k] for k in shared}


def test_rollouts_branch_from_real_states_and_respect_termination():
    cfg = dataclasses.replace(TINY, rollouts_per_step=64, synthetic_retain_steps=4)
    spec = env_spec(cfg.env)
    learner = make_learner(cfg, spec)
    state = learner.init(jax.random.PRNGKey(0))
    # Real data from the real env, including states about to fall over.
    env, rng = make_env(cfg.env, 0), np.random.default_rng(0)
    obs = env.reset()
    for _ in range(200):
        a = rng.uniform(-1, 1, spec.action_dim).astype(np.float32)
        o2, r, term, trunc = env.step(a)
        t = Transition(obs=obs, action=a, reward=np.float32(r), next_obs=o2, discount=np.float32(not term))
        state = learner.observe(state, jax.tree.map(jnp.asarray, t), True)
        obs = env.reset() if term or trunc else o2
    fit = next(h for h in learner.hooks if h.name == "model_fit")
    state, _ = jax.jit(fit.fn)(state, jax.random.PRNGKey(1))
    state, metrics = jax.jit(learner.update)(state, jax.tree.map(jnp.asarray, t), True, jax.random.PRNGKey(2))
    syn = state.synthetic
    assert int(syn.size) == 64 and syn.data.obs.shape == (64 * 4, spec.obs_dim)
    rows = jax.tree.map(lambda x: np.asarray(x[:64]), syn.data)
    real_obs = np.asarray(state.sac.buffer.data.obs[: int(state.sac.buffer.size)])
    # Every rollout starts from a stored real state.
    assert all((real_obs == o).all(axis=1).any() for o in rows.obs)
    assert np.all(np.abs(rows.action) <= 1)
    # Gymnasium's InvertedPendulum-v5 rule, written out here: the episode ends once the pole
    # angle (observation 1) leaves [-0.2, 0.2] or the state is not finite.
    expected_done = ~(np.isfinite(rows.next_obs).all(axis=1) & (np.abs(rows.next_obs[:, 1]) <= 0.2))
    np.testing.assert_array_equal(rows.discount, 1.0 - expected_done)
    assert expected_done.any() and not expected_done.all()  # random data makes some rollouts fall
    assert np.isfinite(rows.next_obs).all() and np.isfinite(rows.reward).all()
    assert float(metrics["rollout/horizon"]) == 1.0


def test_horizon_schedule_is_linear_between_its_ends():
    cfg = dataclasses.replace(TINY, horizon_schedule=(1000, 5000, 1, 5))
    hs = [int(rollout_horizon(cfg, jnp.int32(s))) for s in (0, 1000, 2000, 3000, 4999, 5000, 9000)]
    assert hs == [1, 1, 2, 3, 4, 5, 5]
    assert int(rollout_horizon(TINY, jnp.int32(123))) == 1


def test_multi_step_rollouts_stop_at_termination():
    cfg = dataclasses.replace(TINY, rollouts_per_step=32, rollout_horizon=3, synthetic_retain_steps=2)
    learner = make_learner(cfg, env_spec(cfg.env))
    state = learner.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    for _ in range(50):  # far-from-upright states: rollouts terminate early
        o = rng.normal(0, 0.3, 4).astype(np.float32)
        t = Transition(obs=o, action=np.zeros(1, np.float32), reward=np.float32(1), next_obs=o, discount=np.float32(1))
        state = learner.observe(state, jax.tree.map(jnp.asarray, t), True)
    fit = next(h for h in learner.hooks if h.name == "model_fit")
    state, _ = jax.jit(fit.fn)(state, jax.random.PRNGKey(1))
    state, _ = jax.jit(learner.update)(state, jax.tree.map(jnp.asarray, t), True, jax.random.PRNGKey(3))
    n = int(state.synthetic.size)
    data = jax.tree.map(lambda x: np.asarray(x[:n]), state.synthetic.data)
    # Stored step by step: 32 first steps, then the survivors' second steps, then third steps,
    # each continuing from the previous step's next state, in order.
    start, alive = 0, np.arange(32)
    for _ in range(3):
        rows = slice(start, start + len(alive))
        if start:
            np.testing.assert_array_equal(data.obs[rows], prev_next[~prev_done])
        prev_next, prev_done = data.next_obs[rows], data.discount[rows] == 0
        start, alive = start + len(alive), alive[~prev_done]
    assert start == n and 32 < n < 96  # some rollouts terminated early, some went on


@pytest.mark.parametrize("env_id", GYM6 + DMC15)
def test_perfect_model_transition_equals_the_real_environment(env_id):
    spec = env_spec(env_id)
    env, rng = make_env(env_id, 3), np.random.default_rng(1)
    env.reset()
    states, actions, expected = [], [], []
    for _ in range(6):
        a = rng.uniform(-1, 1, spec.action_dim).astype(np.float32)  # as the policy emits
        states.append(env.get_state())
        o, r, term, _ = env.step(a)
        actions.append(a)
        expected.append((o, r, term))
        if term:
            break
    sim = Simulator(spec)
    bits = jnp.asarray(state_bits(np.stack(states)))
    next_obs, reward, terminated, _, valid = jax.jit(sim.step)(bits, jnp.asarray(np.stack(actions)))
    assert np.asarray(valid).all()
    np.testing.assert_array_equal(np.asarray(next_obs), np.stack([e[0] for e in expected]))
    np.testing.assert_array_equal(np.asarray(reward), np.array([e[1] for e in expected], np.float32))
    np.testing.assert_array_equal(np.asarray(terminated), [e[2] for e in expected])


@pytest.mark.parametrize("env_id", ["gym:Hopper-v5", "dmc:hopper-stand"])
def test_perfect_model_drops_a_diverging_restored_state(env_id):
    """A restored state with a huge velocity diverges: no transition, and no traceback."""
    spec = env_spec(env_id)
    env = make_env(env_id, 0)
    env.reset()
    good = env.get_state()
    bad = good.copy()
    bad[1 + env.model.nq: 1 + env.model.nq + env.model.nv] = 1e12  # [time, qpos, qvel, ...] (MuJoCo order)
    sim = Simulator(spec)
    bits = jnp.asarray(state_bits(np.stack([good, bad])))
    next_obs, reward, terminated, _, valid = jax.jit(sim.step)(bits, jnp.zeros((2, spec.action_dim)))
    np.testing.assert_array_equal(np.asarray(valid), [True, False])
    env.set_state(good)
    o, r, _, _ = env.step(np.zeros(spec.action_dim, np.float32))
    np.testing.assert_array_equal(np.asarray(next_obs[0]), o)


def test_perfect_model_rollouts_are_real_simulator_steps(tmp_path):
    """Every synthetic transition equals the real env stepped from the stored state it branched from."""
    from dynalab.train import Trainer

    cfg = dataclasses.replace(TINY, perfect_model=True, steps=130, rollouts_per_step=16)
    trainer = Trainer(cfg)
    try:
        while trainer.env_step < 103:
            trainer.step()
        real = jax.tree.map(lambda x: np.asarray(x[0]), trainer.state.sac.buffer)
        syn = jax.tree.map(lambda x: np.asarray(x[0]), trainer.state.synthetic)
    finally:
        trainer.close()
    n_real, n_syn = int(real.size), int(syn.size)
    assert n_syn == 3 * 16
    env = make_env(cfg.env, 0)
    env.reset()
    for i in range(n_syn):
        o, a = syn.data.obs[i], syn.data.action[i]
        j = int(np.flatnonzero((real.data.obs[:n_real] == o).all(axis=1))[0])  # the state it branched from
        env.set_state(bits_state(real.data.sim_state[j]))
        o2, r, term, _ = env.step(a)
        np.testing.assert_array_equal(syn.data.next_obs[i], o2)
        assert syn.data.reward[i] == np.float32(r) and syn.data.discount[i] == float(not term)


def test_seed_inside_a_batch_matches_it_alone(tmp_path):
    cfg = dataclasses.replace(TINY, algo="ftfl", model=dataclasses.replace(TINY_MODEL, target_norm=True,
                                                                            direct_next_state=True))
    train(dataclasses.replace(cfg, seeds=2), tmp_path / "two", progress=False)
    train(dataclasses.replace(cfg, seed=1), tmp_path / "alone", progress=False)
    alone = learning_rows(tmp_path / "alone" / "metrics.csv")
    batch = {k: v for k, v in learning_rows(tmp_path / "two" / "metrics.csv").items() if k[1] == 1}
    assert alone.keys() == batch.keys() and any(k[2] == "model/pct_error" for k in alone)
    keys = sorted(alone)
    np.testing.assert_allclose([batch[k] for k in keys], [alone[k] for k in keys], rtol=1e-3, atol=1e-4)


def test_synthetic_window_follows_the_horizon_schedule():
    """MBPO's model pool: rollouts_per_step x retain x current horizon rows, by hand."""
    from dynalab.algos.mbpo import synthetic_window

    cfg = dataclasses.replace(TINY, rollouts_per_step=400, synthetic_retain_steps=1000,
                              horizon_schedule=(20_000, 100_000, 1, 15))
    assert cfg.synthetic_capacity == 400 * 1000 * 15
    assert int(synthetic_window(cfg, jnp.int32(0))) == 400_000  # horizon 1: not 15x more stale rows
    assert int(synthetic_window(cfg, jnp.int32(60_000))) == 400 * 1000 * 8
    assert int(synthetic_window(cfg, jnp.int32(200_000))) == 6_000_000
    assert int(synthetic_window(TINY, jnp.int32(5))) == 8 * 50
