"""The single-environment protocol and helpers shared by the adapters."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import sys

import mujoco
import numpy as np

from dynalab.types import EnvSpec

# MuJoCo reports unlimited actuator ranges as +-mjMAXVAL (1e10); rescaling [-1, 1]
# onto such a range would be meaningless, so those dimensions pass through.
_UNBOUNDED = 1e10


@runtime_checkable
class Env(Protocol):
    """One task instance with flat float32 observations and [-1, 1] actions."""

    spec: EnvSpec

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Start an episode and return its first observation."""
        ...

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool]:
        """Apply an action in [-1, 1]; return (obs, reward, terminated, truncated).

        Raises SimulatorDiverged if the physics diverged during the step (the episode
        is then over), RuntimeError(EPISODE_OVER) if called after the episode ended.
        """
        ...

    def get_state(self) -> np.ndarray:
        """Return the exact simulator state as a float64 vector of length state_dim."""
        ...

    def set_state(self, state: np.ndarray) -> None:
        """Restore a vector from get_state so the next step matches the original."""
        ...

    def snapshot(self) -> dict[str, np.ndarray]:
        """Return all host-side state (simulator, counters, RNGs) as numpy arrays for np.savez."""
        ...

    def restore(self, snap: dict[str, np.ndarray]) -> None:
        """Restore a snapshot so this instance continues bit-identically to the original."""
        ...

    def close(self) -> None:
        """Release the simulator."""
        ...


class ActionScaler:
    """Maps actions in [-1, 1] affinely onto the task's real bounds."""

    def __init__(self, low: np.ndarray, high: np.ndarray) -> None:
        low = np.asarray(low, dtype=np.float64)
        high = np.asarray(high, dtype=np.float64)
        bounded = (np.abs(low) < _UNBOUNDED) & (np.abs(high) < _UNBOUNDED)
        self.low = np.where(bounded, low, -1.0)
        self.high = np.where(bounded, high, 1.0)
        self._center = 0.5 * (self.high + self.low)
        self._half = 0.5 * (self.high - self.low)

    @property
    def dim(self) -> int:
        return int(self.low.shape[0])

    def __call__(self, action: np.ndarray) -> np.ndarray:
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (self.dim,):
            raise ValueError(f"action has shape {action.shape} but this env expects ({self.dim},).")
        scaled = self._center + self._half * np.clip(action, -1.0, 1.0)
        # Rounding in center + half * 1 can overshoot a bound by one ulp.
        return np.clip(scaled, self.low, self.high)


class MujocoHandles:
    """Read-only access to the simulator behind an adapter (for tests and diagnostics)."""

    _model: mujoco.MjModel
    _data: mujoco.MjData
    _scaler: ActionScaler

    @property
    def model(self) -> mujoco.MjModel:
        return self._model

    @property
    def data(self) -> mujoco.MjData:
        return self._data

    @property
    def action_low(self) -> np.ndarray:
        return self._scaler.low

    @property
    def action_high(self) -> np.ndarray:
        return self._scaler.high


def check_state(state: np.ndarray, state_dim: int) -> np.ndarray:
    """Return `state` as a float64 vector, or raise if its length is wrong."""
    state = np.asarray(state, dtype=np.float64)
    if state.shape != (state_dim,):
        raise ValueError(
            f"state has shape {state.shape} but this env's state vector has shape ({state_dim},)."
        )
    return state


def put_optional_int(snap: dict[str, np.ndarray], key: str, value: int | None) -> None:
    """Store an int that may be None as `key` (int64, -1 for None) and `key_set` (bool)."""
    snap[key] = np.asarray(-1 if value is None else value, dtype=np.int64)
    snap[f"{key}_set"] = np.asarray(value is not None)


def get_optional_int(snap: dict[str, np.ndarray], key: str) -> int | None:
    """Read back a value written by put_optional_int."""
    return int(snap[key]) if bool(snap[f"{key}_set"]) else None


def check_snapshot_id(snap: dict[str, np.ndarray], env_id: str) -> None:
    """Raise if `snap` was taken from an env of another id."""
    if "id" not in snap:
        raise ValueError("snapshot has no 'id' entry; pass a dict made by snapshot().")
    if str(snap["id"]) != env_id:
        raise ValueError(f"snapshot was taken from {str(snap['id'])!r}, not {env_id!r}.")


EPISODE_OVER = "step() was called after the episode ended; call reset() or set_state() first."


class SimulatorDiverged(RuntimeError):
    """The physics became invalid during the step that raises it, so that step has no transition.

    Raised by an adapter's `step` when MuJoCo met a NaN, an infinity or a magnitude
    beyond mjMAXVAL (1e10) in the positions, velocities or accelerations (for dm_control
    tasks: whenever dm_control raises PhysicsError, i.e. on any new MuJoCo warning).
    On such a bad value MuJoCo resets mjData in the middle of the step, so what the
    simulator shows afterwards (Gymnasium's observation, reward and flags) is a
    teleported state, not the consequence of the action. The adapter discards it and
    ends the episode: the next `step` raises RuntimeError(EPISODE_OVER) until `reset()`
    or `set_state()`. The message names the task and the warning(s).
    """


# MuJoCo's checks that reset mjData on a bad state (mj_checkPos, mj_checkVel, mj_checkAcc).
BAD_STATE_WARNINGS: tuple[mujoco.mjtWarning, ...] = (
    mujoco.mjtWarning.mjWARN_BADQPOS,
    mujoco.mjtWarning.mjWARN_BADQVEL,
    mujoco.mjtWarning.mjWARN_BADQACC,
)


def clear_warnings(data: mujoco.MjData) -> None:
    """Zero MuJoCo's warning counters before a step, so any count after it is new.

    On a bad state MuJoCo clears every counter (mj_resetData) and then counts that one
    warning once, so a counter already at 1 or more could end a diverged step unchanged
    and a before/after comparison would miss it. The counters are diagnostics only:
    no dynamics read them, and they are not part of any state vector or snapshot.
    """
    data.warning.number[:] = 0


def warning_names(data: mujoco.MjData, warnings: tuple[mujoco.mjtWarning, ...]) -> list[str]:
    """Names of the `warnings` whose counters are non-zero, e.g. ['mjWARN_BADQVEL (DOF 0)']."""
    return [
        f"{w.name} (DOF {int(data.warning[int(w)].lastinfo)})"
        for w in warnings
        if data.warning[int(w)].number > 0
    ]


# MuJoCo compiler deprecations raised by the XML that dm_control ships with its suite (e.g. "compiler
# attribute 'settotalmass' is deprecated" for cheetah, hopper, walker, ...). They are about
# dm_control's own files, repeat for every environment built (each seed, each evaluation env) and
# there is nothing a dynalab user can do about them, so they are not shown.
_SILENCED = ("is deprecated and will be removed",)
_shown: set[str] = set()


def _mujoco_warning(message: str) -> None:
    message = message.strip()
    # The bad-state warnings are reported per seed and step by the training loop (divergence is
    # detected from MuJoCo's warning counters, which this handler leaves alone).
    if "Nan, Inf or huge value" in message or any(s in message for s in _SILENCED) or message in _shown:
        return
    _shown.add(message)
    print(f"dynalab: warning: MuJoCo says: {message} (shown once). It comes from the task's model or simulation, "
          "not from dynalab; if this is your own task, fix its model, and if training reports diverged steps "
          "(env/diverged in metrics.csv), check the task's actions and physics.", file=sys.stderr)


def own_mujoco_warnings() -> None:
    """Route MuJoCo's warnings to dynalab's handler: bad-state warnings are left to the training
    loop, dm_control's asset deprecations are silenced, every other message is shown once per
    process with what to do."""
    mujoco.set_mju_user_warning(_mujoco_warning)


# dm_control installs its own handler (every warning as an absl log line) when its wrapper module is
# first imported, which the registry does for every task, Gym ones included, and a user's task module
# may do at any time. Importing it here first, once, makes dynalab's handler the one that stays.
import dm_control.mujoco.wrapper.core  # noqa: E402, F401

own_mujoco_warnings()
