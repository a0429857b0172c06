"""The perfect model: the simulator itself, restored to each sampled real state (STFL section 4.2).

It is called from inside the jitted learner through `jax.pure_callback`, so MBPO with a
perfect model is still one compiled call per env step; the host does the physics. A restored
state whose step diverges (`SimulatorDiverged`) yields no transition: its `valid` flag is False
and the rollout drops it, as the training loop drops a diverged real step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dynalab.envs import make_env
from dynalab.envs.base import SimulatorDiverged
from dynalab.types import EnvSpec, bits_state, state_bits


class Simulator:
    """Steps restored copies of a task: (sim state, action) -> (next obs, reward, terminated, next
    state, valid); `valid` is False where the simulator diverged (the other outputs are then
    placeholders: zeros, and the state it started from)."""

    def __init__(self, spec: EnvSpec):
        self.spec = spec
        self._env = None  # built lazily: the learner may be traced where it never steps

    def host_step(self, bits: np.ndarray, action: np.ndarray):
        if self._env is None:
            self._env = make_env(self.spec.env_id, seed=0)
        env = self._env
        lead = bits.shape[:-1]
        states = bits_state(bits.reshape(-1, bits.shape[-1]))
        actions = np.asarray(action, np.float64).reshape(-1, self.spec.action_dim)
        n = len(states)
        next_obs = np.empty((n, self.spec.obs_dim), np.float32)
        reward = np.empty(n, np.float32)
        terminated = np.empty(n, bool)
        valid = np.ones(n, bool)
        next_states = np.empty_like(states)
        for i in range(n):
            env.set_state(states[i])
            try:
                next_obs[i], reward[i], terminated[i], _ = env.step(actions[i])
                next_states[i] = env.get_state()
            except SimulatorDiverged:
                next_obs[i], reward[i], terminated[i], valid[i] = 0.0, 0.0, True, False
                next_states[i] = states[i]
        return (
            next_obs.reshape(*lead, -1),
            reward.reshape(lead),
            terminated.reshape(lead),
            state_bits(next_states).reshape(*lead, -1),
            valid.reshape(lead),
        )

    def step(self, bits: jax.Array, action: jax.Array):
        lead = bits.shape[:-1]
        shapes = (
            jax.ShapeDtypeStruct((*lead, self.spec.obs_dim), jnp.float32),
            jax.ShapeDtypeStruct(lead, jnp.float32),
            jax.ShapeDtypeStruct(lead, jnp.bool_),
            jax.ShapeDtypeStruct(bits.shape, jnp.uint32),
            jax.ShapeDtypeStruct(lead, jnp.bool_),
        )
        return jax.pure_callback(self.host_step, shapes, bits, action, vmap_method="broadcast_all")
