"""Every consumer of randomness draws from its own stream.

In current JAX `split(k, n)[i] == fold_in(k, i)`, so deriving children of one key both ways
silently makes two consumers draw the same numbers (the review found the rollout start states
equal to a SAC update's minibatch rows, the model's init key equal to the critic's, and all
hooks of one step sharing a key). The test records the key of every draw made by one init, one
update and every hook of one step, as the training loop derives them, and checks that no two
draws share a key and that no key that is drawn from is also used to derive other keys.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynalab.agents.alm import ALMConfig
from dynalab.agents.sac import SACConfig
from dynalab.algos import default_config, make_learner
from dynalab.algos.base import init_key, step_key
from dynalab.envs import env_spec
from dynalab.models.ensemble import ModelConfig
from dynalab.types import Transition

DRAWS = ("uniform", "normal", "randint", "truncated_normal", "bernoulli", "permutation", "choice",
         "categorical", "gumbel", "exponential")
DERIVES = ("split", "fold_in")


def raw(key):
    key = jnp.asarray(key)
    return jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key


def key_bytes(key) -> bytes:
    return np.asarray(raw(key)).tobytes()


@pytest.fixture
def recorder(monkeypatch):
    """Patches jax.random's public draws and derivations to record every key they get.

    The keys are read with jax.debug.callback, so draws inside scan, vmap or jit are seen too.
    """
    drawn, parents = [], set()

    def record(name, key):
        jax.debug.callback(lambda k: drawn.append((name, np.asarray(k).tobytes())), raw(key))

    for name in DRAWS:
        original = getattr(jax.random, name)

        def draw(key, *args, _original=original, _name=name, **kwargs):
            record(_name, key)
            return _original(key, *args, **kwargs)

        monkeypatch.setattr(jax.random, name, draw)
    for name in DERIVES:
        original = getattr(jax.random, name)

        def derive(key, *args, _original=original, **kwargs):
            jax.debug.callback(lambda k: parents.add(np.asarray(k).tobytes()), raw(key))
            return _original(key, *args, **kwargs)

        monkeypatch.setattr(jax.random, name, derive)
    return drawn, parents


CONFIGS = {
    "sac": default_config("sac", reset_agent_every=1),
    "mbpo": default_config("mbpo", reset_agent_every=1, reset_model_every=1, model_refit_every=1),
    "alm": default_config("alm", alm=ALMConfig(latent_dim=3, hidden=4, model_hidden=4)),
}
HOOKS = {"sac": {"diagnostics", "reset_agent"}, "mbpo": {"diagnostics", "reset_agent", "reset_model", "model_fit"},
         "alm": {"diagnostics"}}


@pytest.mark.parametrize("algo", sorted(CONFIGS))
def test_streams_of_one_init_update_and_hooks_are_pairwise_distinct(algo, recorder):
    drawn, parents = recorder
    cfg = dataclasses.replace(
        CONFIGS[algo], env="gym:InvertedPendulum-v5", steps=100, warmup_steps=1, replay_ratio=8, batch_size=4,
        buffer_capacity=16, rollouts_per_step=4, synthetic_retain_steps=2, log_every=1,
        sac=SACConfig(hidden=(4,)), model=ModelConfig(ensemble_size=3, num_elites=2, width=4, depth=1,
                                                      refit_steps=2, batch_size=4, max_holdout=8),
    )
    spec = env_spec(cfg.env)
    learner = make_learner(cfg, spec)
    root = jax.random.PRNGKey(0)
    t = Transition(obs=jnp.ones(spec.obs_dim), action=jnp.zeros(spec.action_dim), reward=jnp.float32(1),
                   next_obs=jnp.ones(spec.obs_dim), discount=jnp.float32(1))
    state = learner.init(init_key(root))
    for _ in range(6):
        state = learner.observe(state, t, True)
    step = 7
    state, _ = learner.update(state, t, True, step_key(root, step, "update"))
    learner.explore(state, t.obs, step_key(root, step, "explore"))
    for hook in learner.hooks:
        state, _ = hook.fn(state, step_key(root, step + 1, f"hook/{hook.name}"))
    jax.effects_barrier()
    assert {h.name for h in learner.hooks} == HOOKS[algo]
    keys = [k for _, k in drawn]
    assert len(drawn) > 10
    repeated = {k for k in keys if keys.count(k) > 1}
    assert not repeated, f"{len(repeated)} keys are drawn from twice: " + ", ".join(
        sorted({n for n, k in drawn if k in repeated}))
    both = {n for n, k in drawn if k in parents}
    assert not both, f"keys both drawn from and split or folded: {both}"


def test_the_recorder_sees_a_collision():
    """The check above can fail: split and fold_in of one key coincide in current JAX."""
    k = jax.random.PRNGKey(3)
    assert key_bytes(jax.random.split(k, 4)[2]) == key_bytes(jax.random.fold_in(k, 2))
