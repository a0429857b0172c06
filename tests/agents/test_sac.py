"""SAC losses against a plain-numpy reimplementation on tiny networks with known weights.

Noise reproduction: the library draws the policy noise as
`jax.random.normal(key, (batch, action_dim))` from exactly the key passed to the loss
(see `tanh_gaussian_sample`); the references below draw the same array with the same
call, convert it to float64 and do everything else in numpy.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynalab.agents import sac
from dynalab.types import Transition

OBS_DIM, ACTION_DIM = 2, 1
CFG = sac.SACConfig(hidden=(3,))
UPDATE = jax.jit(sac.update, static_argnums=0)


def known_params(params, offset: float = 0.0):
    """Same tree as `params`, every leaf replaced by fixed small numbers (2 decimals)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    known = [
        np.round(0.5 * np.sin(np.arange(leaf.size) * 0.7 + i + offset), 2).reshape(leaf.shape)
        for i, leaf in enumerate(leaves)
    ]
    known = [jnp.asarray(x, jnp.float32) for x in known]
    return jax.tree_util.tree_unflatten(treedef, known)


def np64(tree):
    return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), tree)


leaves = jax.tree_util.tree_leaves


def assert_trees_close(a, b, **tol):
    for x, y in zip(leaves(a), leaves(b), strict=True):
        np.testing.assert_allclose(x, y, **tol)


def trees_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b), strict=True))


# --- numpy reference forward passes ---------------------------------------------------


def relu(x):
    return np.maximum(x, 0.0)


def np_actor(p, obs, log_std_min=-10.0, log_std_max=2.0):
    p = np64(p)["params"]
    h = relu(obs @ p["trunk"]["Dense_0"]["kernel"] + p["trunk"]["Dense_0"]["bias"])
    mean = h @ p["mean"]["kernel"] + p["mean"]["bias"]
    raw = h @ p["log_std"]["kernel"] + p["log_std"]["bias"]
    log_std = log_std_min + (log_std_max - log_std_min) * (np.exp(2 * raw) / (np.exp(2 * raw) + 1))
    return mean, log_std


def np_layernorm(x, scale, bias, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * scale + bias


def np_double_q(p, obs, action, layernorm=False):
    """Returns (2, B): the two critics evaluated one after another."""
    p = np64(p)["params"]["qs"]
    x = np.concatenate([obs, action], axis=-1)
    qs = []
    for i in range(2):
        h = x @ p["trunk"]["Dense_0"]["kernel"][i] + p["trunk"]["Dense_0"]["bias"][i]
        if layernorm:
            h = np_layernorm(h, p["trunk"]["LayerNorm_0"]["scale"][i], p["trunk"]["LayerNorm_0"]["bias"][i])
        h = relu(h)
        qs.append((h @ p["out"]["kernel"][i] + p["out"]["bias"][i])[:, 0])
    return np.stack(qs)


def np_sample(mean, log_std, noise):
    """tanh-Gaussian sample and log-prob with the naive-but-float64 Jacobian via log cosh."""
    u = mean + np.exp(log_std) * noise
    log_normal = -0.5 * noise**2 - log_std - 0.5 * np.log(2 * np.pi)
    log_cosh = np.logaddexp(u, -u) - np.log(2.0)  # -log(1 - tanh^2 u) = 2 log cosh u
    return np.tanh(u), (log_normal + 2 * log_cosh).sum(-1)


def noise_for(key, batch_size):
    return np.asarray(jax.random.normal(key, (batch_size, ACTION_DIM)), np.float64)


# --- fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def state():
    s = sac.init(jax.random.key(0), OBS_DIM, ACTION_DIM, CFG)
    return s.replace(
        actor_params=known_params(s.actor_params),
        critic_params=known_params(s.critic_params, offset=0.3),
        target_critic_params=known_params(s.critic_params, offset=1.1),
    )


BATCH = Transition(
    obs=jnp.array([[0.5, -1.0], [1.2, 0.3], [-0.7, 0.8]]),
    action=jnp.array([[0.2], [-0.6], [0.9]]),
    reward=jnp.array([1.0, -0.5, 0.25]),
    next_obs=jnp.array([[0.4, -0.9], [1.0, 0.6], [-0.2, 1.5]]),
    discount=jnp.array([1.0, 0.0, 1.0]),  # the middle transition terminated
)


def random_batch(key, n=16):
    k = jax.random.split(key, 5)
    return Transition(
        obs=jax.random.normal(k[0], (n, OBS_DIM)),
        action=jax.random.uniform(k[1], (n, ACTION_DIM), minval=-1, maxval=1),
        reward=jax.random.normal(k[2], (n,)),
        next_obs=jax.random.normal(k[3], (n, OBS_DIM)),
        discount=(jax.random.uniform(k[4], (n,)) > 0.2).astype(jnp.float32),
    )


# --- losses ---------------------------------------------------------------------------


def test_known_params_reach_the_forward_pass(state):
    # Guards the reference itself: the library's forward pass equals the numpy one.
    obs = np.asarray(BATCH.obs, np.float64)
    mean, _ = np_actor(state.actor_params, obs)
    greedy = sac.greedy_action(CFG, state.actor_params, BATCH.obs)
    np.testing.assert_allclose(greedy, np.tanh(mean), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        sac.q_values(CFG, state.critic_params, BATCH.obs, BATCH.action),
        np_double_q(state.critic_params, obs, np.asarray(BATCH.action, np.float64)),
        rtol=1e-6,
        atol=1e-6,
    )


@pytest.mark.parametrize("alpha", [0.0, 0.7])
def test_critic_loss_matches_numpy(state, alpha):
    key = jax.random.key(42)
    loss, aux = sac.critic_loss(
        CFG, state.critic_params, state.target_critic_params, state.actor_params, alpha, BATCH, key
    )

    b = np64(BATCH)
    mean, log_std = np_actor(state.actor_params, b.next_obs)
    next_a, next_logp = np_sample(mean, log_std, noise_for(key, 3))
    next_q = np_double_q(state.target_critic_params, b.next_obs, next_a).min(0)
    y = b.reward + 0.99 * b.discount * (next_q - alpha * next_logp)
    q = np_double_q(state.critic_params, b.obs, b.action)
    expected = np.mean((q[0] - y) ** 2) + np.mean((q[1] - y) ** 2)

    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(aux["q/mean_batch"], q.mean(), rtol=1e-5, atol=1e-5)


def test_critic_target_is_not_differentiated(state):
    # With stop-gradient on y, the gradient is the plain regression gradient 2 (Q - y) dQ.
    key = jax.random.key(1)

    def loss(critic, target, actor):
        return sac.critic_loss(CFG, critic, target, actor, 0.5, BATCH, key)[0]

    _, grad_target, grad_actor = jax.grad(loss, argnums=(0, 1, 2))(
        state.critic_params, state.target_critic_params, state.actor_params
    )
    for g in leaves((grad_target, grad_actor)):
        np.testing.assert_array_equal(g, 0.0)


@pytest.mark.parametrize("log_std_bias", [None, 30.0])  # 30 saturates the tanh squash at log_std = 2
def test_actor_loss_matches_numpy(state, log_std_bias):
    actor_params = state.actor_params
    if log_std_bias is not None:
        actor_params = jax.tree_util.tree_map(lambda x: x, actor_params)
        actor_params["params"]["log_std"]["bias"] = jnp.full((ACTION_DIM,), log_std_bias)
    key, alpha = jax.random.key(7), 0.37
    loss, aux = sac.actor_loss(CFG, actor_params, state.critic_params, alpha, BATCH.obs, key)

    obs = np.asarray(BATCH.obs, np.float64)
    mean, log_std = np_actor(actor_params, obs)
    if log_std_bias is not None:
        assert np.all(log_std == 2.0)
    a, logp = np_sample(mean, log_std, noise_for(key, 3))
    q = np_double_q(state.critic_params, obs, a).min(0)
    np.testing.assert_allclose(loss, np.mean(alpha * logp - q), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(aux["sac/entropy"], -logp.mean(), rtol=1e-5, atol=1e-5)


def test_actor_loss_gradient_ignores_alpha(state):
    def loss(alpha):
        return sac.actor_loss(CFG, state.actor_params, state.critic_params, alpha, BATCH.obs, jax.random.key(0))[0]

    g = jax.grad(loss)(0.5)
    assert g == 0.0


def test_temperature_loss_by_hand():
    log_alpha, entropy, target = 0.3, 1.2, -0.5
    loss, aux = sac.temperature_loss(jnp.float32(log_alpha), jnp.float32(entropy), target)
    np.testing.assert_allclose(loss, np.exp(0.3) * 1.7, rtol=1e-6)
    np.testing.assert_allclose(aux["sac/temperature"], np.exp(0.3), rtol=1e-6)
    # d/dlog_alpha [exp(log_alpha) (H - target)] = exp(log_alpha) (H - target); none flows into H.
    g_la, g_h = jax.grad(lambda la, h: sac.temperature_loss(la, h, target)[0], argnums=(0, 1))(
        jnp.float32(log_alpha), jnp.float32(entropy)
    )
    np.testing.assert_allclose(g_la, np.exp(0.3) * 1.7, rtol=1e-6)
    assert g_h == 0.0


def test_critic_layernorm_forward_matches_numpy():
    cfg = sac.SACConfig(hidden=(3,), critic_layernorm=True)
    params = known_params(sac.init(jax.random.key(0), OBS_DIM, ACTION_DIM, cfg).critic_params, offset=0.5)
    got = sac.q_values(cfg, params, BATCH.obs, BATCH.action)
    b = np64(BATCH)
    expected = np_double_q(params, b.obs, b.action, layernorm=True)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


# --- init / acting --------------------------------------------------------------------


def test_init_shapes_and_independent_critics():
    s = sac.init(jax.random.key(0), OBS_DIM, ACTION_DIM, CFG)
    q = sac.q_values(CFG, s.critic_params, BATCH.obs, BATCH.action)
    assert q.shape == (2, 3)
    assert not np.allclose(q[0], q[1])  # the two critics got different init keys
    for a, b in zip(jax.tree_util.tree_leaves(s.critic_params), jax.tree_util.tree_leaves(s.target_critic_params)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(jnp.exp(s.log_alpha), 1.0)


def test_actions_shapes_and_range(state):
    key = jax.random.key(0)
    single = sac.sample_action(CFG, state.actor_params, BATCH.obs[0], key)
    batch = sac.sample_action(CFG, state.actor_params, BATCH.obs, key)
    assert single.shape == (ACTION_DIM,) and batch.shape == (3, ACTION_DIM)
    assert sac.greedy_action(CFG, state.actor_params, BATCH.obs[0]).shape == (ACTION_DIM,)
    assert np.all(np.abs(batch) < 1.0)


# --- update ---------------------------------------------------------------------------


def perturbed_target_state(seed=0):
    s = sac.init(jax.random.key(seed), OBS_DIM, ACTION_DIM, CFG)
    # Make target != online so the Polyak check is not trivially satisfied.
    return s.replace(target_critic_params=jax.tree_util.tree_map(lambda x: x + 0.1, s.critic_params))


def test_update_polyak_order_and_metrics():
    s = perturbed_target_state()
    batch, key = random_batch(jax.random.key(1)), jax.random.key(2)
    new, m = UPDATE(CFG, s, batch, key)

    expected_target = jax.tree_util.tree_map(
        lambda t, c: 0.995 * t + 0.005 * c, s.target_critic_params, new.critic_params
    )
    assert_trees_close(new.target_critic_params, expected_target, rtol=1e-6, atol=1e-7)

    for before, after in [(s.actor_params, new.actor_params), (s.critic_params, new.critic_params)]:
        assert all(not np.allclose(a, b) for a, b in zip(leaves(before), leaves(after)))
    assert new.log_alpha != s.log_alpha

    # Pin the documented key split and the ordering: the actor sees the *updated* critic.
    critic_key, actor_key = jax.random.split(key)
    alpha = jnp.exp(s.log_alpha)
    c_loss, c_aux = sac.critic_loss(
        CFG, s.critic_params, s.target_critic_params, s.actor_params, alpha, batch, critic_key
    )
    a_new, a_aux = sac.actor_loss(CFG, s.actor_params, new.critic_params, alpha, batch.obs, actor_key)
    a_old, _ = sac.actor_loss(CFG, s.actor_params, s.critic_params, alpha, batch.obs, actor_key)
    t_loss, _ = sac.temperature_loss(s.log_alpha, a_aux["sac/entropy"], -0.5 * ACTION_DIM)
    np.testing.assert_allclose(m["loss/critic"], c_loss, rtol=1e-5)
    np.testing.assert_allclose(m["q/mean_batch"], c_aux["q/mean_batch"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m["loss/actor"], a_new, rtol=1e-5)
    assert not np.isclose(m["loss/actor"], a_old, rtol=1e-5)
    np.testing.assert_allclose(m["sac/entropy"], a_aux["sac/entropy"], rtol=1e-5)
    np.testing.assert_allclose(m["loss/temperature"], t_loss, rtol=1e-5)
    np.testing.assert_allclose(m["sac/temperature"], 1.0)
    assert set(m) == {
        "loss/critic", "loss/actor", "loss/temperature", "sac/temperature", "sac/entropy", "q/mean_batch"
    }


def test_first_step_is_adam_with_config_eps():
    # Adam's bias-corrected first step is exactly -lr * g / (|g| + eps).
    s = perturbed_target_state()
    batch, key = random_batch(jax.random.key(1)), jax.random.key(2)
    new, _ = UPDATE(CFG, s, batch, key)
    critic_key, _ = jax.random.split(key)
    grads = jax.grad(
        lambda c: sac.critic_loss(CFG, c, s.target_critic_params, s.actor_params, 1.0, batch, critic_key)[0]
    )(s.critic_params)
    expected = jax.tree_util.tree_map(lambda p, g: p - 3e-4 * g / (jnp.abs(g) + 1.5e-4), s.critic_params, grads)
    assert_trees_close(new.critic_params, expected, rtol=1e-6, atol=1e-7)


# atanh(2/3) squashes to log_std = 0 (std 1, high entropy); -30 to log_std = -10.
@pytest.mark.parametrize("log_std_bias, direction", [(float(np.arctanh(2 / 3)), -1), (-30.0, +1)])
def test_temperature_moves_toward_target_entropy(log_std_bias, direction):
    # Entropy above -|A|/2 must lower alpha; a near-deterministic policy must raise it.
    s = sac.init(jax.random.key(0), OBS_DIM, ACTION_DIM, CFG)
    actor = jax.tree_util.tree_map(lambda x: x, s.actor_params)
    actor["params"]["log_std"]["kernel"] = jnp.zeros_like(actor["params"]["log_std"]["kernel"])
    actor["params"]["log_std"]["bias"] = jnp.full((ACTION_DIM,), log_std_bias)
    s = s.replace(actor_params=actor)
    new, m = UPDATE(CFG, s, random_batch(jax.random.key(1)), jax.random.key(2))
    assert np.sign(float(m["sac/entropy"]) - (-0.5 * ACTION_DIM)) == -direction
    assert np.sign(float(new.log_alpha - s.log_alpha)) == direction


def test_update_vmaps_over_seeds():
    n = 3
    keys = jax.random.split(jax.random.key(0), n)
    states = jax.vmap(lambda k: sac.init(k, OBS_DIM, ACTION_DIM, CFG))(keys)
    batches = jax.vmap(random_batch)(jax.random.split(jax.random.key(1), n))
    step_keys = jax.random.split(jax.random.key(2), n)
    vmapped = jax.jit(jax.vmap(sac.update, in_axes=(None, 0, 0, 0)), static_argnums=0)
    new, m = vmapped(CFG, states, batches, step_keys)
    assert m["loss/critic"].shape == (n,)
    for i in range(n):
        pick = lambda tree: jax.tree_util.tree_map(lambda x: x[i], tree)  # noqa: E731
        single, m_i = UPDATE(CFG, pick(states), pick(batches), step_keys[i])
        assert_trees_close(single, pick(new), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(m_i["loss/critic"], m["loss/critic"][i], rtol=1e-5)


def test_reset_replaces_only_selected_parts():
    s, _ = UPDATE(CFG, perturbed_target_state(), random_batch(jax.random.key(1)), jax.random.key(2))
    fresh = sac.init(jax.random.key(9), OBS_DIM, ACTION_DIM, CFG)
    r = sac.reset(CFG, s, jax.random.key(9), actor=False)
    assert trees_equal((r.actor_params, r.actor_opt_state), (s.actor_params, s.actor_opt_state))
    without_actor = dict(actor_params=None, actor_opt_state=None)
    assert trees_equal(r.replace(**without_actor), fresh.replace(**without_actor))
    assert not trees_equal(s.critic_params, fresh.critic_params)
    assert trees_equal(sac.reset(CFG, s, jax.random.key(9)), fresh)
