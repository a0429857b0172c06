"""Adapter for dm_control suite tasks (dmc:<domain>-<task>)."""

from __future__ import annotations

import functools
import math

import mujoco
import numpy as np
from dm_control import suite
from dm_control.rl.control import PhysicsError

from dynalab.envs import mjstate
from dynalab.envs.base import (
    EPISODE_OVER,
    ActionScaler,
    MujocoHandles,
    SimulatorDiverged,
    check_snapshot_id,
    check_state,
    clear_warnings,
)
from dynalab.envs.model_entries import ModelEntries, changed_entries, numeric_arrays
from dynalab.types import EnvSpec

# Fixed, so every instance of a task gets the same state layout whatever its seed;
# two loads catch load-time randomisation (lqr), several resets per-episode ones.
_DETECT_SEEDS = (101, 202)
_DETECT_RESETS = 3


# The camera videos use, as pixel-based agents and their papers do (DrQ, DrQ-v2): camera 0, each
# domain's own side or tracking view, except quadruped, whose camera 0 is a distant global view
# in which the body is a few pixels tall; its camera 2 follows it.
RENDER_CAMERA = {"quadruped": 2}


@functools.lru_cache(maxsize=None)
def randomised_entries(domain: str, task: str) -> ModelEntries:
    """Model entries that differ between instances or episodes of a task."""
    snapshots = []
    for seed in _DETECT_SEEDS:
        env = suite.load(domain, task, task_kwargs={"random": seed})
        for _ in range(_DETECT_RESETS):
            env.reset()
            snapshots.append(numeric_arrays(env.physics.model.ptr))
        env.close()
    return changed_entries(snapshots)


def flatten_obs(obs: dict[str, np.ndarray]) -> np.ndarray:
    """Concatenate observation values in dict order as one float32 vector."""
    return np.concatenate([np.asarray(v, dtype=np.float32).ravel() for v in obs.values()])


class DMCEnv(MujocoHandles):
    """A dm_control suite task behind the dynalab Env protocol.

    The state vector is MuJoCo's integration state followed by the model entries
    the task randomises (see model_entries.py). set_state restores the physics
    only: control.Environment's step counter restarts at 0, so a restored env
    never reports a time-limit truncation on its next step and `terminated`
    always comes from the task (dm_control would otherwise mask it at the limit).
    snapshot/restore carry the step counter and the task's RNG as well.
    """

    def __init__(self, env_id: str, domain: str, task: str, seed: int) -> None:
        self._entries = randomised_entries(domain, task)
        self._env = suite.load(domain, task, task_kwargs={"random": seed})
        self._physics = self._env.physics
        self._model: mujoco.MjModel = self._physics.model.ptr
        self._data: mujoco.MjData = self._physics.data.ptr
        action_spec = self._env.action_spec()
        self._scaler = ActionScaler(action_spec.minimum, action_spec.maximum)
        self._nsim = mjstate.integration_size(self._model)
        self._episode_over = True
        self._has_reset = False
        camera = RENDER_CAMERA.get(domain, 0)
        self._camera = camera if camera < self._model.ncam else -1  # a model without cameras: the free one
        obs_dim = sum(int(np.prod(s.shape)) for s in self._env.observation_spec().values())
        limit = float(self._env._step_limit)
        self.spec = EnvSpec(
            env_id=env_id,
            obs_dim=obs_dim,
            action_dim=self._scaler.dim,
            # 0 marks a task without a time limit (dmc:lqr-*).
            max_episode_steps=int(round(limit)) if math.isfinite(limit) else 0,
            state_dim=self._nsim + self._entries.size,
        )

    @property
    def randomised_model_fields(self) -> tuple[str, ...]:
        """Names of the model arrays whose entries are part of the state."""
        return self._entries.names

    def reset(self, seed: int | None = None) -> np.ndarray:
        if seed is not None:
            # Same generator suite.load builds from an int seed. Load-time
            # randomisation (lqr's model) is not redone.
            self._env.task._random = np.random.RandomState(seed)
        timestep = self._env.reset()
        self._episode_over = False
        self._has_reset = True
        return flatten_obs(timestep.observation)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool]:
        """Apply `action` (action_dim,) in [-1, 1]; return (obs, reward, terminated, truncated).

        Raises SimulatorDiverged (and ends the episode) if the physics diverged during
        the step, RuntimeError(EPISODE_OVER) if the episode had already ended.
        """
        # dm_control silently resets when stepped after the last step.
        if self._episode_over:
            raise RuntimeError(EPISODE_OVER)
        # dm_control raises PhysicsError only when a warning counter grows during the
        # step, and MuJoCo's reset on a bad state can leave a counter where it was.
        clear_warnings(self._data)
        try:
            timestep = self._env.step(self._scaler(action))
        except PhysicsError as e:
            # The physics is invalid (on a NaN, Inf or huge value MuJoCo has also reset
            # mjData mid-step). dm_control's step counter and reset flag were not
            # advanced, so only our flag marks the episode over.
            self._episode_over = True
            raise SimulatorDiverged(
                f"{self.spec.env_id}: the simulation diverged during this step "
                f"(dm_control: {e}); the step's outcome was discarded and the episode ended."
            ) from e
        terminated = truncated = False
        if timestep.last():
            terminated = float(timestep.discount) == 0.0
            truncated = not terminated
            self._episode_over = True
        return flatten_obs(timestep.observation), float(timestep.reward), terminated, truncated

    def get_state(self) -> np.ndarray:
        return np.concatenate(
            [mjstate.get_integration(self._model, self._data), self._entries.read(self._model)]
        )

    def set_state(self, state: np.ndarray) -> None:
        state = check_state(state, self.spec.state_dim)
        if not self._has_reset:
            self.reset()  # the task sets per-episode attributes in initialize_episode
        self._entries.write(self._model, state[self._nsim :])
        mjstate.set_integration(self._model, self._data, state[: self._nsim])
        # dm_control's Euler step begins with mj_step2, trusting that position and
        # velocity quantities already match qpos (its steps end with mj_step1), so
        # recompute them; forward leaves the restored warmstart untouched.
        self._physics.forward()
        self._env._step_count = 0
        self._env._reset_next_step = False
        self._episode_over = False

    def snapshot(self) -> dict[str, np.ndarray]:
        """Simulator state, step counter, the task's RNG and the adapter flags.

        No DMC15 task keeps other per-episode Python state that is read later
        (cheetah and hopper set an unused `_timeout_progress`); the targets they
        randomise live in the model entries that get_state already carries.
        """
        kind, keys, pos, has_gauss, gauss = self._env.task.random.get_state()
        return {
            "id": np.asarray(self.spec.env_id),
            "state": self.get_state(),
            "step_count": np.asarray(self._env._step_count, dtype=np.int64),
            "reset_next_step": np.asarray(self._env._reset_next_step),
            "episode_over": np.asarray(self._episode_over),
            "has_reset": np.asarray(self._has_reset),
            # np.random.RandomState.get_state(), one array per field.
            "rng_kind": np.asarray(kind),
            "rng_keys": np.asarray(keys, dtype=np.uint32),
            "rng_pos": np.asarray(pos, dtype=np.int64),
            "rng_has_gauss": np.asarray(has_gauss, dtype=np.int64),
            "rng_gauss": np.asarray(gauss, dtype=np.float64),
        }

    def restore(self, snap: dict[str, np.ndarray]) -> None:
        """Make this instance continue exactly like the one `snap` came from."""
        check_snapshot_id(snap, self.spec.env_id)
        self.set_state(snap["state"])  # resets a never-reset instance first
        self._env.task.random.set_state(
            (
                str(snap["rng_kind"]),
                np.asarray(snap["rng_keys"], dtype=np.uint32),
                int(snap["rng_pos"]),
                int(snap["rng_has_gauss"]),
                float(snap["rng_gauss"]),
            )
        )
        self._env._step_count = int(snap["step_count"])
        self._env._reset_next_step = bool(snap["reset_next_step"])
        self._episode_over = bool(snap["episode_over"])
        self._has_reset = bool(snap["has_reset"])

    @property
    def control_dt(self) -> float:
        """Simulated seconds per env step (the task's control timestep): a video's frame period."""
        return float(self._env.control_timestep())

    def render(self, width: int = 480, height: int = 480) -> np.ndarray:
        """The current simulator state through the task's video camera: (height, width, 3) uint8.

        dm_control's own `physics.render(height, width, camera_id)` with camera RENDER_CAMERA (0 for
        every domain but quadruped), drawn offscreen with the backend MUJOCO_GL names. Reads the
        simulator only: the state, and so the episode, is the same with or without rendering. The
        first call opens the physics' rendering contexts, which close() releases. Raises RuntimeError
        (or mujoco.FatalError) if no OpenGL backend works in this process.
        """
        vis = self._model.vis.global_
        if width > vis.offwidth or height > vis.offheight:
            # The offscreen framebuffer (640 x 480 in the suite's models) is sized when the contexts
            # are made, so grow it and make them again; no dynamics read it.
            self._free_render_contexts()
            vis.offwidth, vis.offheight = max(vis.offwidth, width), max(vis.offheight, height)
        return self._physics.render(height, width, camera_id=self._camera)

    def _free_render_contexts(self) -> None:
        # Explicitly, while the GL library is still loaded, rather than at garbage collection
        # (render() made them, or a task that uploads its terrain at reset). Physics.free() would
        # also free the simulator.
        with self._physics._contexts_lock:
            if self._physics._contexts:
                self._physics._free_rendering_contexts()

    def close(self) -> None:
        self._free_render_contexts()
        self._env.close()
