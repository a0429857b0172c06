"""Ring-buffer semantics: wrap-around, batched writes, sampling support, vmap/jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynalab import replay
from dynalab.types import Transition


def item(i: float) -> Transition:
    """A transition whose every field encodes the index i (so sampled rows are identifiable)."""
    i = jnp.float32(i)
    return Transition(
        obs=jnp.full((3,), i),
        action=jnp.full((2,), -i),
        reward=i,
        next_obs=jnp.full((3,), i + 0.5),
        discount=jnp.float32(1.0),
    )


def items(ids) -> Transition:
    return jax.vmap(item)(jnp.asarray(ids, jnp.float32))


def empty(capacity: int) -> replay.ReplayBuffer:
    return replay.init_buffer(capacity, item(0))


def test_init_buffer_shapes_and_dtypes():
    buf = replay.init_buffer(4, item(7).replace(discount=jnp.int32(1)))
    assert buf.data.obs.shape == (4, 3) and buf.data.action.shape == (4, 2) and buf.data.reward.shape == (4,)
    assert buf.data.discount.dtype == jnp.int32  # dtypes follow the example
    np.testing.assert_array_equal(buf.data.obs, 0.0)  # zeros, not copies of the example
    assert buf.position.dtype == jnp.int32 and buf.size.dtype == jnp.int32
    assert int(buf.size) == 0 and replay.capacity(buf) == 4


def test_add_wraps_around():
    buf = empty(5)
    add = jax.jit(replay.add)
    for i in range(7):
        buf = add(buf, item(i))
    # Items 0 and 1 (the oldest) were overwritten by 5 and 6.
    np.testing.assert_array_equal(buf.data.reward, [5, 6, 2, 3, 4])
    np.testing.assert_array_equal(buf.data.obs[:, 0], [5, 6, 2, 3, 4])
    assert int(buf.position) == 2 and int(buf.size) == 5


def test_size_grows_until_full():
    buf = empty(5)
    for i in range(3):
        buf = replay.add(buf, item(i))
    assert int(buf.size) == 3 and int(buf.position) == 3


@pytest.mark.parametrize("prefill, k", [(0, 3), (3, 4), (4, 5), (2, 12), (0, 5)])
def test_add_batch_equals_repeated_add(prefill, k):
    start = empty(5)
    for i in range(prefill):
        start = replay.add(start, item(100 + i))
    expected = start
    for i in range(k):
        expected = replay.add(expected, item(i))
    got = jax.jit(replay.add_batch)(start, items(range(k)))
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_array_equal(a, b)


def test_sample_only_from_filled_part_and_roughly_uniform():
    buf = replay.add_batch(empty(10), items([0, 1, 2]))
    batch = jax.jit(replay.sample, static_argnums=2)(buf, jax.random.key(0), 3000)
    ids = np.asarray(batch.reward).astype(int)
    assert set(ids) <= {0, 1, 2}
    counts = np.bincount(ids, minlength=3)
    assert np.all(np.abs(counts - 1000) < 150), counts  # ~8 sigma for Binomial(3000, 1/3)
    # Rows stay aligned across fields.
    np.testing.assert_array_equal(batch.obs[:, 0], batch.reward)
    np.testing.assert_array_equal(batch.next_obs[:, 0], batch.reward + 0.5)


def test_sample_covers_all_entries_after_wrap():
    buf = replay.add_batch(empty(4), items(range(6)))  # holds 4, 5, 2, 3
    ids = set(np.asarray(replay.sample(buf, jax.random.key(1), 500).reward).astype(int))
    assert ids == {2, 3, 4, 5}


def test_vmap_over_seeds_under_jit():
    seeds = 3
    bufs = jax.vmap(lambda _: empty(6))(jnp.arange(seeds))
    # Seed s writes ids 10*s + j, so a sample can be traced back to its seed.
    per_seed = jax.vmap(lambda s: items(10 * s + jnp.arange(4)))(jnp.arange(seeds).astype(jnp.float32))

    @jax.jit
    def step(bufs, t, keys):
        bufs = jax.vmap(replay.add_batch)(bufs, t)
        bufs = jax.vmap(replay.add)(bufs, jax.tree_util.tree_map(lambda x: x[:, 0], t))
        return bufs, jax.vmap(replay.sample, in_axes=(0, 0, None))(bufs, keys, 200)

    bufs, batch = step(bufs, per_seed, jax.random.split(jax.random.key(0), seeds))
    assert bufs.data.obs.shape == (seeds, 6, 3)
    np.testing.assert_array_equal(bufs.size, [5] * seeds)
    np.testing.assert_array_equal(bufs.position, [5] * seeds)
    for s in range(seeds):
        assert set(np.asarray(batch.reward[s]).astype(int)) <= {10 * s + j for j in range(4)}


def test_arbitrary_pytree_data():
    example = {"x": jnp.zeros((2,)), "flag": jnp.array(False)}
    buf = replay.init_buffer(3, example)
    new = {"x": jnp.ones((4, 2)) * jnp.arange(4.0)[:, None], "flag": jnp.array([True, False, True, False])}
    buf = replay.add_batch(buf, new)
    np.testing.assert_array_equal(buf.data["x"][:, 0], [3, 1, 2])
    np.testing.assert_array_equal(buf.data["flag"], [False, False, True])
    assert buf.data["flag"].dtype == jnp.bool_
    assert replay.sample(buf, jax.random.key(0), 5)["x"].shape == (5, 2)


def test_add_masked_packs_only_selected_items_and_wraps():
    add, add_masked = replay.add, replay.add_masked
    buf = replay.init_buffer(5, jnp.zeros(()))
    buf = add(add(add(buf, 1.0), 2.0), 3.0)  # position 3
    items = jnp.array([10.0, 11.0, 12.0, 13.0])
    mask = jnp.array([True, False, True, True])
    out = jax.jit(add_masked)(buf, items, mask)
    # 10 -> slot 3, 12 -> slot 4, 13 wraps to slot 0 (overwriting 1.0); 11 is dropped.
    np.testing.assert_array_equal(out.data, [13.0, 2.0, 3.0, 10.0, 12.0])
    assert int(out.position) == 1 and int(out.size) == 5
    none = add_masked(buf, items, jnp.zeros(4, bool))
    np.testing.assert_array_equal(none.data, buf.data)
    assert int(none.position) == 3 and int(none.size) == 3


def test_sample_recent_draws_only_the_newest_window_of_a_wrapped_ring():
    from dynalab.replay import add_batch, init_buffer, sample_recent

    buf = init_buffer(8, jnp.zeros(()))
    buf = add_batch(buf, jnp.arange(11.0))  # items 0..10 in a ring of 8: slots hold 8, 9, 10, 3, ..., 7
    drawn = np.asarray(sample_recent(buf, jax.random.key(0), 2000, jnp.int32(3)))
    assert set(drawn.tolist()) == {8.0, 9.0, 10.0}  # the three newest, across the wrap
    drawn = np.asarray(sample_recent(buf, jax.random.key(1), 2000, jnp.int32(100)))  # window > size
    assert set(drawn.tolist()) == set(np.arange(3.0, 11.0).tolist())
