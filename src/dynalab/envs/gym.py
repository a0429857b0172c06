"""Adapter for Gymnasium MuJoCo tasks (gym:<Id>)."""

from __future__ import annotations

import gymnasium
import mujoco
import numpy as np

from dynalab.envs import mjstate
from dynalab.envs.base import EPISODE_OVER, ActionScaler, MujocoHandles, check_state
from dynalab.types import EnvSpec


class GymEnv(MujocoHandles):
    """A Gymnasium MuJoCo task behind the dynalab Env protocol.

    The state vector is MuJoCo's integration state followed by `data.xpos` and
    `data.xipos`. Those two are derived, but after mj_step they hold the
    kinematics of the last substep's start, and Ant (torso xpos) and Humanoid
    (mass centre from xipos) read them *before* stepping to compute the forward
    reward, so they must travel with the state for the reward to reproduce.
    The TimeLimit step counter is not part of the state: after set_state,
    `truncated` still counts the steps this instance has taken.
    """

    def __init__(self, env_id: str, name: str, seed: int) -> None:
        self._env = gymnasium.make(name)
        self._core = self._env.unwrapped
        self._model: mujoco.MjModel = self._core.model
        self._data: mujoco.MjData = self._core.data
        space = self._env.action_space
        self._scaler = ActionScaler(space.low, space.high)
        self._action_dtype = space.dtype
        self._next_seed: int | None = seed
        self._episode_over = True
        self._has_reset = False
        self._nsim = mjstate.integration_size(self._model)
        self._nkin = self._data.xpos.size
        self.spec = EnvSpec(
            env_id=env_id,
            obs_dim=int(np.prod(self._env.observation_space.shape)),
            action_dim=self._scaler.dim,
            max_episode_steps=int(self._env.spec.max_episode_steps),
            state_dim=self._nsim + 2 * self._nkin,
        )

    def reset(self, seed: int | None = None) -> np.ndarray:
        # The constructor seed applies to the first reset only; later unseeded
        # resets continue Gymnasium's RNG so episode sequences are reproducible.
        if seed is None:
            seed, self._next_seed = self._next_seed, None
        else:
            self._next_seed = None
        obs, _ = self._env.reset(seed=seed)
        self._episode_over = False
        self._has_reset = True
        return np.asarray(obs, dtype=np.float32).ravel()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool]:
        if self._episode_over:
            raise RuntimeError(EPISODE_OVER)
        ctrl = self._scaler(action).astype(self._action_dtype)
        obs, reward, terminated, truncated, _ = self._env.step(ctrl)
        self._episode_over = bool(terminated or truncated)
        return (
            np.asarray(obs, dtype=np.float32).ravel(),
            float(reward),
            bool(terminated),
            bool(truncated),
        )

    def get_state(self) -> np.ndarray:
        return np.concatenate(
            [
                mjstate.get_integration(self._model, self._data),
                self._data.xpos.ravel(),
                self._data.xipos.ravel(),
            ]
        )

    def set_state(self, state: np.ndarray) -> None:
        state = check_state(state, self.spec.state_dim)
        if not self._has_reset:
            self.reset()  # Gymnasium refuses to step an env that was never reset
        n, k = self._nsim, self._nkin
        mjstate.set_integration(self._model, self._data, state[:n])
        self._data.xpos[:] = state[n : n + k].reshape(self._data.xpos.shape)
        self._data.xipos[:] = state[n + k :].reshape(self._data.xipos.shape)
        self._episode_over = False

    def close(self) -> None:
        self._env.close()
