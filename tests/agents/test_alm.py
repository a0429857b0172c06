"""ALM (dynalab.agents.alm) against independent references, on tiny networks with known weights.

References: closed forms worked out by hand (Gaussian head, KL, lambda-returns, exploration
schedule) and plain-numpy float64 forward passes of every net. Noise reproduction: the library
draws each noise array as `jax.random.normal(k, shape)` from the key its docstrings name
(`stream(key, name)`); the references draw the same arrays with the same calls, convert them to
float64 and do everything else in numpy.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynalab.agents import alm
from dynalab.algos.base import stream
from dynalab.types import Transition

OBS, ACT, Z, B = 4, 2, 3, 8
# max_grad_norm is tiny so that every group's gradient is clipped (checked through Adam's state);
# lr is large so that the nets one update changes differ visibly from their old selves.
CFG = alm.ALMConfig(latent_dim=Z, hidden=4, model_hidden=5, max_grad_norm=1e-3, lr=0.1)
leaves = jax.tree_util.tree_leaves


class quick_jit:  # noqa: N801
    """jax.jit without XLA's backend optimisations, one compile per argument signature.

    These tiny programs run in milliseconds either way; optimisation level 0 only cuts their
    compile time (a third of this file's on 2 CPU cores).
    """

    def __init__(self, f):
        self.jitted, self.compiled = jax.jit(f), {}

    def __call__(self, *args):
        sig = (jax.tree_util.tree_structure(args), tuple(repr(jax.typeof(x)) for x in leaves(args)))
        if sig not in self.compiled:
            self.compiled[sig] = self.jitted.lower(*args).compile({"xla_backend_optimization_level": 0})
        return self.compiled[sig](*args)


# The library's losses, compiled once each and shared by the tests below.
MODEL_LOSS = quick_jit(lambda *a: alm.model_loss(CFG, *a))
REWARD_LOSS = quick_jit(lambda *a: alm.reward_classifier_loss(CFG, *a))
CRITIC_LOSS = quick_jit(lambda *a: alm.critic_loss(CFG, *a))
ALM_ACTOR_LOSS = quick_jit(lambda *a: alm.alm_actor_loss(CFG, *a))
NODYNA_ACTOR_LOSS = quick_jit(lambda *a: alm.nodyna_actor_loss(CFG, *a))
ENCODE = quick_jit(lambda *a: alm.encode(CFG, *a))
CLASSIFIER_REWARD = quick_jit(lambda *a: alm.classifier_reward(CFG, *a))
GREEDY = quick_jit(lambda *a: alm.greedy_action(CFG, *a))
EXPLORE = quick_jit(lambda *a: alm.explore_action(CFG, *a))


def known(tree, offset=0.0):
    """Same tree, every leaf replaced by fixed numbers in [-0.5, 0.5] (2 decimals)."""
    flat, treedef = jax.tree_util.tree_flatten(tree)
    vals = [np.round(0.5 * np.sin(np.arange(math.prod(x.shape)) * 0.7 + i + offset), 2).reshape(x.shape)
            for i, x in enumerate(flat)]
    return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(v, jnp.float32) for v in vals])


SHAPES = jax.eval_shape(lambda k: alm.init(k, OBS, ACT, CFG), jax.random.key(0))


@pytest.fixture(scope="module")
def state():
    """A state with known weights (targets differ from the online nets); shapes from alm.init."""
    shapes = SHAPES
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)  # fresh Adam states are zeros
    return zeros.replace(**{f: known(getattr(shapes, f), i) for i, f in enumerate(
        ("encoder_params", "model_params", "reward_params", "classifier_params", "critic_params", "actor_params"))},
        target_encoder_params=known(shapes.encoder_params, 0.4),
        target_critic_params=known(shapes.critic_params, 1.3))


def batch(key, shape=(B,)):
    k = [stream(key, n) for n in ("o", "a", "r", "n", "d")]
    return Transition(
        obs=jax.random.normal(k[0], (*shape, OBS)),
        action=jax.random.uniform(k[1], (*shape, ACT), minval=-1, maxval=1),
        reward=jax.random.normal(k[2], shape),
        next_obs=jax.random.normal(k[3], (*shape, OBS)),
        discount=(jax.random.uniform(k[4], shape) > 0.25).astype(jnp.float32),
    )


TRANS = batch(jax.random.key(10))
SEQS = batch(jax.random.key(11), (B, CFG.horizon))


# --- numpy references -------------------------------------------------------------------


def np64(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def f64(x):
    return np.asarray(x, np.float64)


def softplus(x):
    return np.logaddexp(0.0, x)


def elu(x):
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0.0)))


def dense(p, x):
    return x @ p["kernel"] + p["bias"]


def np_head(raw):
    m, s = np.split(raw, 2, axis=-1)
    s1 = 10.0 - softplus(10.0 - s)
    return 30.0 * np.tanh(m / 30.0), 0.1 + softplus(s1 - 0.1)


def np_gaussian_mlp(params, x):
    p = np64(params)["params"]
    h = elu(dense(p["fc1"], x))
    h = elu(dense(p["fc2"], h))
    return np_head(dense(p["out"], h))


def np_model(params, z, a):
    return np_gaussian_mlp(params, np.concatenate([z, a], -1))


def np_ln_tanh(p, x):
    h = dense(p["fc1"], x)
    mu = h.mean(-1, keepdims=True)
    var = ((h - mu) ** 2).mean(-1, keepdims=True)
    h = (h - mu) / np.sqrt(var + 1e-5) * p["norm"]["scale"] + p["norm"]["bias"]
    h = elu(dense(p["fc2"], np.tanh(h)))
    return dense(p["out"], h)


def np_reward(params, z, a):
    return np_ln_tanh(np64(params)["params"]["body"], np.concatenate([z, a], -1))[..., 0]


def np_logits(params, z, a, zn):
    return np_ln_tanh(np64(params)["params"]["body"], np.concatenate([z, a, zn], -1))


def np_q(params, z, a):
    """(2, ...): the two heads one after the other."""
    p = np64(params)["params"]["qs"]
    x = np.concatenate([z, a], -1)
    return np.stack([np_ln_tanh(jax.tree.map(lambda v, i=i: v[i], p), x)[..., 0] for i in range(2)])


def np_actor(params, z):
    p = np64(params)["params"]
    h = elu(dense(p["fc1"], z))
    h = elu(dense(p["fc2"], h))
    return np.tanh(dense(p["out"], h))


def normal(key, shape):
    return f64(jax.random.normal(key, shape))


def np_noisy(mu, sigma, eps, clip):
    noise = sigma * eps
    if clip is not None:
        noise = np.clip(noise, -clip, clip)
    return np.clip(mu + noise, -1 + 1e-6, 1 - 1e-6)


# --- hand-worked closed forms -------------------------------------------------------------


def test_config_defaults_are_table_3():
    c = alm.ALMConfig()
    assert (c.latent_dim, c.horizon, c.td_lambda, c.discount, c.tau) == (50, 3, 0.95, 0.99, 0.005)
    assert (c.lr, c.adam_eps, c.max_grad_norm, c.hidden, c.model_hidden) == (1e-4, 1e-8, 100.0, 512, 1024)
    assert (c.classifier_reward_weight, c.noise_clip) == (0.1, 0.3)
    assert (c.std_start, c.std_end, c.std_duration) == (1.0, 0.1, 100_000)


def test_gaussian_head_bounds_and_hand_values():
    m = jnp.array([-1e6, -60.0, 0.0, 3.0, 60.0, 1e6, 0.0], jnp.float32)
    s = jnp.array([-1e6, -5.0, 0.0, 0.1, 5.0, 20.0, 1e6], jnp.float32)
    mean, std = alm.bounded_gaussian(jnp.concatenate([m, s])[None], CFG)
    mean, std = np.asarray(mean[0], np.float64), np.asarray(std[0], np.float64)
    # By hand: mean = 30 tanh(m / 30); std = 0.1 + log(1 + exp(10 - log(1 + exp(10 - s)) - 0.1)).
    def hand_std(x):
        s1 = 10.0 - math.log1p(math.exp(10.0 - x)) if x < 700 else 10.0
        return 0.1 + math.log1p(math.exp(s1 - 0.1))
    hand_mean = [-30.0, -30 * math.tanh(2), 0.0, 30 * math.tanh(0.1), 30 * math.tanh(2), 30.0, 0.0]
    np.testing.assert_allclose(mean, hand_mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(std[1:], [hand_std(x) for x in [-5.0, 0.0, 0.1, 5.0, 20.0, 1e6]], rtol=1e-5)
    assert std[0] == pytest.approx(0.1, abs=1e-7)  # the soft lower bound, reached from above
    upper = 0.1 + math.log1p(math.exp(9.9))  # = 10.00005: the soft upper bound
    assert std[-1] == pytest.approx(upper, rel=1e-6)
    assert hand_std(0.0) == pytest.approx(0.744375, abs=1e-6)  # the std of a zero input: 0.1 + log(1 + e^-0.1)
    # Bounds on a whole encoder and model, whatever the input's scale.
    p = known(SHAPES.encoder_params)
    obs = 1e4 * jax.random.normal(jax.random.key(1), (64, OBS))
    mean, std = ENCODE(p, obs)
    assert np.all(np.abs(mean) <= 30.0) and np.all(std >= 0.1) and np.all(std <= upper + 1e-5)


def test_gaussian_kl_closed_form_by_hand():
    # 2 dims: p = N((0, 1), diag(1, 4)), q = N((1, 0), diag(4, 1)).
    # dim 1: log 2 + (1 + 1) / 8 - 1/2; dim 2: log(1/2) + (4 + 1) / 2 - 1/2; sum = 7/4 exactly.
    kl = alm.gaussian_kl(jnp.array([0.0, 1.0]), jnp.array([1.0, 2.0]), jnp.array([1.0, 0.0]), jnp.array([2.0, 1.0]))
    assert float(kl) == pytest.approx(1.75, abs=1e-6)
    # 3 dims: p = N((0, 0, 2), I), q = N((0, 1, 0), diag(1, e^2, 1)):
    # 0 + (1 + (1 + 1) / (2 e^2) - 1/2) + ((1 + 4) / 2 - 1/2) = 2.5 + e^-2.
    kl = alm.gaussian_kl(jnp.array([[0.0, 0.0, 2.0]]), jnp.ones((1, 3)), jnp.array([[0.0, 1.0, 0.0]]),
                         jnp.array([[1.0, math.e, 1.0]]))
    assert kl.shape == (1,) and float(kl[0]) == pytest.approx(2.5 + math.exp(-2), abs=1e-6)
    # KL(p || p) = 0 and the direction matters: KL(q || p) for the 3-dim pair is different.
    assert float(alm.gaussian_kl(jnp.ones(3), 2 * jnp.ones(3), jnp.ones(3), 2 * jnp.ones(3))) == 0.0
    rev = alm.gaussian_kl(jnp.array([0.0, 1.0, 0.0]), jnp.array([1.0, math.e, 1.0]), jnp.array([0.0, 0.0, 2.0]),
                          jnp.ones(3))
    # -1 + (e^2 + 1) / 2 - 1/2 + (1 + 4) / 2 - 1/2 = e^2 / 2 + 1
    assert float(rev) == pytest.approx(math.exp(2) / 2 + 1, abs=1e-5)


def test_lambda_returns_by_hand():
    rho = jnp.array([1.0, 2.0, 3.0])
    q = jnp.array([10.0, 20.0, 30.0, 40.0])
    # gamma = lambda = 1/2: G3 = 40; G2 = 3 + (20 + 20)/2 = 23; G1 = 2 + (15 + 11.5)/2 = 15.25;
    # G0 = 1 + (10 + 7.625)/2 = 9.8125.
    np.testing.assert_allclose(alm.lambda_returns(rho, q, 0.5, 0.5), [9.8125, 15.25, 23.0], rtol=1e-7)
    # lambda = 1: discounted sum bootstrapped at q3; lambda = 0: one-step targets rho_t + g q_t+1.
    g = 0.9
    np.testing.assert_allclose(alm.lambda_returns(rho, q, g, 1.0),
                               [1 + g * 2 + g**2 * 3 + g**3 * 40, 2 + g * 3 + g**2 * 40, 3 + g * 40], rtol=1e-6)
    np.testing.assert_allclose(alm.lambda_returns(rho, q, g, 0.0), [1 + g * 20, 2 + g * 30, 3 + g * 40], rtol=1e-6)
    # Batched along a trailing axis.
    out = alm.lambda_returns(jnp.stack([rho, 2 * rho], -1), jnp.stack([q, 2 * q], -1), 0.5, 0.5)
    np.testing.assert_allclose(out[:, 1], [19.625, 30.5, 46.0], rtol=1e-7)


def test_exploration_schedule_by_hand():
    std = jax.jit(alm.exploration_std, static_argnums=0)
    for t, expected in [(0, 1.0), (50_000, 0.55), (100_000, 0.1), (200_000, 0.1), (25_000, 0.775)]:
        assert float(std(CFG, t)) == pytest.approx(expected, rel=1e-6), t
        assert float(alm.exploration_std(CFG, t)) == pytest.approx(expected, rel=1e-6), t


def test_noisy_action_clips_noise_and_clamps_straight_through():
    key = jax.random.key(3)
    mu = jnp.array([[0.9, -0.95], [0.0, 0.5], [-0.2, 0.99]] * 4)
    eps = normal(key, mu.shape)
    a = alm.noisy_action(mu, 1.0, key, 0.3)
    np.testing.assert_allclose(a, np_noisy(f64(mu), 1.0, eps, 0.3), rtol=1e-6, atol=1e-7)
    assert np.abs(eps).max() > 0.3 and np.any(np.abs(f64(mu) + np.clip(eps, -0.3, 0.3)) > 1)  # both bite
    assert np.all(np.abs(a) <= 1 - 1e-6)
    unclipped = alm.noisy_action(mu, 1.0, key, None)
    np.testing.assert_allclose(unclipped, np_noisy(f64(mu), 1.0, eps, None), rtol=1e-6, atol=1e-7)
    # Straight-through: the clamp passes the gradient unchanged, also where it clamped.
    grad = jax.grad(lambda m: alm.noisy_action(m, 1.0, key, 0.3).sum())(mu)
    np.testing.assert_array_equal(grad, 1.0)


# --- losses against numpy ------------------------------------------------------------------


def test_classifier_labels_and_reward(state):
    keys = jax.random.split(jax.random.key(3), 5)
    for n in (8, 7, 64):
        per_key = np.asarray(quick_jit(jax.vmap(lambda k, n=n: alm.classifier_labels(k, n)))(keys))
        for labels in per_key:
            assert set(np.unique(labels)) <= {0, 1}
            assert (labels == 0).sum() == n // 2  # exactly n // 2 model rows: chosen without replacement
        assert len({tuple(x) for x in per_key}) > 1  # the rows change with the key
    z, zn = f64(jax.random.normal(jax.random.key(4), (B, Z))), f64(jax.random.normal(jax.random.key(5), (B, Z)))
    a = f64(TRANS.action)
    c = CLASSIFIER_REWARD(state.classifier_params, z, a, zn)
    logits = np_logits(state.classifier_params, z, a, zn)
    np.testing.assert_allclose(c, logits[:, 1] - logits[:, 0], rtol=1e-5, atol=1e-6)


def test_reward_classifier_loss_matches_numpy(state):
    k = [jax.random.key(i) for i in range(20, 23)]
    z, z_real, z_model = (jax.random.normal(kk, (B, Z)) for kk in k)
    labels = alm.classifier_labels(jax.random.key(24), B)
    z_in = alm.classifier_inputs(labels, z_real, z_model)
    lab = np.asarray(labels)
    np.testing.assert_array_equal(z_in, np.where(lab[:, None] == 1, z_real, z_model))
    loss, aux = REWARD_LOSS(alm.reward_group(state), z, TRANS.action, TRANS.reward, z_in, labels)

    a, r = f64(TRANS.action), f64(TRANS.reward)
    mse = np.mean((np_reward(state.reward_params, f64(z), a) - r) ** 2)
    logits = np_logits(state.classifier_params, f64(z), a, f64(z_in))
    logp = logits - np.logaddexp(logits[:, :1], logits[:, 1:])
    ce = -np.mean(logp[np.arange(B), lab])
    np.testing.assert_allclose(aux["loss/reward_mse"], mse, rtol=1e-5)
    np.testing.assert_allclose(aux["loss/classifier_ce"], ce, rtol=1e-5)
    np.testing.assert_allclose(loss, mse + ce, rtol=1e-5)
    assert float(aux["classifier/accuracy"]) == np.mean(np.argmax(logits, -1) == lab)


def test_critic_target_uses_the_online_actors_clipped_noisy_action(state):
    # The actor's output bias pushes its means near +-1, so the clamp bites as well as the noise clip.
    actor = jax.tree.map(lambda x: x, state.actor_params)
    actor["params"]["out"]["bias"] = jnp.array([1.6, -1.6])
    key, sigma = jax.random.key(30), 1.0
    z, zn = jax.random.normal(jax.random.key(31), (B, Z)), jax.random.normal(jax.random.key(32), (B, Z))
    loss, aux = CRITIC_LOSS(state.critic_params, state.target_critic_params, actor, z, TRANS.action,
                            TRANS.reward, TRANS.discount, zn, jnp.float32(sigma), key)

    eps = normal(key, (B, ACT))
    mu = np_actor(actor, f64(zn))
    next_a = np_noisy(mu, sigma, eps, 0.3)
    assert np.abs(eps).max() > 0.3 and np.any(np.abs(mu + np.clip(eps, -0.3, 0.3)) > 1)
    y = f64(TRANS.reward) + 0.99 * f64(TRANS.discount) * np_q(state.target_critic_params, f64(zn), next_a).min(0)
    q = np_q(state.critic_params, f64(z), f64(TRANS.action))
    expected = (np.mean((q[0] - y) ** 2) + np.mean((q[1] - y) ** 2)) / 2
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(aux["q/mean_batch"], q.mean(), rtol=1e-5, atol=1e-6)
    # The reference is sensitive to the clip: unclipped noise gives another loss.
    y_unclipped = f64(TRANS.reward) + 0.99 * f64(TRANS.discount) * np_q(
        state.target_critic_params, f64(zn), np_noisy(mu, sigma, eps, None)).min(0)
    assert abs(expected - (np.mean((q[0] - y_unclipped) ** 2) + np.mean((q[1] - y_unclipped) ** 2)) / 2) > 1e-4


def test_model_loss_matches_numpy(state):
    key, sigma = jax.random.key(40), 0.7
    loss, aux = MODEL_LOSS(alm.model_group(state), state.target_encoder_params, state.reward_params,
                           state.critic_params, state.actor_params, SEQS, jnp.float32(sigma), key)
    s = np64(SEQS)
    m0, s0 = np_gaussian_mlp(state.encoder_params, s.obs[:, 0])
    z = m0 + s0 * normal(stream(key, "z0"), (B, Z))
    kl = rew = 0.0
    for t in range(CFG.horizon):
        mm, ms = np_model(state.model_params, z, s.action[:, t])
        tm, ts = np_gaussian_mlp(state.target_encoder_params, s.next_obs[:, t])
        kl = kl + (np.log(ts / ms) + (ms**2 + (mm - tm) ** 2) / (2 * ts**2) - 0.5).sum(-1)
        rew = rew + np_reward(state.reward_params, z, s.action[:, t])
        z = mm + ms * normal(stream(key, f"z{t + 1}"), (B, Z))
    a = np_noisy(np_actor(state.actor_params, z), sigma, normal(stream(key, "value_action"), (B, ACT)), 0.3)
    v = np_q(state.critic_params, z, a).min(0)
    np.testing.assert_allclose(aux["loss/model_kl"], kl.mean(), rtol=1e-5)
    np.testing.assert_allclose(aux["loss/model_reward"], rew.mean(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(aux["loss/model_value"], v.mean(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loss, np.mean(kl - rew - v), rtol=1e-5)


def test_alm_actor_loss_matches_numpy(state):
    key, sigma = jax.random.key(50), 0.4
    z0 = jax.random.normal(jax.random.key(51), (B, Z))
    loss, aux = ALM_ACTOR_LOSS(state.actor_params, state.model_params, state.reward_params,
                               state.classifier_params, state.critic_params, z0, jnp.float32(sigma), key)
    zs, acts = [f64(z0)], []
    for t in range(CFG.horizon + 1):
        acts.append(np_noisy(np_actor(state.actor_params, zs[-1]), sigma, normal(stream(key, f"a{t}"), (B, ACT)), 0.3))
        if t < CFG.horizon:
            mm, ms = np_model(state.model_params, zs[-1], acts[-1])
            zs.append(mm + ms * normal(stream(key, f"z{t + 1}"), (B, Z)))
    g, lam, K = 0.99, 0.95, CFG.horizon
    rho = []
    for t in range(K):
        logits = np_logits(state.classifier_params, zs[t], acts[t], zs[t + 1])
        rho.append(np_reward(state.reward_params, zs[t], acts[t]) + 0.1 * (logits[:, 1] - logits[:, 0]))
    qs = [np_q(state.critic_params, zs[t], acts[t]) for t in range(K + 1)]
    q = [x.min(0) for x in qs]
    G = [None] * K
    nxt = q[K]
    for t in reversed(range(K)):
        G[t] = rho[t] + g * ((1 - lam) * q[t + 1] + lam * nxt)
        nxt = G[t]
    expected = -np.mean([g**t * G[t] for t in range(K)])
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(aux["q/mean_imagined"], np.mean(qs[1:]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(aux["reward/mean_imagined"], np.mean(rho), rtol=1e-5, atol=1e-6)


def test_nodyna_actor_loss_matches_numpy(state):
    key, sigma, z = jax.random.key(60), 0.5, jax.random.normal(jax.random.key(61), (B, Z))
    loss, _ = NODYNA_ACTOR_LOSS(state.actor_params, state.critic_params, z, jnp.float32(sigma), key)
    a = np_noisy(np_actor(state.actor_params, f64(z)), sigma, normal(key, (B, ACT)), 0.3)
    np.testing.assert_allclose(loss, -np.mean(np_q(state.critic_params, f64(z), a).min(0)), rtol=1e-5)


# --- stop-gradients ---------------------------------------------------------------------


def with_rows(params, layer_path, rows, value=None, scale=None):
    """Copy of params with rows `rows` of a first-layer kernel set to `value` or multiplied by `scale`."""
    p = jax.tree.map(lambda x: x, params)
    node = p["params"]
    for name in layer_path:
        node = node[name]
    k = node["kernel"]
    idx = (Ellipsis, rows, slice(None))
    node["kernel"] = k.at[idx].set(value) if value is not None else k.at[idx].multiply(scale)
    return p


A_ROWS = slice(Z, Z + ACT)  # the action's rows of a first kernel whose input is [z, a, ...]
Z_ROWS = slice(0, Z)

ALM_ACTOR_GRAD = quick_jit(jax.grad(lambda *a: alm.alm_actor_loss(CFG, *a)[0]))
NODYNA_ACTOR_GRAD = quick_jit(jax.grad(lambda *a: alm.nodyna_actor_loss(CFG, *a)[0]))
MODEL_GRAD = quick_jit(jax.grad(lambda *a: alm.model_loss(CFG, *a)[0]))


def max_abs(tree):
    return max(float(jnp.abs(x).max()) for x in leaves(tree))


def max_diff(a, b):
    return max(float(jnp.abs(x - y).max()) for x, y in zip(leaves(a), leaves(b), strict=True))


def test_alm_actor_gets_no_direct_dq_da(state):
    key, sigma, z0 = jax.random.key(70), 0.5, jax.random.normal(jax.random.key(71), (B, Z))
    critic = state.critic_params
    critic_other = with_rows(critic, ["qs", "fc1"], A_ROWS, scale=-3.0)  # another action dependence

    def grad(model, reward, classifier, critic):
        return ALM_ACTOR_GRAD(state.actor_params, model, reward, classifier, critic, z0, sigma, key)

    # Cut every path from the actions to the loss except the critic's action input: the model,
    # reward and classifier ignore a. The critic still depends on a, yet the gradient is zero.
    model0 = with_rows(state.model_params, ["fc1"], A_ROWS, 0.0)
    reward0 = with_rows(state.reward_params, ["body", "fc1"], A_ROWS, 0.0)
    classifier0 = with_rows(state.classifier_params, ["body", "fc1"], A_ROWS, 0.0)
    assert max_abs(grad(model0, reward0, classifier0, critic)) == 0.0
    assert max_abs(grad(model0, reward0, classifier0, critic_other)) == 0.0
    # The same critic gives the no-Dyna actor a gradient, and it follows the critic's action rows.
    nd = NODYNA_ACTOR_GRAD(state.actor_params, critic, z0, sigma, key)
    nd_other = NODYNA_ACTOR_GRAD(state.actor_params, critic_other, z0, sigma, key)
    assert max_abs(nd) > 1e-4 and max_diff(nd, nd_other) > 1e-4
    full = grad(state.model_params, state.reward_params, state.classifier_params, critic)
    assert max_abs(full) > 1e-4  # the model path carries a gradient
    # With the full model path, the Q of a critic that reads only a has no influence at all on the
    # ALM actor: Q enters only through z_t, never through a_t.
    critic_a_only = with_rows(critic, ["qs", "fc1"], Z_ROWS, 0.0)
    critic_a_only_other = with_rows(critic_a_only, ["qs", "fc1"], A_ROWS, scale=-3.0)
    g1 = grad(state.model_params, state.reward_params, state.classifier_params, critic_a_only)
    g2 = grad(state.model_params, state.reward_params, state.classifier_params, critic_a_only_other)
    assert max_diff(g1, g2) == 0.0
    n1 = NODYNA_ACTOR_GRAD(state.actor_params, critic_a_only, z0, sigma, key)
    n2 = NODYNA_ACTOR_GRAD(state.actor_params, critic_a_only_other, z0, sigma, key)
    assert max_diff(n1, n2) > 1e-4


def test_model_loss_value_action_is_detached(state):
    # The critic reads only a: with a~_K under no-grad, V_K adds no gradient, so two critics with
    # different action dependence give the same model/encoder gradient.
    key, sigma = jax.random.key(80), 0.5
    critic_a_only = with_rows(state.critic_params, ["qs", "fc1"], Z_ROWS, 0.0)
    critic_a_only_other = with_rows(critic_a_only, ["qs", "fc1"], A_ROWS, scale=-3.0)
    args = (alm.model_group(state), state.target_encoder_params, state.reward_params)
    g1 = MODEL_GRAD(*args, critic_a_only, state.actor_params, SEQS, sigma, key)
    g2 = MODEL_GRAD(*args, critic_a_only_other, state.actor_params, SEQS, sigma, key)
    assert max_abs(g1) > 1e-4 and max_diff(g1, g2) == 0.0
    # ... whereas a critic that reads z pushes a gradient through z_K.
    g3 = MODEL_GRAD(*args, state.critic_params, state.actor_params, SEQS, sigma, key)
    assert max_diff(g1, g3) > 1e-6


# --- acting -----------------------------------------------------------------------------


def test_greedy_and_explore_actions(state):
    obs = jax.random.normal(jax.random.key(90), (B, OBS))
    mean, std = np_gaussian_mlp(state.encoder_params, f64(obs))
    np.testing.assert_allclose(GREEDY(state, obs), np_actor(state.actor_params, mean),
                               rtol=1e-5, atol=1e-6)
    key = jax.random.key(91)
    a = EXPLORE(state, obs, 0, key)  # sigma(0) = 1: acting noise is not clipped
    z = mean + std * normal(stream(key, "latent"), (B, Z))
    eps = normal(stream(key, "noise"), (B, ACT))
    assert np.abs(eps).max() > 0.3
    np.testing.assert_allclose(a, np_noisy(np_actor(state.actor_params, z), 1.0, eps, None), rtol=1e-5, atol=1e-6)
    a = EXPLORE(state, obs[0], 100_000, key)  # one observation, sigma = 0.1
    assert a.shape == (ACT,) and np.all(np.abs(a) <= 1 - 1e-6)


# --- one update ---------------------------------------------------------------------------


# Both variants in one compiled program (half the compile time of two). XLA may share the
# computations the two updates have in common; outputs can then only be equal where the
# variants compute the same thing from the same keys, which is what the test below checks.
BOTH = quick_jit(lambda *a: (alm.update(CFG, *a, dyna=True), alm.update(CFG, *a, dyna=False)))


@pytest.fixture(scope="module")
def updated(state):
    key, t = jax.random.key(100), 20_000
    return key, t, *BOTH(state, SEQS, TRANS, t, key)


def test_update_runs_the_steps_in_order_with_the_documented_draws(state, updated):
    key, t, (new, m), _ = updated
    sigma = alm.exploration_std(CFG, t)
    k = lambda name: stream(key, name)  # noqa: E731
    te = state.target_encoder_params
    assert set(m) == {"loss/model_kl", "loss/model_reward", "loss/model_value", "loss/model", "loss/reward_mse",
                      "loss/classifier_ce", "classifier/accuracy", "loss/critic", "loss/actor", "q/mean_batch",
                      "q/mean_imagined", "reward/mean_batch", "reward/mean_imagined", "explore/std"}
    assert float(m["explore/std"]) == pytest.approx(0.82, rel=1e-6)
    def matches(metric, right, *wrongs):
        """metric equals `right` and is far from each of `wrongs` (what another order would give)."""
        np.testing.assert_allclose(metric, right, rtol=2e-5, atol=1e-6)
        for wrong in wrongs:
            assert abs(float(metric) - float(wrong)) > 10 * (2e-5 * abs(float(right)) + 1e-6), (metric, right, wrong)

    # (1) model loss with the pre-update nets.
    loss, _ = MODEL_LOSS(alm.model_group(state), te, state.reward_params, state.critic_params,
                         state.actor_params, SEQS, sigma, k("model"))
    matches(m["loss/model"], loss)
    # (2a) reward + classifier: the fake rows' z' from the model updated in (1).
    z = alm.sample_latent(CFG, te, TRANS.obs, k("reward/z"))
    z1 = alm.sample_latent(CFG, te, TRANS.obs, k("reward/z1"))
    zr = alm.sample_latent(CFG, te, TRANS.next_obs, k("reward/z_next"))
    labels = alm.classifier_labels(k("reward/labels"), B)

    def reward_aux(model):
        zm = alm.rsample(*alm.latent_step(CFG, model, z1, TRANS.action), k("reward/z_next_model"))
        return REWARD_LOSS(alm.reward_group(state), z, TRANS.action, TRANS.reward,
                           alm.classifier_inputs(labels, zr, zm), labels)[1]

    aux = reward_aux(new.model_params)
    matches(m["loss/classifier_ce"], aux["loss/classifier_ce"], reward_aux(state.model_params)["loss/classifier_ce"])
    matches(m["loss/reward_mse"], aux["loss/reward_mse"])
    assert float(m["classifier/accuracy"]) == float(aux["classifier/accuracy"])
    # (2b) critic with the online actor before its update and the old target critic.
    zc = alm.sample_latent(CFG, te, TRANS.obs, k("critic/z"))
    zcn = alm.sample_latent(CFG, te, TRANS.next_obs, k("critic/z_next"))

    def critic(actor, target=state.target_critic_params):
        return CRITIC_LOSS(state.critic_params, target, actor, zc, TRANS.action, TRANS.reward,
                           TRANS.discount, zcn, sigma, k("critic/next_action"))

    matches(m["loss/critic"], critic(state.actor_params)[0], critic(new.actor_params)[0],
            critic(state.actor_params, new.target_critic_params)[0])
    matches(m["q/mean_batch"], critic(state.actor_params)[1]["q/mean_batch"])
    np.testing.assert_allclose(m["reward/mean_batch"], float(np.mean(TRANS.reward)), rtol=1e-6)
    # (2c) actor with the model, reward, classifier and critic updated before it.
    za = alm.sample_latent(CFG, te, TRANS.obs, k("actor/z"))

    def actor(model=new.model_params, reward=new.reward_params, classifier=new.classifier_params,
              critic=new.critic_params):
        return ALM_ACTOR_LOSS(state.actor_params, model, reward, classifier, critic, za, sigma, k("actor"))

    right, aux = actor()
    matches(m["loss/actor"], right, actor(model=state.model_params)[0], actor(reward=state.reward_params)[0],
            actor(classifier=state.classifier_params)[0], actor(critic=state.critic_params)[0])
    matches(m["q/mean_imagined"], aux["q/mean_imagined"])
    matches(m["reward/mean_imagined"], aux["reward/mean_imagined"])
    # (3) Polyak targets toward the updated online nets.
    for online, old, target in [(new.encoder_params, te, new.target_encoder_params),
                                (new.critic_params, state.target_critic_params, new.target_critic_params)]:
        for o, p, n in zip(leaves(online), leaves(old), leaves(target), strict=True):
            np.testing.assert_allclose(n, 0.995 * np.asarray(p) + 0.005 * np.asarray(o), rtol=1e-6, atol=1e-7)
    # Every group's gradient is clipped by its own global norm: Adam's first moment after one
    # step is (1 - b1) g, so its global norm is 0.1 * max_grad_norm in each group.
    for opt in (new.model_opt_state, new.reward_opt_state, new.critic_opt_state, new.actor_opt_state):
        mu = opt[1][0].mu
        norm = math.sqrt(sum(float(jnp.sum(jnp.square(x))) for x in leaves(mu)))
        assert norm == pytest.approx(0.1 * CFG.max_grad_norm, rel=1e-4)


def test_nodyna_differs_from_alm_only_in_the_actor(state, updated):
    key, t, (alm_state, alm_m), (nd_state, nd_m) = updated
    for field in type(state).__dataclass_fields__:
        a, b = getattr(alm_state, field), getattr(nd_state, field)
        same = all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b), strict=True))
        assert same == (field not in ("actor_params", "actor_opt_state")), field
    actor_metrics = {"loss/actor", "q/mean_imagined", "reward/mean_imagined"}
    assert set(alm_m) - set(nd_m) == {"q/mean_imagined", "reward/mean_imagined"} and set(nd_m) <= set(alm_m)
    for name in nd_m:
        assert (float(alm_m[name]) == float(nd_m[name])) == (name not in actor_metrics), name
    # And the no-Dyna actor loss is the one documented.
    za = alm.sample_latent(CFG, state.target_encoder_params, TRANS.obs, stream(key, "actor/z"))
    loss, _ = NODYNA_ACTOR_LOSS(state.actor_params, nd_state.critic_params, za,
                                alm.exploration_std(CFG, t), stream(key, "actor"))
    np.testing.assert_allclose(nd_m["loss/actor"], loss, rtol=2e-5)


def test_init_targets_and_layers():
    # The targets start as the online nets: the very same traced values (read off the jaxpr, so
    # the whole init need not be compiled).
    jaxpr = jax.make_jaxpr(lambda k: alm.init(k, OBS, ACT, CFG))(jax.random.key(5)).jaxpr
    out = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(SHAPES), jaxpr.outvars)
    pairs = [(out.encoder_params, out.target_encoder_params), (out.critic_params, out.target_critic_params)]
    for online, target in pairs:
        assert all(x is y for x, y in zip(leaves(online), leaves(target), strict=True))
    assert not any(x is y for x, y in zip(leaves(out.encoder_params), leaves(out.model_params)))
    assert SHAPES.model_params["params"]["fc1"]["kernel"].shape == (Z + ACT, CFG.model_hidden)
    assert SHAPES.model_params["params"]["out"]["kernel"].shape == (CFG.model_hidden, 2 * Z)
    assert SHAPES.encoder_params["params"]["fc1"]["kernel"].shape == (OBS, CFG.hidden)
    assert SHAPES.classifier_params["params"]["body"]["fc1"]["kernel"].shape == (2 * Z + ACT, CFG.hidden)
    assert SHAPES.classifier_params["params"]["body"]["out"]["kernel"].shape == (CFG.hidden, 2)
    assert SHAPES.critic_params["params"]["qs"]["out"]["kernel"].shape == (2, CFG.hidden, 1)
    assert SHAPES.actor_params["params"]["out"]["kernel"].shape == (CFG.hidden, ACT)
    # Orthogonal kernels with gain 1, zero biases, unit LayerNorm; two independent critic heads.
    z, a = jnp.zeros((1, Z)), jnp.zeros((1, ACT))
    actor, critic = quick_jit(lambda k: (alm.Actor(CFG, ACT).init(stream(k, "a"), z),
                                       alm.DoubleCritic(CFG).init(stream(k, "c"), z, a)))(jax.random.key(6))
    for name, layer in actor["params"].items():
        k = np.asarray(layer["kernel"], np.float64)
        gram = k @ k.T if k.shape[0] < k.shape[1] else k.T @ k
        np.testing.assert_allclose(gram, np.eye(min(k.shape)), atol=1e-5, err_msg=name)
        np.testing.assert_array_equal(layer["bias"], 0.0)
    qs = critic["params"]["qs"]
    np.testing.assert_array_equal(qs["norm"]["scale"], 1.0)
    np.testing.assert_array_equal(qs["norm"]["bias"], 0.0)
    np.testing.assert_array_equal(qs["fc1"]["bias"], 0.0)
    assert not np.allclose(qs["fc1"]["kernel"][0], qs["fc1"]["kernel"][1])
