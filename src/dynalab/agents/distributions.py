"""Tanh-squashed diagonal Gaussian: sampling and log-densities.

The squashed action is a = tanh(u) with u ~ N(mean, exp(log_std)^2). By change of
variables log p(a) = log N(u) - sum_i log(1 - tanh(u_i)^2), and we evaluate the
Jacobian term as 2 * (log 2 - u - softplus(-2u)), which is exact and stays finite
for |u| large, where 1 - tanh(u)^2 underflows to 0 in float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def tanh_log_det_jacobian(pre_tanh: jax.Array) -> jax.Array:
    """Elementwise log |d tanh(u) / du| = log(1 - tanh(u)^2), computed stably."""
    return 2.0 * (math.log(2.0) - pre_tanh - jax.nn.softplus(-2.0 * pre_tanh))


def _gaussian_log_prob_from_noise(noise: jax.Array, log_std: jax.Array) -> jax.Array:
    # log N(mean + std * noise; mean, std), elementwise; exact from the standardised noise.
    return -0.5 * jnp.square(noise) - log_std - _HALF_LOG_2PI


def tanh_gaussian_log_prob(mean: jax.Array, log_std: jax.Array, pre_tanh: jax.Array) -> jax.Array:
    """log p(tanh(u)) for the pre-squash value u, summed over the last (action) axis."""
    noise = (pre_tanh - mean) * jnp.exp(-log_std)
    elementwise = _gaussian_log_prob_from_noise(noise, log_std) - tanh_log_det_jacobian(pre_tanh)
    return elementwise.sum(axis=-1)


def tanh_gaussian_action_log_prob(
    mean: jax.Array, log_std: jax.Array, action: jax.Array, eps: float = 1e-6
) -> jax.Array:
    """log p(a) for a squashed action in (-1, 1); a is clipped by `eps` so atanh stays finite."""
    pre_tanh = jnp.arctanh(jnp.clip(action, -1.0 + eps, 1.0 - eps))
    return tanh_gaussian_log_prob(mean, log_std, pre_tanh)


def tanh_gaussian_sample(
    key: jax.Array, mean: jax.Array, log_std: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Reparameterised sample a = tanh(mean + std * eps) and its log-prob (summed over actions).

    The noise is exactly `jax.random.normal(key, mean.shape, mean.dtype)`, so a caller
    (or a test) can reproduce a sample from the key alone.
    """
    noise = jax.random.normal(key, mean.shape, mean.dtype)
    pre_tanh = mean + jnp.exp(log_std) * noise
    # Use the noise directly for the Gaussian term rather than (u - mean) / std:
    # identical in exact arithmetic, one rounding step less in float32.
    elementwise = _gaussian_log_prob_from_noise(noise, log_std) - tanh_log_det_jacobian(pre_tanh)
    return jnp.tanh(pre_tanh), elementwise.sum(axis=-1)
