"""Several seeded envs of one task stepped together, with automatic reset."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from dynalab.envs.base import SimulatorDiverged
from dynalab.envs.registry import make_env
from dynalab.types import EnvSpec


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0))


def resolve_workers(workers: int, jobs: int) -> int:
    """Threads to use for `jobs` independent simulator jobs: `workers` (0: every available core),
    never more than there are jobs. Raises ValueError (one sentence) for a negative or non-int count."""
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
        raise ValueError(
            f"workers must be an integer >= 0 (0 means one per available CPU core), got {workers!r}."
        )
    return max(1, min(workers or available_cores(), jobs))


class RowPool:
    """Runs a function over row ranges [0, n) on a fixed set of threads, one contiguous chunk each.

    Threads, not processes: MuJoCo's mj_step releases the GIL, and the simulators stay in this
    process, so snapshots, restores and direct access to an env need no transfer. Each chunk's
    rows run in order on one thread, and rows never share a simulator, so the results are those
    of a sequential loop bit for bit. With one worker no thread is made: `run` calls inline.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="dynalab-env") if workers > 1 else None

    def run(self, fn: Callable[[int, int, int], None], n: int) -> None:
        """Call fn(worker, start, stop) for contiguous chunks covering rows [0, n); re-raises the
        first chunk's exception (by row order) after every chunk has finished."""
        if self._pool is None or n <= 1:
            fn(0, 0, n)
            return
        bounds = [n * k // self.workers for k in range(self.workers + 1)]
        futures = [self._pool.submit(fn, k, bounds[k], bounds[k + 1])
                   for k in range(self.workers) if bounds[k] < bounds[k + 1]]
        errors = [f.exception() for f in futures]  # waits for all: no chunk outlives the call
        for e in errors:
            if e is not None:
                raise e

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


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
    """One env per seed, stepped concurrently on `workers` threads; finished or diverged episodes
    reset at once.

    `workers` = 0 uses every available CPU core, capped at the number of envs; 1
    steps them in one Python loop with no thread. Whatever the count, every output, episode
    statistic and snapshot is bit-identical to the sequential loop's (see RowPool).

    Raises ValueError (one sentence) for an empty `seeds` or a `workers` that is not an int >= 0.
    """

    def __init__(self, env_id: str, seeds: Sequence[int], workers: int = 1) -> None:
        if len(seeds) == 0:
            raise ValueError("seeds is empty; pass one seed per env, e.g. [0, 1, 2, 3].")
        count = resolve_workers(workers, len(seeds))
        self._envs = [make_env(env_id, int(seed)) for seed in seeds]
        self._pool = RowPool(count)
        self.workers = count  # threads actually used: min(requested or cores, envs)
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
        obs = np.empty((self.num_envs, self.spec.obs_dim), dtype=np.float32)

        def reset_rows(_: int, start: int, stop: int) -> None:
            for i in range(start, stop):
                obs[i] = self._envs[i].reset()

        self._pool.run(reset_rows, self.num_envs)
        self._obs = obs
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

        # Each row touches only its own env and its own entries of these arrays, so chunks of
        # rows can run on different threads and still do exactly the sequential loop's work.
        def step_rows(_: int, start: int, stop: int) -> None:
            for i in range(start, stop):
                env = self._envs[i]
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

        self._pool.run(step_rows, n)
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
        """Stop the worker threads and release every simulator."""
        self._pool.close()
        for env in self._envs:
            env.close()
