"""Per-dimension standardisation (z-scoring) with statistics from the filled part of a buffer.

A `Normalizer` is a pytree of two arrays shaped like one feature vector, so it jits, vmaps
over seeds and lives inside the model state.

Std floor: a dimension whose std is below `min_std` (default 1e-6) gets std 1, as MBPO's
`TensorStandardScaler` does (sigma < 1e-12 -> 1; 1e-12 is below float32 resolution, hence the
larger default). A constant input then normalises to exactly 0 instead of to amplified noise.
The mean is computed after subtracting the first row, so a constant column has exactly zero
spread in float32 (no cancellation from a large offset).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


class Normalizer(struct.PyTreeNode):
    mean: jax.Array  # (dim,)
    std: jax.Array  # (dim,), strictly positive


def identity(dim: int) -> Normalizer:
    """mean 0, std 1: normalize and denormalize are no-ops."""
    return Normalizer(mean=jnp.zeros((dim,), jnp.float32), std=jnp.ones((dim,), jnp.float32))


def normalize(n: Normalizer, x: jax.Array) -> jax.Array:
    """(x - mean) / std over the last axis."""
    return (x - n.mean) / n.std


def denormalize(n: Normalizer, x: jax.Array) -> jax.Array:
    """x * std + mean: the inverse of `normalize`."""
    return x * n.std + n.mean


def denormalize_var(n: Normalizer, var: jax.Array) -> jax.Array:
    """A variance in normalised units back to original units: var * std^2."""
    return var * jnp.square(n.std)


def from_data(x: jax.Array, mask: jax.Array | None = None, min_std: float = 1e-6) -> Normalizer:
    """Mean and (population) std of the rows of x (N, dim) where mask (N,) is true.

    With no true row the result is the identity-like (x[0], 1); see the module docstring for
    the std floor.
    """
    x = x.astype(jnp.float32)
    w = jnp.ones(x.shape[:1], jnp.float32) if mask is None else mask.astype(jnp.float32)
    count = jnp.maximum(w.sum(), 1.0)
    shift = x[0]  # any data row; removes the offset before summing (exact for constant columns)
    centred = (x - shift) * w[:, None]
    mean_c = centred.sum(0) / count
    var = (jnp.square((x - shift - mean_c) * w[:, None])).sum(0) / count
    std = jnp.sqrt(var)
    std = jnp.where(std < min_std, 1.0, std)
    return Normalizer(mean=shift + mean_c, std=std)


def concat(*norms: Normalizer) -> Normalizer:
    """Normalisers of consecutive feature blocks joined into one (e.g. obs then action)."""
    return Normalizer(
        mean=jnp.concatenate([n.mean for n in norms], -1),
        std=jnp.concatenate([n.std for n in norms], -1),
    )
