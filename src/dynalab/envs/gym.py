"""Adapter for Gymnasium MuJoCo tasks (gym:<Id>)."""

from __future__ import annotations

import json

import gymnasium
import mujoco
import numpy as np

from dynalab.envs import mjstate
from dynalab.envs.base import (
    BAD_STATE_WARNINGS,
    EPISODE_OVER,
    ActionScaler,
    MujocoHandles,
    SimulatorDiverged,
    check_snapshot_id,
    check_state,
    clear_warnings,
    get_optional_int,
    put_optional_int,
    warning_names,
)
from dynalab.types import EnvSpec


class GymEnv(MujocoHandles):
    """A Gymnasium MuJoCo task behind the dynalab Env protocol.

    The state vector is MuJoCo's integration state followed by `data.xpos` and
    `data.xipos`. Those two are derived, but after mj_step they hold the
    kinematics of the last substep's start, and Ant (torso xpos) and Humanoid
    (mass centre from xipos) read them *before* stepping to compute the forward
    reward, so they must travel with the state for the reward to reproduce.
    The TimeLimit step counter is not part of the state: after set_state,
    `truncated` still counts the steps this instance has taken. snapshot/restore
    carry it, along with the reset RNG and the wrappers' flags.
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
        self._time_limit = _find_wrapper(self._env, gymnasium.wrappers.TimeLimit)
        self._order = _find_wrapper(self._env, gymnasium.wrappers.OrderEnforcing)
        self._checker = _find_wrapper(self._env, gymnasium.wrappers.PassiveEnvChecker)
        self._renderer = None  # made by the first render()
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
        """Apply `action` (action_dim,) in [-1, 1]; return (obs, reward, terminated, truncated).

        Raises SimulatorDiverged (and ends the episode) if the physics diverged during
        the step, RuntimeError(EPISODE_OVER) if the episode had already ended.
        """
        if self._episode_over:
            raise RuntimeError(EPISODE_OVER)
        ctrl = self._scaler(action).astype(self._action_dtype)
        clear_warnings(self._data)
        obs, reward, terminated, truncated, _ = self._env.step(ctrl)
        # On a bad state MuJoCo resets mjData in the middle of the step and Gymnasium
        # reports the reset pose as the outcome, with no flag; the warning counters
        # are the only trace it leaves.
        bad = warning_names(self._data, BAD_STATE_WARNINGS)
        if not (np.isfinite(self._data.qpos).all() and np.isfinite(self._data.qvel).all()):
            bad.append("non-finite qpos or qvel")
        if bad:
            self._episode_over = True
            raise SimulatorDiverged(
                f"{self.spec.env_id}: the simulation diverged during this step ({', '.join(bad)}: "
                "a NaN, Inf or value beyond 1e10); MuJoCo reset the simulator mid-step, so the "
                "step's outcome was discarded and the episode ended."
            )
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

    def snapshot(self) -> dict[str, np.ndarray]:
        """Simulator state, TimeLimit count, np_random, wrapper and adapter flags."""
        snap = {
            "id": np.asarray(self.spec.env_id),
            "state": self.get_state(),
            "episode_over": np.asarray(self._episode_over),
            "has_reset": np.asarray(self._has_reset),
        }
        put_optional_int(snap, "next_seed", self._next_seed)
        # Seeds the initial state of every later episode; None until the first reset.
        rng = self._core._np_random
        snap["rng"] = np.asarray("" if rng is None else json.dumps(rng.bit_generator.state))
        put_optional_int(snap, "rng_seed", self._core._np_random_seed)
        if self._time_limit is not None:
            put_optional_int(snap, "elapsed", self._time_limit._elapsed_steps)
        if self._order is not None:
            snap["order_has_reset"] = np.asarray(self._order._has_reset)
        if self._checker is not None:
            # These only gate Gymnasium's one-off API checks (warnings), kept so a
            # restored env runs exactly the same code paths.
            for name in _CHECKER_FLAGS:
                snap[f"checker_{name}"] = np.asarray(getattr(self._checker, name))
        return snap

    def restore(self, snap: dict[str, np.ndarray]) -> None:
        """Make this instance continue exactly like the one `snap` came from."""
        check_snapshot_id(snap, self.spec.env_id)
        self.set_state(snap["state"])  # resets a never-reset instance first
        rng_state = str(snap["rng"])
        if rng_state:
            state = json.loads(rng_state)
            rng = np.random.Generator(getattr(np.random, state["bit_generator"])())
            rng.bit_generator.state = state
            self._core._np_random = rng
        else:
            self._core._np_random = None
        self._core._np_random_seed = get_optional_int(snap, "rng_seed")
        if self._time_limit is not None:
            self._time_limit._elapsed_steps = get_optional_int(snap, "elapsed")
        if self._order is not None:
            self._order._has_reset = bool(snap["order_has_reset"])
        if self._checker is not None:
            for name in _CHECKER_FLAGS:
                setattr(self._checker, name, bool(snap[f"checker_{name}"]))
            # The next unchecked step compares against this; nothing to share with.
            pending = not (self._checker.checked_step and self._checker.checked_data_reuse)
            self._checker._previous_data = (None, {}) if pending else None
        self._next_seed = get_optional_int(snap, "next_seed")
        self._episode_over = bool(snap["episode_over"])
        self._has_reset = bool(snap["has_reset"])

    @property
    def control_dt(self) -> float:
        """Simulated seconds per env step (frame_skip x the MuJoCo timestep): a video's frame period."""
        return float(self._core.dt)

    def render(self, width: int = 480, height: int = 480) -> np.ndarray:
        """The current simulator state drawn by Gymnasium's rgb_array renderer: (height, width, 3) uint8.

        Camera: the task's "track" camera, which the Gym MuJoCo models define to follow the body's
        centre of mass from the side (Hopper, Walker2d, HalfCheetah, Ant, Humanoid), else the free
        camera set by the task's default_camera_config (InvertedPendulum). Drawn offscreen with the
        backend MUJOCO_GL names. Reads the simulator only: the state, and so the episode, is the same
        with or without rendering. The first call (and any call with a new size) opens a rendering
        context, which close() releases. Raises RuntimeError (or mujoco.FatalError) if no OpenGL
        backend works in this process.
        """
        from gymnasium.envs.mujoco.mujoco_rendering import MujocoRenderer

        if self._renderer is None or (self._renderer.width, self._renderer.height) != (width, height):
            self._close_renderer()
            # Gymnasium grows the offscreen framebuffer to the requested size the same way; it is
            # sized when the rendering context is made, and no dynamics read it.
            vis = self._model.vis.global_
            vis.offwidth, vis.offheight = max(vis.offwidth, width), max(vis.offheight, height)
            own = self._core.mujoco_renderer  # holds the task's camera settings even without render_mode
            # Gymnasium used to render through the "track" camera; since its PR #1618 it uses a free
            # camera that stays where the episode started, so a runner leaves the picture within seconds.
            track = mujoco.mj_name2id(self._model, mujoco.mjtObj.mjOBJ_CAMERA, "track")
            self._renderer = MujocoRenderer(
                self._model, self._data, own.default_cam_config, width, height, own.max_geom,
                camera_id=track if track >= 0 else own.camera_id, visual_options=getattr(own, "_vopt", None),
            )
        elif self._renderer.viewer is not None:
            # Gymnasium makes a context current only when it is made; another env's may be current now.
            self._renderer.viewer.make_context_current()
        return np.ascontiguousarray(self._renderer.render("rgb_array"))

    def _close_renderer(self) -> None:
        # Explicitly, while the GL library is still loaded: left to the garbage collector at
        # interpreter exit, the EGL context's destructor raises (and prints a traceback).
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def close(self) -> None:
        self._close_renderer()
        self._env.close()


_CHECKER_FLAGS = ("checked_reset", "checked_step", "checked_data_reuse")


def _find_wrapper(env: gymnasium.Env, cls: type) -> gymnasium.Wrapper | None:
    """The first wrapper of type `cls` in `env`'s wrapper stack, if any."""
    while isinstance(env, gymnasium.Wrapper):
        if isinstance(env, cls):
            return env
        env = env.env
    return None
