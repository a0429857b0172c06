"""Actor and twin-critic networks for SAC (flax.linen).

All Dense layers use flax's default init (LeCun-normal kernels, zero biases). jaxrl
uses orthogonal(sqrt 2) instead; SAC is not sensitive to this at these widths.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class MLP(nn.Module):
    """Hidden layers only: Dense -> [LayerNorm] -> ReLU, for every width in `hidden`."""

    hidden: Sequence[int]
    layernorm: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.hidden:
            x = nn.Dense(width)(x)
            if self.layernorm:
                x = nn.LayerNorm()(x)
            x = nn.relu(x)
        return x


class Actor(nn.Module):
    """State-dependent diagonal Gaussian (pre-tanh): returns (mean, log_std), log_std clipped."""

    hidden: Sequence[int]
    action_dim: int
    log_std_min: float = -10.0
    log_std_max: float = 2.0

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = MLP(self.hidden, name="trunk")(obs)
        mean = nn.Dense(self.action_dim, name="mean")(x)
        log_std = nn.Dense(self.action_dim, name="log_std")(x)
        return mean, jnp.clip(log_std, self.log_std_min, self.log_std_max)


class Critic(nn.Module):
    """One Q-network: Q(s, a) with the trailing unit axis squeezed away."""

    hidden: Sequence[int]
    layernorm: bool = False

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        x = jnp.concatenate([obs, action], axis=-1)
        x = MLP(self.hidden, self.layernorm, name="trunk")(x)
        return nn.Dense(1, name="out")(x).squeeze(-1)


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
        ensemble = nn.vmap(
            Critic,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=self.num_qs,
        )
        return ensemble(self.hidden, self.layernorm, name="qs")(obs, action)
