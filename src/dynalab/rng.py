"""Named random streams: the one way dynalab derives independent keys.

In current JAX `split(k, n)[i] == fold_in(k, i)`, so deriving children of one key both ways
makes streams coincide. Every consumer of randomness therefore gets its own named child,
`stream(key, name)`, and a key that is drawn from is never also used to derive others.
"""

from __future__ import annotations

import zlib

import jax


def stream(key: jax.Array, name: str) -> jax.Array:
    """The independent child stream `name` of `key`: fold_in with the CRC-32 of the name.

    Use it for every consumer of randomness; derive children of one key either all with
    `stream` or all with `jax.random.split`, never both (split(k, n)[i] == fold_in(k, i)).
    """
    return jax.random.fold_in(key, zlib.crc32(name.encode()))
