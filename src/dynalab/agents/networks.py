"""Actor and twin-critic networks for SAC (flax.linen).

Every Dense layer starts from zero biases and an orthogonal kernel with gain sqrt 2. For the
hidden layers, the critic's output and the actor's mean head this is what D'Oro et al.'s
high-replay-ratio fork of jaxrl does (the base of the STFL code); at replay ratio 1 it learns
markedly faster than flax's LeCun-normal default. The actor's log-std head has its own gain,
`log_std_init_scale`, sqrt 2 by default; that fork and jaxrl use 1 there (see `Actor`).
"""

from __future__ import annotations

import math
from typing import Literal, Sequence, get_args

import flax.linen as nn
import jax
import jax.numpy as jnp


def orthogonal(scale: float = 1.0):
    """Orthogonal kernel init (like flax's) computed with Gram-Schmidt instead of LAPACK QR.

    jaxlib 0.10's CPU runtime can deadlock when a program runs several batched LAPACK QRs
    concurrently (the vmapped critic pair over 4 seeds hangs on its first call), so the
    orthonormalisation is plain JAX: classical Gram-Schmidt applied twice per column, which
    is orthogonal to float precision. R's diagonal is positive by construction, so Q is the
    Haar-distributed factor that QR with the usual sign fix gives.
    """

    def init(key, shape, dtype=jnp.float32):
        rows, cols = math.prod(shape[:-1]), shape[-1]
        tall = (max(rows, cols), min(rows, cols))
        a = jax.random.normal(key, tall, jnp.float32)

        def column(q, j):
            v = a[:, j]
            for _ in range(2):  # "twice is enough" (Giraud et al. 2005)
                v = v - q @ (q.T @ v)
            q = q.at[:, j].set(v / jnp.linalg.norm(v))
            return q, None

        q, _ = jax.lax.scan(column, jnp.zeros(tall, jnp.float32), jnp.arange(tall[1]))
        q = q if rows >= cols else q.T
        return (scale * q).reshape(shape).astype(dtype)

    return init


dense_init = orthogonal(jnp.sqrt(2.0))


def Dense(features: int, name: str | None = None) -> nn.Dense:  # noqa: N802 (module factory)
    return nn.Dense(features, kernel_init=dense_init, name=name)


class MLP(nn.Module):
    """Hidden layers only: Dense -> [LayerNorm] -> ReLU, for every width in `hidden`."""

    hidden: Sequence[int]
    layernorm: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.hidden:
            x = Dense(width)(x)
            if self.layernorm:
                x = nn.LayerNorm()(x)
            x = nn.relu(x)
        return x


LogStdMode = Literal["tanh", "clip"]
LOG_STD_MODES: tuple[str, ...] = get_args(LogStdMode)


class Actor(nn.Module):
    """State-dependent diagonal Gaussian (pre-tanh): returns (mean, log_std).

    The log-std head's raw output x is bounded to [log_std_min, log_std_max] by `log_std_mode`:

    - "tanh": log_std = min + (max - min) * (tanh(x) + 1) / 2, a smooth squash that keeps a
      gradient at the bounds. This is the STFL code's choice, taken from D'Oro et al.'s
      high-replay-ratio fork of jaxrl (proceduralia/high_replay_ratio_continuous_control,
      jaxrl/networks/policies.py, "suggested by Ilya for stability"). x = 0 maps to the
      midpoint, so with the default bounds [-10, 2] log_std is -4 there: sigma = e^-4 = 0.018.
    - "clip": log_std = clip(x, min, max), as in jaxrl's NormalTanhPolicy (bounds [-10, 2])
      and Stable-Baselines3's SAC actor (th.clamp to [-20, 2]). x = 0 maps to log_std 0, so
      sigma = 1 there.

    At initialisation x is centred on 0: every bias starts at zero and every kernel is a
    random orthogonal matrix, whose sign is symmetric, so x is a zero-mean linear function of
    the ReLU features, and exactly 0 for an all-zero observation. Its spread grows with the
    observation's norm and `log_std_init_scale` (the gain of the log-std kernel's orthogonal
    init): on small observations the initial sigma is about 0.018 ("tanh") or 1 ("clip"); on
    large ones (HalfCheetah, humanoid) only its median is, and both modes reach their bounds.
    """

    hidden: Sequence[int]
    action_dim: int
    log_std_min: float = -10.0
    log_std_max: float = 2.0
    log_std_mode: LogStdMode = "tanh"
    log_std_init_scale: float = math.sqrt(2.0)

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = MLP(self.hidden, name="trunk")(obs)
        mean = Dense(self.action_dim, name="mean")(x)
        raw = nn.Dense(self.action_dim, kernel_init=orthogonal(self.log_std_init_scale), name="log_std")(x)
        return mean, bound_log_std(raw, self.log_std_mode, self.log_std_min, self.log_std_max)


def bound_log_std(raw: jax.Array, mode: str, low: float, high: float) -> jax.Array:
    """The log-std head's raw output bounded to [low, high] by `mode` ("tanh" or "clip")."""
    if mode == "tanh":
        return squash_log_std(raw, low, high)
    if mode == "clip":
        return jnp.clip(raw, low, high)
    raise ValueError(f"log_std_mode must be one of {', '.join(LOG_STD_MODES)}, got {mode!r}.")


def squash_log_std(raw: jax.Array, low: float, high: float) -> jax.Array:
    return low + 0.5 * (high - low) * (1.0 + jnp.tanh(raw))


class Critic(nn.Module):
    """One Q-network: Q(s, a) with the trailing unit axis squeezed away."""

    hidden: Sequence[int]
    layernorm: bool = False

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        x = jnp.concatenate([obs, action], axis=-1)
        x = MLP(self.hidden, self.layernorm, name="trunk")(x)
        return Dense(1, name="out")(x).squeeze(-1)


def stacked(module: type[nn.Module], n: int) -> type[nn.Module]:
    """`module` as `n` independent copies with params stacked on a leading axis (each copy its own
    init key); the copies see the same inputs and their outputs stack on axis 0. One batched matmul
    per layer instead of n networks."""
    return nn.vmap(module, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=None, out_axes=0,
                   axis_size=n)

class DoubleCritic(nn.Module):
    """Two independent Critics as one batched network; returns Q of shape (2, *batch).

    `nn.vmap` stacks both critics' params on a leading axis of size 2, so the pair
    costs one batched matmul per layer instead of two separate networks.
    """

    hidden: Sequence[int]
    layernorm: bool = False
    num_qs: int = 2

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        return stacked(Critic, self.num_qs)(self.hidden, self.layernorm, name="qs")(obs, action)
