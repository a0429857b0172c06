"""Finding and copying the model entries a dm_control task randomises.

Some tasks move things by editing the compiled model rather than the state
(reacher's target geom_pos, finger's target site_pos, point_mass-hard's
wrap_prm, quadruped-escape's hfield_data, lqr's stiffness at load time). An
exact state must carry those entries, so we compare every numeric model array
across freshly loaded, reset instances and keep the entries that differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

# Rendering-only and large; no suite task randomises it.
_SKIP = frozenset({"tex_data"})


def numeric_arrays(model: mujoco.MjModel) -> dict[str, np.ndarray]:
    """Copies of every numeric array attribute of `model`, flattened."""
    out = {}
    for name in dir(model):
        if name.startswith("_") or name in _SKIP:
            continue
        try:
            value = getattr(model, name)
        except Exception:  # some bindings raise for absent optional fields
            continue
        if isinstance(value, np.ndarray) and value.dtype.kind in "fiub" and value.size:
            out[name] = value.ravel().copy()
    return out


@dataclass(frozen=True)
class ModelEntries:
    """Flat indices into named model arrays, read and written as one float64 vector."""

    fields: tuple[tuple[str, np.ndarray], ...]

    @property
    def size(self) -> int:
        return sum(len(idx) for _, idx in self.fields)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.fields)

    def read(self, model: mujoco.MjModel) -> np.ndarray:
        parts = [getattr(model, name).ravel()[idx] for name, idx in self.fields]
        return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)

    def write(self, model: mujoco.MjModel, values: np.ndarray) -> None:
        start = 0
        for name, idx in self.fields:
            array = getattr(model, name)
            # reshape of the binding's contiguous view stays a view, so this
            # writes through to the live model.
            flat = array.reshape(-1)
            flat[idx] = values[start : start + len(idx)].astype(array.dtype)
            start += len(idx)


def changed_entries(snapshots: list[dict[str, np.ndarray]]) -> ModelEntries:
    """Entries that differ between any snapshot and the first one."""
    first = snapshots[0]
    fields = []
    for name in sorted(first):
        changed = np.zeros(first[name].shape, dtype=bool)
        for snap in snapshots[1:]:
            diff = snap[name] != first[name]
            if first[name].dtype.kind == "f":
                diff &= ~(np.isnan(snap[name]) & np.isnan(first[name]))
            changed |= diff
        if changed.any():
            fields.append((name, np.flatnonzero(changed)))
    return ModelEntries(tuple(fields))
