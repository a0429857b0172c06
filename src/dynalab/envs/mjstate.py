"""Saving and restoring MuJoCo's integration state as a flat float64 vector."""

from __future__ import annotations

import mujoco
import numpy as np

# qpos, qvel, act, warmstart, ctrl, applied forces, eq_active, mocap, userdata,
# plugin state and time: everything mj_step reads that is not a derived quantity.
_SPEC = int(mujoco.mjtState.mjSTATE_INTEGRATION)


def integration_size(model: mujoco.MjModel) -> int:
    """Length of the integration-state vector for `model`."""
    return int(mujoco.mj_stateSize(model, _SPEC))


def get_integration(model: mujoco.MjModel, data: mujoco.MjData) -> np.ndarray:
    """Copy the integration state out of `data`."""
    out = np.empty(integration_size(model), dtype=np.float64)
    mujoco.mj_getState(model, data, out, _SPEC)
    return out


def set_integration(model: mujoco.MjModel, data: mujoco.MjData, state: np.ndarray) -> None:
    """Write an integration state produced by get_integration into `data`."""
    mujoco.mj_setState(model, data, np.ascontiguousarray(state, dtype=np.float64), _SPEC)
