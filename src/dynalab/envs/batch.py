"""Several seeded envs of one task stepped together, with automatic reset."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dynalab.envs.registry import make_env
from dynalab.types import EnvSpec


@dataclass(frozen=True)
class StepResult:
    """One batched step; episode_* are NaN / 0 where no episode ended."""

    obs: np.ndarray  # (N, obs_dim) float32: what to act on next (reset obs after an end)
    next_obs: np.ndarray  # (N, obs_dim) float32: the transition's true s'
    reward: np.ndarray  # (N,) float32
    terminated: np.ndarray  # (N,) bool
    truncated: np.ndarray  # (N,) bool
    episode_return: np.ndarray  # (N,) float64
    episode_length: np.ndarray  # (N,) int64


class BatchEnv:
    """One env per seed, stepped in a Python loop; finished episodes reset at once."""

    def __init__(self, env_id: str, seeds: Sequence[int]) -> None:
        if len(seeds) == 0:
            raise ValueError("seeds is empty; pass one seed per env, e.g. [0, 1, 2, 3].")
        self._envs = [make_env(env_id, int(seed)) for seed in seeds]
        self.spec: EnvSpec = self._envs[0].spec
        self.num_envs = len(self._envs)
        self._returns = np.zeros(self.num_envs, dtype=np.float64)
        self._lengths = np.zeros(self.num_envs, dtype=np.int64)
        self._started = False

    def reset(self) -> np.ndarray:
        """Start a fresh episode in every env; returns (N, obs_dim) float32."""
        self._returns[:] = 0.0
        self._lengths[:] = 0
        self._started = True
        return np.stack([env.reset() for env in self._envs])

    def step(self, actions: np.ndarray) -> StepResult:
        """Step every env with its row of `actions` (N, action_dim) in [-1, 1]."""
        if not self._started:
            raise RuntimeError("BatchEnv.step() was called before reset(); call reset() first.")
        actions = np.asarray(actions)
        expected = (self.num_envs, self.spec.action_dim)
        if actions.shape != expected:
            raise ValueError(
                f"actions has shape {actions.shape} but this BatchEnv expects {expected}."
            )
        n, d = self.num_envs, self.spec.obs_dim
        obs = np.empty((n, d), dtype=np.float32)
        next_obs = np.empty((n, d), dtype=np.float32)
        reward = np.empty(n, dtype=np.float32)
        terminated = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        episode_return = np.full(n, np.nan, dtype=np.float64)
        episode_length = np.zeros(n, dtype=np.int64)
        for i, env in enumerate(self._envs):
            o, r, term, trunc = env.step(actions[i])
            next_obs[i], reward[i], terminated[i], truncated[i] = o, r, term, trunc
            self._returns[i] += r  # float64 sum of the float rewards, not the float32 copies
            self._lengths[i] += 1
            if term or trunc:
                episode_return[i] = self._returns[i]
                episode_length[i] = self._lengths[i]
                self._returns[i] = 0.0
                self._lengths[i] = 0
                obs[i] = env.reset()
            else:
                obs[i] = o
        return StepResult(
            obs, next_obs, reward, terminated, truncated, episode_return, episode_length
        )

    def get_states(self) -> np.ndarray:
        """Current simulator states (N, state_dim) float64; call before step()."""
        return np.stack([env.get_state() for env in self._envs])

    def snapshot(self) -> dict[str, np.ndarray]:
        """All host-side state: each env's snapshot under `env<i>/`, plus running returns."""
        snap = {
            "num_envs": np.asarray(self.num_envs, dtype=np.int64),
            "returns": self._returns.copy(),
            "lengths": self._lengths.copy(),
            "started": np.asarray(self._started),
        }
        for i, env in enumerate(self._envs):
            for key, value in env.snapshot().items():
                snap[f"env{i}/{key}"] = value
        return snap

    def restore(self, snap: dict[str, np.ndarray]) -> None:
        """Continue exactly where the BatchEnv that made `snap` was."""
        count = int(snap["num_envs"])
        if count != self.num_envs:
            raise ValueError(
                f"snapshot holds {count} envs but this BatchEnv has {self.num_envs}; "
                "build it with the same seeds as the one that was saved."
            )
        for i, env in enumerate(self._envs):
            prefix = f"env{i}/"
            env.restore({k[len(prefix) :]: v for k, v in snap.items() if k.startswith(prefix)})
        self._returns[:] = snap["returns"]
        self._lengths[:] = snap["lengths"]
        self._started = bool(snap["started"])

    def close(self) -> None:
        for env in self._envs:
            env.close()
