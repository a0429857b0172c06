"""Device-resident ring buffer of transitions (one per seed; vmap it over seeds).

Every leaf of `data` carries a leading `capacity` axis; capacity is static (read from
the array shapes), so all operations jit and vmap. Works for any pytree of arrays,
not only `Transition`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


class ReplayBuffer(struct.PyTreeNode):
    data: Any  # a Transition (or any pytree), each leaf shaped (capacity, ...)
    position: jax.Array  # int32 scalar, the next index to write
    size: jax.Array  # int32 scalar, number of filled entries (<= capacity)
    # uint32 scalar: items ever written, modulo 2**32. Learning never reads it; checkpoints use the
    # difference between two counts to find the rows written in between (checkpoint.py).
    count: jax.Array


def capacity(buf: ReplayBuffer) -> int:
    return jax.tree_util.tree_leaves(buf.data)[0].shape[0]


def init_buffer(capacity: int, example: Any) -> ReplayBuffer:
    """An empty buffer whose entries are zeros shaped and typed like `example` (one item)."""
    data = jax.tree_util.tree_map(
        lambda x: jnp.zeros((capacity, *jnp.shape(x)), jnp.asarray(x).dtype), example
    )
    return ReplayBuffer(data=data, position=jnp.int32(0), size=jnp.int32(0), count=jnp.uint32(0))


def add(buf: ReplayBuffer, t: Any, where: jax.Array | bool = True) -> ReplayBuffer:
    """Write one item at `position`, overwriting the oldest entry once full.

    With `where` False (a traced bool is fine) nothing is written and the buffer is unchanged:
    how a transition that must never be learned from (a diverged simulator step) is dropped.
    """
    cap = capacity(buf)
    if where is True:
        data = jax.tree_util.tree_map(lambda d, x: d.at[buf.position].set(x), buf.data, t)
        n = 1
    else:
        idx = jnp.where(where, buf.position, cap)  # out of bounds: dropped
        data = jax.tree_util.tree_map(lambda d, x: d.at[idx].set(x, mode="drop"), buf.data, t)
        n = jnp.asarray(where).astype(jnp.int32)
    return buf.replace(
        data=data,
        position=(buf.position + n) % cap,
        size=jnp.minimum(buf.size + n, cap),
        count=buf.count + jnp.asarray(n).astype(jnp.uint32),
    )


def add_batch(buf: ReplayBuffer, t: Any) -> ReplayBuffer:
    """Write k items (leading axis k) in order; same result as k calls to `add`."""
    cap = capacity(buf)
    k = jax.tree_util.tree_leaves(t)[0].shape[0]
    # With k > capacity only the last `capacity` items survive; dropping the rest
    # statically keeps the scatter indices unique (duplicate-index order is unspecified).
    skip = max(k - cap, 0)
    if skip:
        t = jax.tree_util.tree_map(lambda x: x[skip:], t)
    idx = (buf.position + skip + jnp.arange(k - skip)) % cap
    data = jax.tree_util.tree_map(lambda d, x: d.at[idx].set(x), buf.data, t)
    return buf.replace(
        data=data,
        position=(buf.position + k) % cap,
        size=jnp.minimum(buf.size + k, cap),
        count=buf.count + jnp.uint32(k),
    )


def add_masked(buf: ReplayBuffer, t: Any, mask: jax.Array) -> ReplayBuffer:
    """Write only the items where `mask` is True, in order, packed after `position`.

    Shapes stay static: unwanted items are scattered out of bounds and dropped. Used for
    multi-step rollouts, whose terminated branches stop producing transitions. Assumes
    k <= capacity.
    """
    cap = capacity(buf)
    offset = jnp.cumsum(mask) - 1
    n = jnp.sum(mask).astype(jnp.int32)
    idx = jnp.where(mask, (buf.position + offset) % cap, cap)
    data = jax.tree_util.tree_map(lambda d, x: d.at[idx].set(x, mode="drop"), buf.data, t)
    return buf.replace(
        data=data,
        position=(buf.position + n) % cap,
        size=jnp.minimum(buf.size + n, cap),
        count=buf.count + jnp.asarray(n).astype(jnp.uint32),
    )


def sample(buf: ReplayBuffer, key: jax.Array, batch_size: int) -> Any:
    """Uniform sample with replacement from the filled entries [0, size).

    An empty buffer returns copies of entry 0 (zeros); callers should fill it first.
    """
    idx = jax.random.randint(key, (batch_size,), 0, jnp.maximum(buf.size, 1))
    return jax.tree_util.tree_map(lambda d: d[idx], buf.data)


def sample_recent(buf: ReplayBuffer, key: jax.Array, batch_size: int, window: jax.Array | int | None) -> Any:
    """Uniform sample with replacement from the newest min(window, size) entries.

    The ring buffer then acts as a FIFO of dynamic length `window` (e.g. MBPO's model pool,
    whose size follows the rollout horizon) inside a static allocation. `window=None` is
    `sample`. An empty buffer returns copies of its last slot (zeros).
    """
    if window is None:
        return sample(buf, key, batch_size)
    n = jnp.maximum(jnp.minimum(window, buf.size), 1)
    back = jax.random.randint(key, (batch_size,), 0, n)
    idx = (buf.position - 1 - back) % capacity(buf)
    return jax.tree_util.tree_map(lambda d: d[idx], buf.data)
