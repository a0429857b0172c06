"""Pytrees and small records shared by every part of dynalab."""

from __future__ import annotations

from dataclasses import dataclass

import jax
from flax import struct


@dataclass(frozen=True)
class EnvSpec:
    """What a learner needs to know about a task."""

    env_id: str
    obs_dim: int
    action_dim: int
    max_episode_steps: int
    state_dim: int  # length of the float64 simulator-state vector (get_state/set_state)


@struct.dataclass
class Transition:
    """One (s, a, r, s') with the bootstrap mask; leading axes are added by batching.

    `discount` is 0.0 on true termination and 1.0 otherwise (time-limit truncation
    bootstraps).
    """

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    next_obs: jax.Array
    discount: jax.Array
