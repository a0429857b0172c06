"""Pytrees and small records shared by every part of dynalab."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np
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
    bootstraps). `sim_state` is present only when a perfect model needs it: the simulator
    state before the step, its float64 bits stored as uint32 pairs (see `state_bits`).
    """

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    next_obs: jax.Array
    discount: jax.Array
    sim_state: jax.Array | None = None

    def without_sim_state(self) -> "Transition":
        return self.replace(sim_state=None)


def state_bits(state: np.ndarray) -> np.ndarray:
    """float64 simulator states -> uint32 pairs, so they travel exactly without jax_enable_x64."""
    return np.ascontiguousarray(state, dtype=np.float64).view(np.uint32)


def bits_state(bits: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(bits, dtype=np.uint32).view(np.float64)
