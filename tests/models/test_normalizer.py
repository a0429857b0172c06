"""Normaliser statistics against numpy, the std floor, masking and the round trip."""

import jax
import jax.numpy as jnp
import numpy as np

from dynalab.models import normalizer as nz


def data(n=12, dim=3, seed=0):
    rng = np.random.default_rng(seed)
    # Large offsets and very different scales per dim, as raw observations have.
    return (rng.normal(size=(n, dim)) * [1.0, 1e3, 1e-2] + [5.0, -2e3, 0.1]).astype(np.float32)


def test_stats_match_numpy_on_the_masked_rows_only():
    x = data()
    x[7:] = 1e6  # unfilled buffer slots: must not leak into the statistics
    n = nz.from_data(jnp.asarray(x), jnp.arange(12) < 7)
    ref = x[:7].astype(np.float64)
    np.testing.assert_allclose(n.mean, ref.mean(0), rtol=1e-5)
    np.testing.assert_allclose(n.std, ref.std(0), rtol=1e-4)  # population std (ddof 0)


def test_round_trip_and_unit_statistics():
    x = jnp.asarray(data())
    n = nz.from_data(x)
    z = nz.normalize(n, x)
    np.testing.assert_allclose(np.mean(z, 0), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.std(z, 0), 1.0, rtol=1e-4)
    np.testing.assert_allclose(nz.denormalize(n, z) / n.std, x / n.std, atol=1e-4)  # per-dim scale
    # A variance scales by std^2.
    np.testing.assert_allclose(nz.denormalize_var(n, jnp.ones(3)), np.square(n.std), rtol=1e-6)


def test_constant_column_gets_std_one_and_normalises_to_exactly_zero():
    x = data()
    x[:, 1] = 1234.5678
    n = nz.from_data(jnp.asarray(x))
    assert float(n.std[1]) == 1.0
    assert float(n.mean[1]) == np.float32(1234.5678)
    np.testing.assert_array_equal(nz.normalize(n, jnp.asarray(x))[:, 1], 0.0)
    # A spread below the floor (1e-6) is treated as constant too.
    x[:, 2] = 1.0 + 1e-8 * np.arange(12)
    assert float(nz.from_data(jnp.asarray(x)).std[2]) == 1.0


def test_identity_and_concat():
    idn = nz.identity(4)
    x = jnp.arange(8.0).reshape(2, 4)
    np.testing.assert_array_equal(nz.normalize(idn, x), x)
    np.testing.assert_array_equal(nz.denormalize(idn, x), x)
    a = nz.Normalizer(mean=jnp.array([1.0]), std=jnp.array([2.0]))
    b = nz.Normalizer(mean=jnp.array([3.0, 4.0]), std=jnp.array([5.0, 6.0]))
    c = nz.concat(a, b)
    np.testing.assert_array_equal(c.mean, [1.0, 3.0, 4.0])
    np.testing.assert_array_equal(c.std, [2.0, 5.0, 6.0])


def test_jit_and_vmap_with_dynamic_fill():
    x = jnp.asarray(np.stack([data(seed=0), data(seed=1)]))
    sizes = jnp.array([5, 12])
    fn = jax.jit(jax.vmap(lambda x, s: nz.from_data(x, jnp.arange(12) < s)))
    n = fn(x, sizes)
    for i, s in enumerate([5, 12]):
        ref = np.asarray(x[i, :s], np.float64)
        np.testing.assert_allclose(n.mean[i], ref.mean(0), rtol=1e-5)
        np.testing.assert_allclose(n.std[i], ref.std(0), rtol=1e-4)
