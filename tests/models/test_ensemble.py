"""Probabilistic ensemble: loss against numpy, data split, elites, prediction, learning, vmap.

Planted models: with every kernel zero, each member outputs its output-layer bias whatever the
input, so [:D] of that bias is the member's mean (training space) and [D:] its raw log-variance.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynalab import replay
from dynalab.models import ensemble as ens
from dynalab.models import normalizer as nz
from dynalab.types import Transition

# Jitted entry points: one compile each instead of many eager per-op compiles (cold-cache time).
FIT = jax.jit(ens.fit, static_argnums=0)
INIT = jax.jit(ens.init, static_argnums=(1, 2, 3))
PREDICT = jax.jit(ens.predict, static_argnums=0)
SAMPLE = jax.jit(ens.sample_step, static_argnums=0)
DIAGNOSTICS = jax.jit(ens.diagnostics, static_argnums=0)
OBS_DIM, ACTION_DIM = 3, 2
D = OBS_DIM + 1
TINY = ens.ModelConfig(
    ensemble_size=4, num_elites=2, width=4, depth=1, batch_size=8, refit_steps=0, max_holdout=64
)


def leaves(tree):
    return jax.tree_util.tree_leaves(tree)


# --- numpy references -----------------------------------------------------------------


def np_softplus(x):
    return np.logaddexp(0.0, x)


def np_forward(params, x):
    """Member by member, float64: returns (mean, logvar), each (E, N, D)."""
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    means, logvars = [], []
    for e in range(p["layers"][0]["kernel"].shape[0]):
        h = np.asarray(x, np.float64)
        for i, layer in enumerate(p["layers"]):
            h = h @ layer["kernel"][e] + layer["bias"][e]
            if i < len(p["layers"]) - 1:
                h = h / (1.0 + np.exp(-h))  # swish
        d = h.shape[-1] // 2
        raw = h[:, d:]
        lv = p["max_logvar"] - np_softplus(p["max_logvar"] - raw)
        lv = p["min_logvar"] + np_softplus(lv - p["min_logvar"])
        means.append(h[:, :d])
        logvars.append(lv)
    return np.stack(means), np.stack(logvars)


# --- data -----------------------------------------------------------------------------


def linear_data(n, seed=0, state_scale=1.0, reward_scale=1.0):
    """s' = s + state_scale * (z A + a B), r = reward_scale * (z w + a v), z = s / state_scale."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, OBS_DIM))
    a = rng.uniform(-1, 1, size=(n, ACTION_DIM))
    A, B = rng.normal(size=(OBS_DIM, OBS_DIM)) * 0.5, rng.normal(size=(ACTION_DIM, OBS_DIM)) * 0.5
    w, v = rng.normal(size=OBS_DIM), rng.normal(size=ACTION_DIM)
    obs = state_scale * z
    return Transition(
        obs=jnp.asarray(obs, jnp.float32),
        action=jnp.asarray(a, jnp.float32),
        reward=jnp.asarray(reward_scale * (z @ w + a @ v), jnp.float32),
        next_obs=jnp.asarray(obs + state_scale * (z @ A + a @ B), jnp.float32),
        discount=jnp.ones((n,), jnp.float32),
    )


def buffer_of(t: Transition, capacity: int, size: int) -> replay.ReplayBuffer:
    """`size` of the items in a buffer of `capacity`; the rest of the slots hold garbage."""
    junk = jax.tree_util.tree_map(lambda x: jnp.full((capacity - size, *x.shape[1:]), 1e4, x.dtype), t)
    data = jax.tree_util.tree_map(lambda x, j: jnp.concatenate([x[:size], j]), t, junk)
    return replay.ReplayBuffer(data=data, position=jnp.int32(size % capacity), size=jnp.int32(size),
                               count=jnp.uint32(size))


def planted(cfg, means, raw_logvar, min_logvar=-10.0, max_logvar=0.5):
    """A state whose member e predicts means[e] and raw log-variance raw_logvar[e] (training space)."""
    state = INIT(jax.random.key(0), OBS_DIM, ACTION_DIM, cfg)
    layers = jax.tree_util.tree_map(jnp.zeros_like, state.params["layers"])
    layers[-1]["bias"] = jnp.asarray(np.concatenate([means, raw_logvar], -1), jnp.float32)
    params = {
        "layers": layers,
        "max_logvar": jnp.full((D,), max_logvar, jnp.float32),
        "min_logvar": jnp.full((D,), min_logvar, jnp.float32),
    }
    return state.replace(params=params)


# --- configuration and loss -----------------------------------------------------------


def test_weight_decay_schedule_is_mbpos():
    assert ens.weight_decays(ens.ModelConfig()) == (2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4)
    assert ens.weight_decays(ens.ModelConfig(depth=1)) == (2.5e-5, 1e-4)
    assert ens.weight_decays(ens.ModelConfig(depth=2)) == (2.5e-5, 5e-5, 1e-4)
    assert ens.weight_decays(ens.ModelConfig(depth=6)) == (2.5e-5, 5e-5) + (7.5e-5,) * 4 + (1e-4,)
    assert ens.weight_decays(ens.ModelConfig(depth=1, weight_decay=(0.1, 0.2))) == (0.1, 0.2)
    with pytest.raises(ValueError):
        ens.weight_decays(ens.ModelConfig(depth=2, weight_decay=(0.1, 0.2)))


def test_init_shapes():
    cfg = ens.ModelConfig(ensemble_size=3, num_elites=2, width=5, depth=2)
    state = INIT(jax.random.key(0), OBS_DIM, ACTION_DIM, cfg)
    shapes = [(l["kernel"].shape, l["bias"].shape) for l in state.params["layers"]]
    assert shapes == [((3, 5, 5), (3, 5)), ((3, 5, 5), (3, 5)), ((3, 5, 2 * D), (3, 2 * D))]
    np.testing.assert_array_equal(state.params["max_logvar"], 0.5)
    np.testing.assert_array_equal(state.params["min_logvar"], -10.0)
    k0 = state.params["layers"][0]["kernel"]
    assert not np.allclose(k0[0], k0[1])  # members start different
    assert np.abs(k0).max() <= 2 / (2 * np.sqrt(5)) + 1e-6  # truncated at 2 sd, sd = 1 / (2 sqrt(fan_in))


@pytest.mark.parametrize("per_member_inputs", [False, True])
def test_nll_loss_matches_numpy(per_member_inputs):
    cfg = ens.ModelConfig(ensemble_size=2, num_elites=1, width=3, depth=1, weight_decay=(0.01, 0.02))
    rng = np.random.default_rng(0)
    params = ens.init_params(jax.random.key(0), OBS_DIM + ACTION_DIM, D, cfg)
    known = lambda x: jnp.asarray(np.round(rng.normal(size=x.shape), 2), jnp.float32)  # noqa: E731
    params = jax.tree_util.tree_map(known, params)
    # Raw log-variances far above max and far below min exercise both soft bounds.
    bias = np.array(params["layers"][1]["bias"])
    bias[0, D:] = [3.0, -15.0, 0.2, -4.0]
    bias[1, D:] = [-30.0, 8.0, -9.5, 0.0]
    params["layers"][1]["bias"] = jnp.asarray(bias)
    params["max_logvar"] = jnp.array([0.5, 0.2, 1.0, -1.0])
    params["min_logvar"] = jnp.array([-10.0, -8.0, -5.0, -12.0])
    shape = (2, 6) if per_member_inputs else (6,)
    x = rng.normal(size=(*shape, OBS_DIM + ACTION_DIM)).astype(np.float32)
    y = rng.normal(size=(*shape, D)).astype(np.float32)

    loss, aux = jax.jit(ens.nll_loss, static_argnums=0)(cfg, params, jnp.asarray(x), jnp.asarray(y))

    if per_member_inputs:
        member = lambda e: jax.tree_util.tree_map(lambda a: a[e : e + 1] if a.ndim > 1 else a, params)  # noqa: E731
        outs = [np_forward(member(e), x[e]) for e in range(2)]
        mu, lv = np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])
    else:
        mu, lv = np_forward(params, x)
    assert lv.max() < 1.0 and lv.min() > -12.0  # the bounds bit
    nll = ((mu - y) ** 2 * np.exp(-lv) + lv).mean(axis=(1, 2))
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    decay = 0.01 * 0.5 * (p["layers"][0]["kernel"] ** 2).sum()
    decay += 0.02 * 0.5 * (p["layers"][1]["kernel"] ** 2).sum()
    bound = 0.01 * (p["max_logvar"].sum() - p["min_logvar"].sum())
    np.testing.assert_allclose(aux["nll"], nll, rtol=1e-5)
    np.testing.assert_allclose(aux["mse"], ((mu - y) ** 2).mean(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(aux["weight_decay"], decay, rtol=1e-6)
    np.testing.assert_allclose(aux["logvar_bound"], bound, rtol=1e-6)
    np.testing.assert_allclose(loss, nll.sum() + bound + decay, rtol=1e-5)


def test_default_weight_decay_value():
    cfg = ens.ModelConfig(ensemble_size=2, width=3, depth=4)
    params = ens.init_params(jax.random.key(1), 5, D, cfg)
    ref = sum(d * 0.5 * np.sum(np.asarray(l["kernel"], np.float64) ** 2)
              for d, l in zip((2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4), params["layers"]))  # fmt: skip
    np.testing.assert_allclose(ens.weight_decay_loss(cfg, params), ref, rtol=1e-6)


def test_targets_residual_and_direct():
    t = linear_data(5)
    r = ens.targets(ens.ModelConfig(), t)
    d = ens.targets(ens.ModelConfig(direct_next_state=True), t)
    np.testing.assert_allclose(r, np.concatenate([t.next_obs - t.obs, t.reward[:, None]], -1))
    np.testing.assert_allclose(d, np.concatenate([t.next_obs, t.reward[:, None]], -1))


# --- data split -----------------------------------------------------------------------


SPLIT = jax.jit(ens.random_split, static_argnums=(2, 3))


def split_sets(key, size, capacity=64, ratio=0.2):
    split = SPLIT(key, jnp.int32(size), capacity, ratio)
    order, n_hold, n_train = np.asarray(split.order), int(split.n_holdout), int(split.n_train)
    return split, set(order[:n_hold].tolist()), set(order[n_hold:n_hold + n_train].tolist())


def test_a_split_holds_out_a_fifth_of_the_filled_slots_and_trains_on_the_rest():
    split, hold, train = split_sets(jax.random.key(0), 50)
    assert len(hold) == 10 and len(train) == 40  # floor(0.2 * 50)
    assert hold | train == set(range(50)) and not hold & train  # filled slots only, each once
    np.testing.assert_array_equal(np.flatnonzero(np.asarray(ens.train_mask(split))), sorted(train))
    # Slots above `size` hold garbage (buffer_of writes 1e4 there) and are in neither part.
    _, hold, train = split_sets(jax.random.key(1), 4)  # fewer than 1 / 0.2 filled: nothing held out
    assert hold == set() and train == {0, 1, 2, 3}


def test_every_refit_draws_a_fresh_split_so_all_data_trains_the_model():
    """The old fixed split held every 5th slot out forever; MBPO and the STFL code re-split."""
    holds = [split_sets(jax.random.key(i), 50)[1] for i in range(30)]
    assert len({frozenset(h) for h in holds}) == 30
    never_trained = set(range(50)).intersection(*holds)
    assert never_trained == set()
    # Each slot is held out about 20% of the time.
    counts = np.bincount(np.concatenate([sorted(h) for h in holds]), minlength=50)
    assert counts.mean() == 0.2 * 30 and counts.max() <= 16


def test_train_indices_are_training_slots_and_differ_per_member():
    split, hold, train = split_sets(jax.random.key(2), 23, capacity=32)
    idx = np.asarray(ens.sample_train_indices(jax.random.key(0), split, (4, 2000)))
    assert idx.shape == (4, 2000) and set(idx.ravel().tolist()) == train
    for row in idx:  # every training slot reachable, roughly uniformly
        counts = np.bincount(row, minlength=32)[sorted(train)]
        assert counts.min() > 2000 / len(train) * 0.5
    for a in range(4):  # each member draws its own minibatches
        for b in range(a + 1, 4):
            assert (idx[a] != idx[b]).mean() > 0.8


def test_holdout_indices_are_a_capped_subset_of_the_held_out_slots():
    split, hold, train = split_sets(jax.random.key(3), 60)  # 12 held out
    slots, mask = ens.holdout_indices(split, 8)
    assert slots.shape == (8,) and bool(mask.all()) and set(np.asarray(slots).tolist()) < hold
    slots, mask = ens.holdout_indices(split, 20)  # the cap above the count: all 12, once each
    assert int(mask.sum()) == 12 and set(np.asarray(slots)[np.asarray(mask)].tolist()) == hold
    split, hold, train = split_sets(jax.random.key(3), 3)  # nothing held out: training slots stand in
    slots, mask = ens.holdout_indices(split, 8)
    assert set(np.asarray(slots)[np.asarray(mask)].tolist()) == train == {0, 1, 2}


def test_track_best_follows_mbpo_rule():
    best = jnp.array([1.0, 1.0])
    layers_old = {"w": jnp.zeros((2, 3))}
    layers_new = {"w": jnp.ones((2, 3))}
    # Member 0 improves 2% (> 1%), member 1 only 0.5%.
    b, l, since = ens.track_best(best, layers_old, jnp.int32(3), jnp.array([0.98, 0.995]), layers_new)
    np.testing.assert_allclose(b, [0.98, 1.0])
    np.testing.assert_array_equal(l["w"], [[1, 1, 1], [0, 0, 0]])
    assert int(since) == 0
    b, l, since = ens.track_best(b, l, since, jnp.array([0.975, 0.999]), {"w": 2 * jnp.ones((2, 3))})
    np.testing.assert_array_equal(l["w"], [[1, 1, 1], [0, 0, 0]])  # nobody improved by > 1%
    assert int(since) == 1


# --- fitting --------------------------------------------------------------------------


def test_elites_are_the_members_with_lowest_holdout_mse():
    t = linear_data(64)
    buf = buffer_of(t, capacity=64, size=50)
    offsets = np.array([3.0, 0.1, 5.0, -0.5])  # member e predicts offsets[e] in every dim
    state = planted(TINY, np.repeat(offsets[:, None], D, 1), np.zeros((4, D)))
    key = jax.random.key(0)
    new, metrics = FIT(TINY, state, buf, key)  # refit_steps=0: evaluate only

    # fit splits with the first of two keys split from its own (documented in ens.fit).
    split, hold, train = split_sets(jax.random.split(key)[0], 50)
    hold, train = np.array(sorted(hold)), np.array(sorted(train))
    y = np.asarray(ens.targets(TINY, jax.tree_util.tree_map(lambda x: x[hold], t)), np.float64)
    ref = np.array([((o - y) ** 2).mean() for o in offsets])
    np.testing.assert_allclose(new.holdout_mse, ref, rtol=1e-5)
    np.testing.assert_array_equal(new.elites, np.argsort(ref)[:2])
    np.testing.assert_allclose(metrics["model/holdout_loss"], np.sort(ref)[:2].mean(), rtol=1e-5)
    assert int(metrics["model/fit_steps"]) == 0
    # Input normaliser: statistics of the 40 training rows only (not the held-out ones).
    x = np.concatenate([t.obs[train], t.action[train]], -1).astype(np.float64)
    np.testing.assert_allclose(new.input_norm.mean, x.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(new.input_norm.std, x.std(0), rtol=1e-4)


@pytest.mark.parametrize("target_norm, direct", [(True, False), (False, True)])
def test_short_fit_learns_a_linear_system(target_norm, direct):
    """Wildly scaled targets (states ~1e3, reward ~1e-2) when target_norm, unit scale otherwise.

    Two of the four switch combinations (each switch on once); `predict` is checked on all four.
    """
    cfg = ens.ModelConfig(ensemble_size=3, num_elites=2, width=16, depth=2, batch_size=64, lr=3e-3,
                          refit_steps=300, max_holdout=1000, target_norm=target_norm,
                          direct_next_state=direct)  # fmt: skip
    scales = dict(state_scale=1e3, reward_scale=1e-2) if target_norm else {}
    t = linear_data(600, **scales)
    buf = buffer_of(t, capacity=640, size=600)
    state = INIT(jax.random.key(1), OBS_DIM, ACTION_DIM, cfg)
    # All members start identical, so any difference after the fit comes from their minibatches.
    state = state.replace(params=jax.tree_util.tree_map(
        lambda x: jnp.broadcast_to(x[:1], x.shape) if x.shape[0] == 3 else x, state.params))  # fmt: skip
    new, metrics = FIT(cfg, state, buf, jax.random.key(2))

    y = np.asarray(ens.targets(cfg, t), np.float64)
    _, hold, train = split_sets(jax.random.split(jax.random.key(2))[0], 600, capacity=640)
    hold, train = np.array(sorted(hold)), np.array(sorted(train))
    assert len(train) == 480 and len(hold) == 120
    if target_norm:  # statistics of the training part of the refit's split only
        yt = y[train]
        np.testing.assert_allclose((new.target_norm.mean - yt.mean(0)) / yt.std(0), 0.0, atol=1e-4)
        np.testing.assert_allclose(new.target_norm.std, yt.std(0), rtol=1e-4)
    else:
        np.testing.assert_array_equal(new.target_norm.std, 1.0)

    # Holdout MSE (training space) recomputed from predict, before and after the fit.
    th = jax.tree_util.tree_map(lambda x: x[hold], t)
    yh = np.asarray(nz.normalize(new.target_norm, ens.targets(cfg, th)))

    def holdout_mse(s):
        mean, _ = PREDICT(cfg, s, th.obs, th.action)
        return ((np.asarray(nz.normalize(new.target_norm, mean)) - yh) ** 2).mean(axis=(1, 2))

    before = holdout_mse(new.replace(params=state.params))
    after = holdout_mse(new)
    np.testing.assert_allclose(new.holdout_mse, after, rtol=1e-3)
    assert after.max() < 0.1 * before.min(), (before, after)
    assert float(metrics["model/holdout_loss"]) < 0.1 * before.min()
    assert int(metrics["model/fit_steps"]) == 300 and np.isfinite(float(metrics["model/train_loss"]))
    k0 = np.asarray(new.params["layers"][0]["kernel"])
    assert not np.allclose(k0[0], k0[1]) and not np.allclose(k0[1], k0[2])  # members diverged

    # Predictions come back in original units (means and variances).
    d = DIAGNOSTICS(cfg, new, th)
    assert float(d["model/pct_error_next_state"]) < 10.0
    assert float(d["model/reward_mse"]) < 0.1 * th.reward.var()
    ratio_state = float(d["model/var_state"]) / y[:, :-1].var(0).mean()
    ratio_reward = float(d["model/var_reward"]) / y[:, -1].var()
    assert 1e-4 < ratio_state < 10 and 1e-4 < ratio_reward < 10, (ratio_state, ratio_reward)


def test_early_stopping_with_frozen_params_stops_after_patience_plus_one_evaluations():
    # lr 0: the holdout loss never changes, so only the first evaluation improves (from 1e10);
    # MBPO stops once epochs_since_update > patience, i.e. after 1 + (patience + 1) evaluations.
    cfg = ens.ModelConfig(ensemble_size=4, num_elites=2, width=4, depth=1, batch_size=8, lr=0.0,
                          refit_steps=100, max_holdout=64, early_stopping=True,
                          early_stopping_eval_every=5, early_stopping_patience=2)  # fmt: skip
    state = INIT(jax.random.key(0), OBS_DIM, ACTION_DIM, cfg)
    new, metrics = FIT(cfg, state, buffer_of(linear_data(64), 64, 50), jax.random.key(0))
    assert int(metrics["model/fit_steps"]) == (1 + 2 + 1) * 5
    for a, b in zip(leaves(new.params), leaves(state.params)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("early_stopping", [False, True])
def test_a_recorded_fit_is_the_fit_bit_for_bit_and_its_curve_ends_at_the_fits_holdout_loss(early_stopping):
    # Without early stopping: 23 steps in chunks of 5, points at 0, 5, 10, 15, 20, 23. With it: lr 0 and
    # patience 0, so only the first evaluation improves (from 1e10) and the fit ends after the second, at
    # step 10 of 25: the points past 10 are NaN.
    steps = 25 if early_stopping else 23
    cfg = ens.ModelConfig(ensemble_size=3, num_elites=2, width=8, depth=2, batch_size=16,
                          lr=0.0 if early_stopping else 3e-3, refit_steps=steps, max_holdout=64,
                          early_stopping=early_stopping, early_stopping_eval_every=5,
                          early_stopping_patience=0)  # fmt: skip
    state = INIT(jax.random.key(0), OBS_DIM, ACTION_DIM, cfg)
    buf = buffer_of(linear_data(120), 128, 120)
    plain, pm = FIT(cfg, state, buf, jax.random.key(3))
    recorded, rm, curve = jax.jit(ens.fit_recorded, static_argnums=0)(cfg, state, buf, jax.random.key(3))
    for a, b in zip(leaves(plain), leaves(recorded)):
        np.testing.assert_array_equal(a, b)
    for k in pm:
        np.testing.assert_array_equal(pm[k], rm[k])
    points = [0, 5, 10, 15, 20, 25] if early_stopping else [0, 5, 10, 15, 20, 23]
    np.testing.assert_array_equal(ens.curve_steps(cfg), points)
    assert set(curve) == set(ens.CURVE) and all(v.shape == (6,) for v in curve.values())
    assert np.isnan(curve["train_loss"][0]) and np.isnan(curve["train_mse"][0])
    if early_stopping:
        assert int(rm["model/fit_steps"]) == 10
        assert np.isfinite(curve["holdout_mse"][:3]).all() and np.isnan(curve["holdout_mse"][3:]).all()
        # lr 0: nothing moves, so every recorded point is the initial weights' holdout loss.
        np.testing.assert_allclose(curve["holdout_mse"][:3], np.mean(recorded.holdout_mse), rtol=1e-6)
    else:
        # The last point is the trained weights' holdout MSE, which the fit also keeps per member,
        # and the fit learns: the holdout loss falls.
        np.testing.assert_allclose(curve["holdout_mse"][-1], np.mean(recorded.holdout_mse), rtol=1e-6)
        assert curve["holdout_mse"][-1] < curve["holdout_mse"][0]
    # The variance loss is the mean predicted log-variance: within the model's soft bounds.
    lo, hi = float(np.min(state.params["min_logvar"])), float(np.max(state.params["max_logvar"]))
    var = curve["var_loss"][np.isfinite(curve["var_loss"])]
    assert len(var) and np.all((var >= lo - 1e-3) & (var <= hi + 1e-3))


def test_fit_jits_and_vmaps_over_seeds():
    """Two seeds, partially filled buffers of different sizes; early stopping makes them stop at
    different epochs (seed 0 starts at the best constant predictor, which cannot improve by 1%),
    so the batched while_loop must freeze the finished seed. Batched == one seed at a time."""
    cfg = ens.ModelConfig(ensemble_size=3, num_elites=2, width=16, depth=2, batch_size=32, lr=3e-3,
                          refit_steps=200, max_holdout=64, early_stopping=True,
                          early_stopping_eval_every=10, early_stopping_patience=1)  # fmt: skip
    t = linear_data(200)
    bufs = [buffer_of(t, 256, 150), buffer_of(t, 256, 200)]
    zero = jax.tree_util.tree_map(jnp.zeros_like, INIT(jax.random.key(0), OBS_DIM, ACTION_DIM, cfg).params)
    states = [INIT(jax.random.key(i), OBS_DIM, ACTION_DIM, cfg) for i in range(2)]
    states[0] = states[0].replace(params={**zero, "max_logvar": states[0].params["max_logvar"],
                                          "min_logvar": states[0].params["min_logvar"]})  # fmt: skip
    keys = [jax.random.key(10), jax.random.key(11)]
    stack = lambda xs: jax.tree_util.tree_map(lambda *a: jnp.stack(a), *xs)  # noqa: E731

    batched, bm = jax.jit(jax.vmap(ens.fit, in_axes=(None, 0, 0, 0)), static_argnums=0)(
        cfg, stack(states), stack(bufs), jnp.stack(keys)
    )
    assert bm["model/fit_steps"].shape == (2,) and batched.elites.shape == (2, 2)
    steps = np.asarray(bm["model/fit_steps"])
    assert steps[0] == (1 + 1 + 1) * 10 and steps[1] > steps[0], steps
    for i in range(2):
        one, m = FIT(cfg, states[i], bufs[i], keys[i])
        assert int(m["model/fit_steps"]) == steps[i]
        np.testing.assert_array_equal(batched.elites[i], one.elites)
        assert len(set(np.asarray(one.elites).tolist())) == 2
        for a, b in zip(leaves(jax.tree_util.tree_map(lambda x: x[i], batched.params)), leaves(one.params)):
            # Batched matmuls reassociate sums; Adam's normalised steps carry that float noise along.
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(bm["model/holdout_loss"][i], m["model/holdout_loss"], rtol=1e-3)


# --- prediction -----------------------------------------------------------------------


@pytest.mark.parametrize("target_norm", [False, True])
@pytest.mark.parametrize("direct", [False, True])
def test_predict_and_sample_step_convert_targets(target_norm, direct):
    cfg = ens.ModelConfig(ensemble_size=2, num_elites=2, width=4, depth=1,
                          target_norm=target_norm, direct_next_state=direct)  # fmt: skip
    m = np.array([0.5, -1.0, 2.0, 0.25])
    # Raw log-variance -80 with min_logvar -60: variance e^-60, i.e. sampling is deterministic.
    state = planted(cfg, np.stack([m, m]), np.full((2, D), -80.0), min_logvar=-60.0)
    tmean, tstd = np.array([10.0, -20.0, 0.0, 0.01]), np.array([100.0, 2.0, 1.0, 1e-3])
    if target_norm:
        state = state.replace(target_norm=nz.Normalizer(jnp.float32(tmean), jnp.float32(tstd)))
    state = state.replace(input_norm=nz.Normalizer(jnp.full(5, 3.0), jnp.full(5, 7.0)))  # irrelevant: zero kernels
    y = m * tstd + tmean if target_norm else m  # original units

    obs = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, OBS_DIM)), jnp.float32)
    action = jnp.ones((2, 5, ACTION_DIM))
    mean, var = PREDICT(cfg, state, obs, action)
    assert mean.shape == var.shape == (2, 2, 5, D)
    np.testing.assert_allclose(mean, np.broadcast_to(y, mean.shape), rtol=1e-6)
    lv = -60.0 + np_softplus((0.5 - np_softplus(0.5 + 80.0)) + 60.0)
    var_y = np.exp(lv) * (tstd**2 if target_norm else 1.0)
    np.testing.assert_allclose(var, np.broadcast_to(var_y, var.shape), rtol=1e-4)

    next_obs, reward = SAMPLE(cfg, state, obs, action, jax.random.key(0))
    assert next_obs.shape == (2, 5, OBS_DIM) and reward.shape == (2, 5)
    expected_next = y[:OBS_DIM] if direct else np.asarray(obs) + y[:OBS_DIM]
    np.testing.assert_allclose(next_obs, np.broadcast_to(expected_next, next_obs.shape), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(reward, y[-1], rtol=1e-5)


def test_sample_step_draws_only_elites_uniformly():
    cfg = ens.ModelConfig(ensemble_size=4, num_elites=2, width=4, depth=1)
    means = np.array([1000.0, 1.0, 1002.0, 3.0])[:, None] * np.ones(D)  # 0 and 2 are garbage
    state = planted(cfg, means, np.full((4, D), -80.0), min_logvar=-60.0)
    state = state.replace(elites=jnp.array([1, 3], jnp.int32))
    n = 4000
    _, reward = SAMPLE(cfg, state, jnp.zeros((n, OBS_DIM)), jnp.zeros((n, ACTION_DIM)), jax.random.key(0))
    reward = np.asarray(reward)
    assert np.all(np.isclose(reward, 1.0) | np.isclose(reward, 3.0))
    assert 0.45 < np.isclose(reward, 1.0).mean() < 0.55


def test_sample_step_noise_has_the_predicted_variance():
    cfg = ens.ModelConfig(ensemble_size=2, num_elites=2, width=4, depth=1, direct_next_state=True)
    state = planted(cfg, np.zeros((2, D)), np.full((2, D), np.log(0.25)))  # within bounds: var ~ 0.25
    state = state.replace(target_norm=nz.Normalizer(jnp.zeros(D), jnp.full(D, 2.0)))  # var x 4
    _, var = PREDICT(cfg, state, jnp.zeros((1, OBS_DIM)), jnp.zeros((1, ACTION_DIM)))
    n = 20000
    obs, action = jnp.zeros((n, OBS_DIM)), jnp.zeros((n, ACTION_DIM))
    next_obs, reward = SAMPLE(cfg, state, obs, action, jax.random.key(1))
    np.testing.assert_allclose(np.var(np.asarray(next_obs), 0), var[0, 0, :OBS_DIM], rtol=0.05)
    np.testing.assert_allclose(np.var(np.asarray(reward)), var[0, 0, -1], rtol=0.05)


@pytest.mark.parametrize("direct", [False, True])
def test_diagnostics_against_numpy(direct):
    cfg = ens.ModelConfig(ensemble_size=3, num_elites=2, width=4, depth=1, direct_next_state=direct)
    rng = np.random.default_rng(0)
    means = rng.normal(size=(3, D))
    means[1] = 1e3  # not an elite: must not enter any metric
    raw = rng.normal(size=(3, D)) - 1.0
    state = planted(cfg, means, raw).replace(elites=jnp.array([2, 0], jnp.int32))
    t = linear_data(16, seed=3)
    d = DIAGNOSTICS(cfg, state, t)

    pred = means[[0, 2]].mean(0)
    obs, nxt, r = (np.asarray(a, np.float64) for a in (t.obs, t.next_obs, t.reward))
    true_state = nxt if direct else nxt - obs
    pred_next = pred[:OBS_DIM] if direct else obs + pred[:OBS_DIM]
    pct = 100 * np.linalg.norm(pred[:OBS_DIM] - true_state, axis=-1) / np.linalg.norm(true_state, axis=-1)
    pct_next = 100 * np.linalg.norm(pred_next - nxt, axis=-1) / np.linalg.norm(nxt, axis=-1)
    lv = 0.5 - np_softplus(0.5 - raw[[0, 2]])
    var = np.exp(-10.0 + np_softplus(lv + 10.0))
    np.testing.assert_allclose(d["model/pct_error"], pct.mean(), rtol=1e-5)
    np.testing.assert_allclose(d["model/pct_error_next_state"], pct_next.mean(), rtol=1e-5)
    np.testing.assert_allclose(d["model/reward_mse"], ((pred[-1] - r) ** 2).mean(), rtol=1e-5)
    np.testing.assert_allclose(d["model/var_state"], var[:, :OBS_DIM].mean(), rtol=1e-5)
    np.testing.assert_allclose(d["model/var_reward"], var[:, -1].mean(), rtol=1e-5)


def test_reset_gives_fresh_params_and_optimiser_and_keeps_normalisers():
    cfg = ens.ModelConfig(ensemble_size=2, num_elites=1, width=4, depth=1)
    state = INIT(jax.random.key(0), OBS_DIM, ACTION_DIM, cfg)
    norm = nz.Normalizer(jnp.arange(5.0), jnp.full(5, 2.0))
    tnorm = nz.Normalizer(jnp.arange(4.0), jnp.full(4, 3.0))
    grads = jax.tree_util.tree_map(jnp.ones_like, state.params)
    _, opt_state = ens.make_optimizer(cfg).update(grads, state.opt_state, state.params)
    state = state.replace(input_norm=norm, target_norm=tnorm, opt_state=opt_state)
    state = state.replace(elites=jnp.array([1], jnp.int32))
    new = jax.jit(ens.reset, static_argnums=0)(cfg, state, jax.random.key(5))
    assert not np.allclose(new.params["layers"][0]["kernel"], state.params["layers"][0]["kernel"])
    fresh = INIT(jax.random.key(5), OBS_DIM, ACTION_DIM, cfg)
    for a, b in zip(leaves(new.params) + leaves(new.opt_state), leaves(fresh.params) + leaves(fresh.opt_state)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(new.input_norm.mean, norm.mean)
    np.testing.assert_array_equal(new.target_norm.std, tnorm.std)
    np.testing.assert_array_equal(new.elites, [0])


@pytest.mark.parametrize("direct", [False, True])
def test_diagnostics_hand_values(direct):
    """s = (3, 0, 0), s' = (3, 4, 0), r = 1; every elite predicts s' off by (0, 0.4, 0) and r = 1.5.

    By hand: the state error is 0.4, so 100 * 0.4 / ||s' - s|| = 10% on the residual target,
    100 * 0.4 / ||s'|| = 8% on s' (and on the direct target), and the reward MSE is 0.25.
    """
    cfg = ens.ModelConfig(ensemble_size=3, num_elites=2, width=4, depth=1, direct_next_state=direct)
    n = 5
    obs = np.tile([3.0, 0.0, 0.0], (n, 1))
    nxt = np.tile([3.0, 4.0, 0.0], (n, 1))
    t = Transition(obs=jnp.asarray(obs, jnp.float32), action=jnp.zeros((n, ACTION_DIM), jnp.float32),
                   reward=jnp.ones(n, jnp.float32), next_obs=jnp.asarray(nxt, jnp.float32),
                   discount=jnp.ones(n, jnp.float32))
    state_pred = [3.0, 4.4, 0.0] if direct else [0.0, 4.4, 0.0]
    means = np.tile(state_pred + [1.5], (3, 1))
    means[1] = 50.0  # not an elite
    state = planted(cfg, means, np.zeros((3, D))).replace(elites=jnp.array([0, 2], jnp.int32))
    d = DIAGNOSTICS(cfg, state, t)
    assert float(d["model/pct_error"]) == pytest.approx(8.0 if direct else 10.0, rel=1e-5)
    assert float(d["model/pct_error_next_state"]) == pytest.approx(8.0, rel=1e-5)
    assert float(d["model/reward_mse"]) == pytest.approx(0.25, rel=1e-5)
