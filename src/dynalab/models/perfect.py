"""The perfect model: the simulator itself, restored to each sampled real state (STFL section 4.2).

It is called from inside the jitted learner through `jax.pure_callback`, so MBPO with a
perfect model is still one compiled call per env step; the host does the physics. A restored
state whose step diverges (`SimulatorDiverged`) yields no transition: its `valid` flag is False
and the rollout drops it, as the training loop drops a diverged real step.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dynalab.envs import make_env
from dynalab.envs.base import MujocoHandles, SimulatorDiverged
from dynalab.envs.workers import Parallel, ProcessSimRows, RowPool, check_parallel, resolve_workers, sim_rows
from dynalab.envs.workers import concat as concat_parts
from dynalab.types import EnvSpec, bits_state, state_bits


class Simulator:
    """Steps restored copies of a task: (sim state, action) -> (next obs, reward, terminated, next
    state, valid); `valid` is False where the simulator diverged: that row is no transition and the
    rollout drops it (its other outputs are set to zeros, terminated, and the state it started from).

    The rows of a call are split into contiguous chunks over `workers` workers (0: every available
    CPU core), each with its own simulator instance: with `parallel` "processes" (the default) the
    first chunk runs in this process and the others in worker processes (dynalab.envs.workers),
    with "threads" on threads of this process. Every row starts from its own restored state, and
    `check_task` guarantees that a step depends on that state alone, so the outputs equal those of
    one instance stepping the rows in order, bit for bit. `imports`: as for BatchEnv. Raises
    ValueError (one sentence) for a `workers` that is not an int >= 0 or an unknown `parallel`.
    """

    def __init__(self, spec: EnvSpec, workers: int = 1, parallel: Parallel = "processes", imports=()):
        self.spec = spec
        resolve_workers(workers, 1)  # validate now, not inside a callback
        check_parallel(parallel)
        self._requested = workers
        self._imports = tuple(imports)
        self.parallel = "sequential" if self.workers == 1 else parallel  # what steps the rows
        self._envs: list = []  # built lazily: the learner may be traced where it never steps
        self._pool: RowPool | None = None
        self._procs: ProcessSimRows | None = None

    @property
    def workers(self) -> int:
        """Workers a call with many rows uses: the requested count, or every available core."""
        return resolve_workers(self._requested, 1 << 30)

    def _ensure_started(self) -> None:
        if self.parallel == "processes":
            if self._procs is None:
                self._procs = ProcessSimRows(self.spec.env_id, self.workers, self._imports)
        elif self._pool is None:
            self._envs = [make_env(self.spec.env_id, seed=0) for _ in range(self.workers)]
            self._pool = RowPool(self.workers)

    def host_step(self, bits: np.ndarray, action: np.ndarray):
        """Host side of `step`: bits (..., state_words) uint32 and action (..., action_dim) in
        [-1, 1] -> next obs (..., obs_dim) float32, reward (...) float32, terminated (...) bool,
        next-state bits (..., state_words) uint32, valid (...) bool."""
        self._ensure_started()
        lead = bits.shape[:-1]
        states = bits_state(bits.reshape(-1, bits.shape[-1]))
        actions = np.asarray(action, np.float64).reshape(-1, self.spec.action_dim)
        if len(states) == 0:
            parts = sim_rows(_NoEnv(self.spec), states, actions)
        elif self._procs is not None:
            parts = self._procs.step(states, actions)
        else:
            # one simulator per thread; rows never share one at once
            parts = concat_parts(self._pool.map(
                lambda worker, a, b: sim_rows(self._envs[worker], states[a:b], actions[a:b]), len(states)))
        next_obs, reward, terminated, next_states, valid = parts
        return (
            next_obs.reshape(*lead, -1),
            reward.reshape(lead),
            terminated.reshape(lead),
            state_bits(next_states).reshape(*lead, -1),
            valid.reshape(lead),
        )

    def close(self) -> None:
        """Stop the worker threads or release the worker processes, and the simulators (a later call
        starts them again)."""
        if self._procs is not None:
            self._procs.close()
            self._procs = None
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        for env in self._envs:
            env.close()
        self._envs = []

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


class _NoEnv:
    """Stands in for a simulator in a call with no rows."""

    def __init__(self, spec: EnvSpec):
        self.spec = spec


class PerfectModelError(ValueError):
    """The perfect model cannot stand in for this task; the message is one sentence."""


# The probe: steps of one instance, each replayed from its restored state in another instance
# (another seed, so another episode's randomisation), with a reset halfway so that a
# per-episode choice made at reset is crossed too.
_PROBE_STEPS, _PROBE_RESET_AT = 24, 12


@functools.cache
def check_task(env_id: str) -> None:
    """Refuse a task that the perfect model would simulate wrongly, before a run starts.

    The perfect model restores a copy of the task to each sampled state (`Env.set_state`: MuJoCo's
    integration state, plus the model entries a dm_control task randomises and, for Gymnasium, the
    body positions some rewards read) and steps it. That is exact only if the next observation,
    reward and termination follow from that state alone. The probe checks it on
    `_PROBE_STEPS` random-action steps (about a second for a small task): each is replayed by an
    instance seeded differently, restored to the same state, and must match exactly.

    Raises PerfectModelError (one sentence) for a task that is not a MuJoCo task, or whose replayed
    step differs (e.g. it keeps per-episode state in Python attributes set at reset). Succeeds
    silently, and is then remembered for the rest of the process.
    """
    real, replay = make_env(env_id, seed=0), make_env(env_id, seed=1)
    try:
        if not (isinstance(real, MujocoHandles) and isinstance(replay, MujocoHandles)):
            raise PerfectModelError(
                f"--perfect-model restores MuJoCo states, and {env_id} is not a MuJoCo task; drop --perfect-model.")
        rng = np.random.default_rng(0)
        real.reset()
        replay.reset()
        for i in range(_PROBE_STEPS):
            if i == _PROBE_RESET_AT:
                real.reset()
            action = rng.uniform(-1.0, 1.0, real.spec.action_dim).astype(np.float32)
            state = real.get_state()
            try:
                obs, reward, terminated, truncated = real.step(action)
            except SimulatorDiverged:
                real.reset()
                continue
            replay.set_state(state)
            try:
                r_obs, r_reward, r_terminated, _ = replay.step(action)
            except SimulatorDiverged:
                r_obs, r_reward, r_terminated = np.full_like(obs, np.nan), np.nan, None
            differs = [what for what, same in (
                ("observation", np.array_equal(obs, r_obs)), ("reward", reward == r_reward),
                ("termination", terminated == r_terminated)) if not same]
            if differs:
                raise PerfectModelError(
                    f"--perfect-model needs a task whose next observation, reward and termination follow from "
                    f"its MuJoCo state alone, but a copy of {env_id} restored to a state of another instance "
                    f"stepped to a different {' and '.join(differs)}, so the task keeps state outside MuJoCo's "
                    "(e.g. a Python attribute set at reset) or reads derived quantities before stepping; keep "
                    "such state in the MuJoCo model or data (as dm_control's reacher keeps its target in "
                    "geom_pos), or drop --perfect-model.")
            if terminated or truncated:
                real.reset()
    finally:
        real.close()
        replay.close()
