"""Sequences of consecutive real transitions from a device-resident replay ring (for ALM).

ALM's model loss needs B sequences of K consecutive transitions (s0, a0, s1, ..., a_K-1, s_K) of
one episode. The replay ring (`dynalab.replay`) stores single transitions, one per env step and
seed, in the order the loop hands them over. This module adds, per stored row, one bool `first`
("this row does not continue the row stored just before it"), and samples uniformly over the
valid starts, on the device (jit- and vmap-able; shapes static).

The episode-boundary interface, and why
---------------------------------------
The loop gives a learner, per env step, `Transition(obs, action, reward, next_obs, discount)` and
a `valid` flag (False: the simulator diverged; the transition must not be stored). An episode end
by time limit is not visible in it (`discount` is 1 there: time-limit ends bootstrap), and a
dropped (diverged) step leaves no row at all. Rather than widen the loop-learner interface for
every algorithm, the learner detects a seam when it stores a row:

    first = (buffer empty) | (previous stored row's discount == 0)
            | any(obs != previous stored row's next_obs)          # exact, bitwise

Within an episode the loop's `obs` of step k + 1 is the very float32 array it reported as
`next_obs` of step k (`envs/batch.py`: `obs[i] = o`), so the comparison is exact equality by
construction, and it holds across a checkpoint resume. After any end (termination, time limit,
a diverged step, whose episode the loop resets) the new row's `obs` is the next episode's reset
observation, which differs from the stored `next_obs` for every task with a randomised initial
state (all Gym and DMC tasks dynalab runs). The discount test makes a termination a seam even if
a reset observation happened to coincide. A caller that knows the boundary can pass `first`
explicitly to `add`.

Why `first` and not `last` ("the episode ended at this row"): `last` of a row is only known when
the next row arrives (a time-limit end looks like any other step), so it would need a second
write into the previous row; `first` is known when its own row is written, and the newest row
never needs updating.

Valid starts. Ring index j (capacity C, write position p, size n; the oldest row is (p - n) mod
C) is a valid start of a length-K sequence iff
  1. its rows j, j+1, ..., j+K-1 (mod C) are K consecutive rows in write order: the rank
     (j - oldest) mod C satisfies rank + K <= n. This never crosses the write position, where
     the newest row sits next to the oldest surviving one (old data overwritten by new), also
     across the ring's wrap-around; and
  2. none of rows j+1, ..., j+K-1 is `first` (j itself may be).
Sampling draws B starts uniformly with replacement from the valid ones (an integer cumulative
sum over the C flags, then a binary search: exact, O(C) per call). The newest row may end a
sequence; the last row of a sequence may be terminal (its s_K is the terminal observation), as in
the authors' code, which refuses a sequence only when a terminal sits inside it
(`utils/replay_buffer.py`, `_sample_idx`: `not terminal[idxs[:-1]].any()`). That code does not
see time-limit ends, so its sequences can cross them; not crossing them is the correct behaviour
and changes about 0.2% of the sequences on 1000-step DMC episodes with K = 3.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from dynalab import replay
from dynalab.replay import ReplayBuffer, capacity


@struct.dataclass
class Row:
    """One stored row: the transition and whether it starts a run of consecutive rows."""

    transition: Any  # a Transition (needs obs, next_obs, discount)
    first: jax.Array  # bool scalar


def init_buffer(capacity: int, example: Any) -> ReplayBuffer:
    """An empty ring of `Row`s whose transitions are shaped like `example` (one item)."""
    return replay.init_buffer(capacity, Row(transition=example, first=jnp.bool_(True)))


def starts_episode(buf: ReplayBuffer, t: Any) -> jax.Array:
    """Whether `t`, stored next, does not continue the last stored row (see the module docstring)."""
    prev = jax.tree.map(lambda d: d[(buf.position - 1) % capacity(buf)], buf.data.transition)
    return (buf.size == 0) | (prev.discount == 0) | jnp.any(t.obs != prev.next_obs)


def add(
    buf: ReplayBuffer, t: Any, where: jax.Array | bool = True, first: jax.Array | bool | None = None
) -> ReplayBuffer:
    """Store transition `t` (unless `where` is False: then the buffer is unchanged) with its
    `first` flag, detected by `starts_episode` unless given."""
    if first is None:
        first = starts_episode(buf, t)
    return replay.add(buf, Row(transition=t, first=jnp.asarray(first, jnp.bool_)), where)


def valid_starts(buf: ReplayBuffer, length: int) -> jax.Array:
    """bool (capacity,): which ring indices start a valid sequence of `length` rows."""
    cap = capacity(buf)
    oldest = (buf.position - buf.size) % cap
    rank = (jnp.arange(cap) - oldest) % cap
    ok = rank + length <= buf.size
    first = buf.data.first
    for i in range(1, length):
        ok = ok & ~jnp.roll(first, -i)  # first[(j + i) % cap]
    return ok


def num_valid_starts(buf: ReplayBuffer, length: int) -> jax.Array:
    return jnp.sum(valid_starts(buf, length).astype(jnp.int32))


def sample_starts(buf: ReplayBuffer, key: jax.Array, batch_size: int, length: int) -> jax.Array:
    """int32 (batch_size,): ring indices drawn uniformly, with replacement, from the valid starts.

    Exactly uniform: u ~ randint(0, n_valid) (drawn with `key`), and the start is the (u+1)-th
    valid index. With no valid start (fewer than `length` consecutive rows stored) the indices
    are meaningless; check `num_valid_starts` first if that can happen.
    """
    count = jnp.cumsum(valid_starts(buf, length).astype(jnp.int32))
    u = jax.random.randint(key, (batch_size,), 0, jnp.maximum(count[-1], 1))
    idx = jnp.searchsorted(count, u + 1, side="left").astype(jnp.int32)
    return jnp.minimum(idx, capacity(buf) - 1)


def gather_sequences(buf: ReplayBuffer, starts: jax.Array, length: int) -> Any:
    """The transitions of rows start, ..., start + length - 1 (mod capacity): leaves (B, length, ...)."""
    idx = (starts[:, None] + jnp.arange(length)) % capacity(buf)
    return jax.tree.map(lambda d: d[idx], buf.data.transition)


def sample_sequences(buf: ReplayBuffer, key: jax.Array, batch_size: int, length: int) -> Any:
    """B sequences of `length` consecutive transitions of one episode, leaves (B, length, ...).

    Step t of a sequence is a transition (s_t, a_t, r_t, s_t+1, d_t); s_t+1 is its next_obs,
    equal to step t+1's obs.
    """
    return gather_sequences(buf, sample_starts(buf, key, batch_size, length), length)


def sample_transitions(buf: ReplayBuffer, key: jax.Array, batch_size: int) -> Any:
    """Single transitions drawn uniformly with replacement from the stored rows, leaves (B, ...)."""
    return replay.sample(buf, key, batch_size).transition
