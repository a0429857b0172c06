"""Several seeded envs of one task stepped together, with automatic reset."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dynalab.envs.base import SimulatorDiverged
from dynalab.envs.registry import make_env
from dynalab.types import EnvSpec


@dataclass(frozen=True)
class StepResult:
    """One batched step; episode_* are NaN / 0 where no episode ended.

    A row with `diverged` True has no transition: its simulator diverged during the step
    (the adapter raised SimulatorDiverged), and that env was reset. Its `next_obs` is a
    placeholder, the observation the step started from, and must never be stored in a
    buffer; its reward is 0.0, terminated and truncated are False, episode_return is NaN
    and episode_length 0 (the cut-short episode is not reported as a finished one), and
    `obs` is the new episode's first observation.
    """

    obs: np.ndarray  # (N, obs_dim) float32: what to act on next (reset obs after an end)
    next_obs: np.ndarray  # (N, obs_dim) float32: the transition's true s' (placeholder if diverged)
    reward: np.ndarray  # (N,) float32
    terminated: np.ndarray  # (N,) bool
    truncated: np.ndarray  # (N,) bool
    episode_return: np.ndarray  # (N,) float64
    episode_length: np.ndarray  # (N,) int64
    diverged: np.ndarray  # (N,) bool: the simulator diverged; the row is no transition


class BatchEnv:
    """One env per seed, stepped in a Python loop; finished or diverged episodes reset at once."""

    def __init__(self, env_id: str, seeds: Sequence[int]) -> None:
        if len(seeds) == 0:
            raise ValueError("seeds is empty; pass one seed per env, e.g. [0, 1, 2, 3].")
        self._envs = [make_env(env_id, int(seed)) for seed in seeds]
        self.spec: EnvSpec = self._envs[0].spec
        self.num_envs = len(self._envs)
        self._returns = np.zeros(self.num_envs, dtype=np.float64)
        self._lengths = np.zeros(self.num_envs, dtype=np.int64)
        # What each env will act on next: a diverged step reports it as its placeholder next_obs.
        self._obs = np.zeros((self.num_envs, self.spec.obs_dim), dtype=np.float32)
        self._started = False

    def reset(self) -> np.ndarray:
        """Start a fresh episode in every env; returns (N, obs_dim) float32."""
        self._returns[:] = 0.0
        self._lengths[:] = 0
        self._started = True
        self._obs = np.stack([env.reset() for env in self._envs])
        return self._obs.copy()

    def step(self, actions: np.ndarray) -> StepResult:
        """Step every env with its row of `actions` (N, action_dim) in [-1, 1].

        An env whose simulator diverges is reset and flagged in `StepResult.diverged`
        (see StepResult); the others are unaffected.
        """
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
        diverged = np.zeros(n, dtype=bool)
        for i, env in enumerate(self._envs):
            try:
                o, r, term, trunc = env.step(actions[i])
            except SimulatorDiverged:
                # Nothing of this step is a transition; the episode ends unreported.
                diverged[i] = True
                next_obs[i], reward[i] = self._obs[i], 0.0
                self._returns[i] = 0.0
                self._lengths[i] = 0
                obs[i] = env.reset()
                continue
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
        self._obs = obs.copy()
        return StepResult(
            obs, next_obs, reward, terminated, truncated, episode_return, episode_length, diverged
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
            "obs": self._obs.copy(),
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
        # Snapshots from before divergence handling lack it. It is only ever a placeholder,
        # so any finite value will do until the next step replaces it (NaN would trip the
        # trainer's non-finite guard).
        self._obs = np.asarray(snap.get("obs", np.zeros_like(self._obs)), dtype=np.float32)
        self._started = bool(snap["started"])

    def close(self) -> None:
        for env in self._envs:
            env.close()
