"""Atomic on-disk checkpoints of a run: the learner pytree, host state and metrics so far.

Layout of one checkpoint, `<run>/checkpoints/step_<012d>/`:

- `learner.npz`: every leaf of the seed-batched learner state (networks, optimiser states,
  temperature, model ensemble, normalisers, elites, replay and synthetic buffers), one `.npy`
  member per leaf, named by its pytree path. Buffers are stored up to their fill level only.
- `host.npz`: what lives outside the device: the environments' simulator states, episode
  counters and RNGs (train and eval envs), the current observations, the env-step counter,
  and the loop's bookkeeping between log rows.
- `metrics.csv`: a copy of the run's metrics.csv as it was at this step.
- `meta.json`: format version, step, config, and the name, shape and dtype of every leaf.

A checkpoint is written into a hidden temporary folder, every file fsync'ed, then renamed into
place, so a crash mid-write leaves earlier checkpoints intact and only complete ones are ever
visible. Everything is plain NumPy `.npy`/`.npz` (no pickle), readable without dynalab.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from dynalab.replay import ReplayBuffer

FORMAT = 1
_NAME = re.compile(r"^step_(\d{12})$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used with this run; the message is one sentence."""


def name(step: int) -> str:
    return f"step_{step:012d}"


def complete(folder: Path) -> list[Path]:
    """Complete checkpoints in `folder`, oldest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _NAME.match(p.name) and (p / "meta.json").is_file()]
    return sorted(found, key=lambda p: p.name)


def latest(folder: Path) -> Path | None:
    found = complete(folder)
    return found[-1] if found else None


def remove_partial(folder: Path) -> None:
    """Delete leftovers of writes that were interrupted (hidden `.tmp-*` folders)."""
    if folder.is_dir():
        for p in folder.glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True)


def prune(folder: Path, keep: int) -> None:
    for p in complete(folder)[:-keep]:
        shutil.rmtree(p)


# --- the learner pytree -------------------------------------------------------------------


def _is_buffer(x: Any) -> bool:
    return isinstance(x, ReplayBuffer)


def _leaves(state: Any) -> tuple[list[tuple[str, Any, int | None]], Any, list[Any]]:
    """(name, leaf, fill) for every leaf, plus what `_rebuild` needs.

    `fill` is None except for buffer data, where it is that buffer's largest fill level over
    seeds: entries [0, fill) are in use, the rest are still the zeros it was created with.
    """
    top, treedef = jax.tree_util.tree_flatten_with_path(state, is_leaf=_is_buffer)
    out, subdefs = [], []
    for path, node in top:
        prefix = jax.tree_util.keystr(path)
        if _is_buffer(node):
            sub, subdef = jax.tree_util.tree_flatten_with_path(node)
            subdefs.append(subdef)
            fill = int(np.max(np.asarray(node.size)))
            for subpath, leaf in sub:
                key = jax.tree_util.keystr(subpath)
                out.append((prefix + key, leaf, fill if key.startswith(".data") else None))
        else:
            subdefs.append(None)
            out.append((prefix, node, None))
    return out, treedef, subdefs


def _rebuild(treedef: Any, subdefs: list[Any], leaves: list[Any]) -> Any:
    it = iter(leaves)
    nodes = []
    for subdef in subdefs:
        nodes.append(next(it) if subdef is None else subdef.unflatten([next(it) for _ in range(subdef.num_leaves)]))
    return treedef.unflatten(nodes)


def nbytes(state: Any) -> int:
    """Size of the learner state with every buffer full: an upper bound on `learner.npz`."""
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(state))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_npz(path: Path, arrays: Iterator[tuple[str, np.ndarray]]) -> None:
    """Stream arrays into an uncompressed .npz one by one (no second copy of the state)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, arr in arrays:
            with zf.open(key + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(arr, order="C"), allow_pickle=False)
    _fsync(path)


def _learner_arrays(leaves: list[tuple[str, Any, int | None]]) -> Iterator[tuple[str, np.ndarray]]:
    for i, (_, leaf, fill) in enumerate(leaves):
        arr = np.asarray(leaf)
        yield f"{i:04d}", arr if fill is None else arr[:, :fill]  # buffer data: (seeds, capacity, ...)


def write(
    folder: Path,
    step: int,
    learner_state: Any,
    host: Mapping[str, np.ndarray],
    meta: Mapping[str, Any],
    metrics_csv: Path | None,
    target: str | None = None,
) -> Path:
    """Write a checkpoint atomically into `folder/<target or step_...>`; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / (target or name(step))
    tmp = folder / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        leaves, _, _ = _leaves(learner_state)
        _write_npz(tmp / "learner.npz", _learner_arrays(leaves))
        _write_npz(tmp / "host.npz", iter(host.items()))
        if metrics_csv is not None:
            shutil.copyfile(metrics_csv, tmp / "metrics.csv")
            _fsync(tmp / "metrics.csv")
        info = {
            "format": FORMAT,
            "step": step,
            **meta,
            "learner": [
                {"name": n, "shape": list(x.shape), "dtype": str(x.dtype), "fill": fill}
                for n, x, fill in leaves
            ],
        }
        (tmp / "meta.json").write_text(json.dumps(info, indent=1) + "\n")
        _fsync(tmp / "meta.json")
        _fsync(tmp)
        if final.exists():  # e.g. a checkpoint of the same step written before a crash
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def read_meta(path: Path) -> dict[str, Any]:
    return json.loads((path / "meta.json").read_text())


def read_host(path: Path) -> dict[str, np.ndarray]:
    with np.load(path / "host.npz", allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def read_learner(path: Path, template: Any) -> Any:
    """The learner state saved in `path`, shaped like `template` (a freshly initialised state).

    Raises CheckpointError naming the first leaf whose name, shape or dtype differs, which is
    what a config change that alters network or buffer sizes looks like.
    """
    meta = read_meta(path)
    leaves, treedef, subdefs = _leaves(template)
    saved = meta["learner"]
    if len(saved) != len(leaves):
        raise CheckpointError(
            f"checkpoint {path} holds {len(saved)} arrays but this config's learner has {len(leaves)}; "
            "the algorithm or its structure differs from the run that wrote it."
        )
    out = []
    with np.load(path / "learner.npz", allow_pickle=False) as f:
        for i, ((leaf_name, leaf, _), info) in enumerate(zip(leaves, saved)):
            arr = f[f"{i:04d}"]
            fill = info["fill"]
            stored = list(leaf.shape) if fill is None else [leaf.shape[0], min(leaf.shape[1], fill), *leaf.shape[2:]]
            if (info["name"], info["shape"], info["dtype"]) != (leaf_name, list(leaf.shape), str(leaf.dtype)) or list(
                arr.shape
            ) != stored:
                raise CheckpointError(
                    f"checkpoint {path} does not fit this config: {info['name']} is "
                    f"{info['dtype']}{tuple(info['shape'])} there but {leaf_name} is {leaf.dtype}{tuple(leaf.shape)} here."
                )
            if fill is not None:
                full = np.zeros(leaf.shape, leaf.dtype)
                full[:, : arr.shape[1]] = arr
                arr = full
            out.append(jax.numpy.asarray(arr))
    return _rebuild(treedef, subdefs, out)
