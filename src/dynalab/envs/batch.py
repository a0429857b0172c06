"""Several seeded envs of one task stepped together, with automatic reset."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dynalab.envs.workers import (  # noqa: F401 - RowPool, available_cores: re-exported
    PARALLEL_KINDS,
    LocalEnvRows,
    Parallel,
    ProcessEnvRows,
    RowPool,
    available_cores,
    check_parallel,
    resolve_workers,
)
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
    """One env per seed, stepped concurrently on `workers` workers; finished or diverged episodes
    reset at once.

    `workers` = 0 uses every available CPU core, capped at the number of envs; 1 steps them in one
    Python loop in this process. `parallel` says what the workers are (dynalab.envs.workers):
    "processes" (the default: this process steps the first chunk of envs, worker processes the
    others) or "threads" (of this process). Whatever the count and kind, every output, episode
    statistic and snapshot is bit-identical to the sequential loop's. `imports` names the modules
    that register a user's task (a run's --import), for the worker processes to import; a task
    registered by an importable module is found without it.

    Raises ValueError (one sentence) for an empty `seeds`, a `workers` that is not an int >= 0 or
    an unknown `parallel`. An error inside a worker process is raised here with its own type and
    message; a worker process that dies raises workers.EnvWorkerError.
    """

    def __init__(self, env_id: str, seeds: Sequence[int], workers: int = 1, parallel: Parallel = "processes",
                 imports: Sequence[str] = ()) -> None:
        if len(seeds) == 0:
            raise ValueError("seeds is empty; pass one seed per env, e.g. [0, 1, 2, 3].")
        count = resolve_workers(workers, len(seeds))
        check_parallel(parallel)
        self.workers = count  # workers actually used: min(requested or cores, envs)
        self.parallel = "sequential" if count == 1 else parallel  # what steps the envs
        if self.parallel == "processes":
            self._rows = ProcessEnvRows(env_id, list(seeds), count, imports)
            self.spec: EnvSpec = self._rows.spec
        else:
            self._rows = LocalEnvRows(env_id, seeds, count)
            self.spec = self._rows.envs[0].spec
        self.num_envs = len(seeds)
        self._returns = np.zeros(self.num_envs, dtype=np.float64)
        self._lengths = np.zeros(self.num_envs, dtype=np.int64)
        # What each env will act on next: a diverged step reports it as its placeholder next_obs.
        self._obs = np.zeros((self.num_envs, self.spec.obs_dim), dtype=np.float32)
        self._started = False

    @property
    def _envs(self) -> list:
        """The envs, where they all live in this process (not with worker processes); tests only."""
        if not isinstance(self._rows, LocalEnvRows):
            raise AttributeError("this BatchEnv's envs live in worker processes; build it with workers=1 or "
                                 "parallel='threads' to reach them")
        return self._rows.envs

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the worker processes holding envs (empty without worker processes)."""
        return self._rows.pids if isinstance(self._rows, ProcessEnvRows) else []

    def reset(self) -> np.ndarray:
        """Start a fresh episode in every env; returns (N, obs_dim) float32."""
        self._returns[:] = 0.0
        self._lengths[:] = 0
        self._started = True
        self._obs = self._rows.reset().astype(np.float32, copy=False)
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
        next_obs, reward64, terminated, truncated, diverged, reset_obs = self._rows.step(actions)
        n = self.num_envs
        live = ~diverged
        # A diverged row: nothing of this step is a transition; the episode ends unreported.
        next_obs[diverged] = self._obs[diverged]
        reward = np.where(live, reward64, 0.0).astype(np.float32)
        self._returns[live] += reward64[live]  # float64 sum of the adapters' float rewards
        self._lengths[live] += 1
        ended = live & (terminated | truncated)
        episode_return = np.full(n, np.nan, dtype=np.float64)
        episode_length = np.zeros(n, dtype=np.int64)
        episode_return[ended] = self._returns[ended]
        episode_length[ended] = self._lengths[ended]
        self._returns[ended | diverged] = 0.0
        self._lengths[ended | diverged] = 0
        obs = reset_obs  # the new episode's first observation where one ended, next_obs elsewhere
        self._obs = obs.copy()
        return StepResult(
            obs, next_obs, reward, terminated, truncated, episode_return, episode_length, diverged
        )

    def get_states(self) -> np.ndarray:
        """Current simulator states (N, state_dim) float64; call before step()."""
        return self._rows.states()

    def snapshot(self) -> dict[str, np.ndarray]:
        """All host-side state: each env's snapshot under `env<i>/`, plus running returns."""
        snap = {
            "num_envs": np.asarray(self.num_envs, dtype=np.int64),
            "returns": self._returns.copy(),
            "lengths": self._lengths.copy(),
            "obs": self._obs.copy(),
            "started": np.asarray(self._started),
        }
        for i, env_snap in enumerate(self._rows.snapshots()):
            for key, value in env_snap.items():
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
        per_env: list[dict] = [{} for _ in range(self.num_envs)]
        for key, value in snap.items():
            head, sep, rest = key.partition("/")
            if sep and head.startswith("env") and head[3:].isdigit() and int(head[3:]) < self.num_envs:
                per_env[int(head[3:])][rest] = value
        self._rows.restore(per_env)
        self._returns[:] = snap["returns"]
        self._lengths[:] = snap["lengths"]
        # Snapshots from before divergence handling lack it. It is only ever a placeholder,
        # so any finite value will do until the next step replaces it (NaN would trip the
        # trainer's non-finite guard).
        self._obs = np.asarray(snap.get("obs", np.zeros_like(self._obs)), dtype=np.float32)
        self._started = bool(snap["started"])

    def close(self) -> None:
        """Release every simulator, and stop the worker threads, or the worker processes where no
        other BatchEnv or Simulator of this process uses them."""
        self._rows.close()
