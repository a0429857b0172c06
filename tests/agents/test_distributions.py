"""Tanh-Gaussian helpers against float64 numpy references (change of variables)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynalab.agents.distributions import (
    tanh_gaussian_action_log_prob,
    tanh_gaussian_log_prob,
    tanh_gaussian_sample,
)


def trapezoid(y, x):
    # np.trapezoid needs numpy >= 2; the project allows 1.26.
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)))


def np_normal_logpdf(x, mu, sigma):
    return -0.5 * ((x - mu) / sigma) ** 2 - np.log(sigma) - 0.5 * np.log(2 * np.pi)


def np_tanh_gaussian_logpdf(a, mu, sigma):
    """Change of variables: log N(atanh(a); mu, sigma) - log(1 - a^2), per dimension."""
    return np_normal_logpdf(np.arctanh(a), mu, sigma) - np.log1p(-(a**2))


@pytest.mark.parametrize("mu, log_std", [(0.0, 0.0), (0.3, -0.5), (-1.2, 0.7), (2.0, -2.0)])
def test_log_prob_1d_matches_change_of_variables(mu, log_std):
    a = np.linspace(-0.995, 0.995, 41)
    expected = np_tanh_gaussian_logpdf(a, mu, np.exp(log_std))
    mean = jnp.full((a.size, 1), mu, jnp.float32)
    ls = jnp.full((a.size, 1), log_std, jnp.float32)
    from_action = tanh_gaussian_action_log_prob(mean, ls, jnp.asarray(a[:, None], jnp.float32))
    from_pre_tanh = tanh_gaussian_log_prob(mean, ls, jnp.asarray(np.arctanh(a)[:, None], jnp.float32))
    np.testing.assert_allclose(from_pre_tanh, expected, rtol=1e-5, atol=1e-5)
    # atanh of a float32 action near +-1 loses a few digits; looser there.
    np.testing.assert_allclose(from_action, expected, rtol=1e-4, atol=1e-3)


def test_log_prob_multid_is_sum_over_dims():
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(5, 3))
    log_std = rng.uniform(-1.0, 0.5, size=(5, 3))
    a = rng.uniform(-0.95, 0.95, size=(5, 3))
    expected = np_tanh_gaussian_logpdf(a, mu, np.exp(log_std)).sum(-1)
    got = tanh_gaussian_log_prob(
        jnp.asarray(mu, jnp.float32), jnp.asarray(log_std, jnp.float32), jnp.asarray(np.arctanh(a), jnp.float32)
    )
    assert got.shape == (5,)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_log_prob_stable_for_saturated_pre_tanh():
    # Naive log(1 - tanh(u)^2) is -inf in float32 here; the exact value is log 4 - 2|u| + O(e^-2|u|).
    u = jnp.array([[-30.0], [25.0]])
    got = tanh_gaussian_log_prob(jnp.zeros_like(u), jnp.zeros_like(u), u)
    expected = np_normal_logpdf(np.asarray(u[:, 0], np.float64), 0.0, 1.0) - (np.log(4.0) - 2 * np.abs(u[:, 0]))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    grads = jax.grad(lambda u: tanh_gaussian_log_prob(jnp.zeros_like(u), jnp.zeros_like(u), u).sum())(u)
    assert np.all(np.isfinite(grads))


@pytest.mark.parametrize("mu, log_std", [(0.0, 0.0), (0.5, -0.3), (-0.8, -1.5), (1.0, -0.25)])
def test_density_integrates_to_one(mu, log_std):
    a = np.linspace(-1.0, 1.0, 400_001)[1:-1]
    mean = jnp.full((a.size, 1), mu, jnp.float32)
    ls = jnp.full((a.size, 1), log_std, jnp.float32)
    logp = tanh_gaussian_log_prob(mean, ls, jnp.asarray(np.arctanh(a)[:, None], jnp.float32))
    total = trapezoid(np.exp(np.asarray(logp, np.float64)), a)
    assert abs(total - 1.0) < 1e-3


def test_sample_reuses_normal_noise_and_log_prob():
    key = jax.random.key(3)
    mean = jnp.array([[0.1, -0.4], [1.5, 0.0], [-2.0, 0.3]])
    log_std = jnp.array([[-0.5, 0.2], [0.0, -3.0], [1.0, -10.0]])
    action, log_prob = tanh_gaussian_sample(key, mean, log_std)
    # The documented noise contract: u = mean + std * normal(key, mean.shape).
    u = np.asarray(mean, np.float64) + np.exp(np.asarray(log_std, np.float64)) * np.asarray(
        jax.random.normal(key, mean.shape), np.float64
    )
    np.testing.assert_allclose(action, np.tanh(u), rtol=1e-6, atol=1e-7)
    # -log(1 - tanh^2 u) = 2 log cosh u = 2 (logaddexp(u, -u) - log 2): independent of the library's softplus form.
    log_cosh = np.logaddexp(u, -u) - np.log(2.0)
    expected = (np_normal_logpdf(u, np.asarray(mean), np.exp(np.asarray(log_std))) + 2 * log_cosh).sum(-1)
    np.testing.assert_allclose(log_prob, expected, rtol=1e-5, atol=1e-4)
    assert action.shape == (3, 2) and log_prob.shape == (3,)


def test_sampler_matches_density():
    mu, log_std, n = 0.4, -0.3, 200_000
    action, _ = tanh_gaussian_sample(
        jax.random.key(0), jnp.full((n, 1), mu), jnp.full((n, 1), log_std)
    )
    action = np.asarray(action[:, 0], np.float64)
    assert np.all(np.abs(action) < 1.0)

    a = np.linspace(-1.0, 1.0, 200_001)[1:-1]
    pdf = np.exp(np_tanh_gaussian_logpdf(a, mu, np.exp(log_std)))
    np.testing.assert_allclose(action.mean(), trapezoid(a * pdf, a), atol=5e-3)

    edges = np.linspace(-1.0, 1.0, 21)
    hist, _ = np.histogram(action, bins=edges, density=True)
    in_bin = [(a >= lo) & (a < hi) for lo, hi in zip(edges[:-1], edges[1:])]
    bin_pdf = np.array([trapezoid(pdf[m], a[m]) for m in in_bin]) / np.diff(edges)
    np.testing.assert_allclose(hist, bin_pdf, atol=0.05)
