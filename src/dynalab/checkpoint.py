"""Atomic, incremental on-disk checkpoints of a run: the learner pytree, host state and metrics.

Layout of the checkpoints folder `<run>/checkpoints/`:

- `step_<012d>/learner.npz`: every leaf of the seed-batched learner state (networks, optimiser
  states, temperature, model ensemble, normalisers, elites, and each buffer's write position,
  fill level and write count) except the buffers' rows, one `.npy` member per leaf.
- `step_<012d>/host.npz`: what lives outside the device: the environments' simulator states,
  episode counters and RNGs (train and eval envs), the current observations, the env-step
  counter, and the loop's bookkeeping between log rows.
- `step_<012d>/metrics.csv`: a copy of the run's metrics.csv as it was at this step.
- `step_<012d>/meta.json`: format version, step, config, the name, shape and dtype of every
  leaf, and for every buffer the segment file that holds the newest version of each block.
- `buffers/<segment>.npz`: buffer rows, shared by the checkpoints. Replay and synthetic buffers
  are rings that only append, so a buffer's ring is cut into blocks of `block_rows` rows and a
  checkpoint writes only the blocks that rows written since the previous checkpoint touched (its
  write count minus the previous one's tells which), into one new segment; the other blocks it
  takes from the segments the previous checkpoint named. A checkpoint therefore costs the rows of
  one checkpoint interval, not the whole buffer. The first checkpoint of a folder, and any whose
  predecessor does not fit (another structure, counts that do not add up), writes every filled
  block.

A checkpoint is written into a hidden temporary folder (its segment under a hidden temporary
name), every file fsync'ed, then renamed into place, so a crash mid-write leaves earlier
checkpoints intact and only complete ones are ever visible. Pruning renames a checkpoint away
before deleting it, then deletes the segments no remaining checkpoint names. Everything is plain
NumPy `.npy`/`.npz` (no pickle), readable without dynalab. A checkpoint folder written with a
`target` name (e.g. the non-finite dump) holds its own segment and stands alone. Checkpoints of
format 1 (whole buffers inside learner.npz) are still read.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import threading
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from dynalab.replay import ReplayBuffer

FORMAT = 2
_NAME = re.compile(r"^step_(\d{12})$")
SEGMENTS = "buffers"  # folder of the shared buffer segments, next to the step_* folders
MAX_BLOCK_ROWS = 4096
_BLOCKS_PER_BUFFER = 64  # small buffers get smaller blocks, so tests exercise many of them
_RUN_BLOCKS = 64  # blocks fetched from the device at once: bounds the host copy of a full write


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


def pick(run_dir: Path, step: int | None, purpose: str) -> Path:
    """The checkpoint of a run folder at env step `step` (None: the newest).

    Raises CheckpointError (one sentence) when the run keeps none, saying what is then missing
    (`purpose`, e.g. "a trained policy to render"), or when none is at `step`, listing those kept.
    """
    found = complete(run_dir / "checkpoints")
    if not found:
        raise CheckpointError(f"{run_dir} holds no checkpoint, so there is no {purpose}; runs keep checkpoints "
                              "only with --checkpoint-every above 0.")
    if step is None:
        return found[-1]
    steps = [int(read_meta(p)["step"]) for p in found]
    if step not in steps:
        raise CheckpointError(f"{run_dir} has no checkpoint at env step {step}; choose --checkpoint from "
                              f"{', '.join(map(str, steps))} (older ones were pruned by --keep-checkpoints).")
    return found[steps.index(step)]


def remove_partial(folder: Path) -> None:
    """Delete leftovers of writes that were interrupted (hidden `.tmp-*` folders and segments) and
    segments that no complete checkpoint names (written just before a crash)."""
    if folder.is_dir():
        for p in folder.glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True)
        for p in (folder / SEGMENTS).glob(".tmp-*"):
            p.unlink(missing_ok=True)
        _remove_unreferenced_segments(folder)


def prune(folder: Path, keep: int) -> None:
    """Keep the newest `keep` checkpoints in `folder`, and the segments they name."""
    for p in complete(folder)[:-keep]:
        # Renamed first: a crash mid-delete must not leave a folder that looks complete but
        # lacks files (the segments it names may already be gone).
        doomed = folder / f".tmp-pruned-{p.name}"
        os.rename(p, doomed)
        shutil.rmtree(doomed)
    _remove_unreferenced_segments(folder)


def _segment_refs(path: Path) -> set[str]:
    """Segment references (relative to the checkpoint folder) of the checkpoint at `path`."""
    meta = read_meta(path)
    return {ref for b in meta.get("buffers", []) for ref in b["blocks"] if ref is not None}


def _remove_unreferenced_segments(folder: Path) -> None:
    segments = folder / SEGMENTS
    if not segments.is_dir():
        return
    used = {Path(ref).name for c in complete(folder) for ref in _segment_refs(c)
            if Path(ref).parent.name == SEGMENTS}
    for p in segments.glob("*.npz"):
        if p.name not in used:
            p.unlink(missing_ok=True)


# --- the learner pytree -------------------------------------------------------------------


def _is_buffer(x: Any) -> bool:
    return isinstance(x, ReplayBuffer)


class _Leaf:
    """One leaf of the learner state: its pytree path name, the array, and for a buffer's rows
    the index of that buffer (in flattening order), else None."""

    __slots__ = ("name", "value", "buffer")

    def __init__(self, name: str, value: Any, buffer: int | None):
        self.name, self.value, self.buffer = name, value, buffer


def _leaves(state: Any) -> tuple[list[_Leaf], list[ReplayBuffer], Any, list[Any]]:
    """Every leaf of `state` in flattening order, its buffers, and what `_rebuild` needs."""
    top, treedef = jax.tree_util.tree_flatten_with_path(state, is_leaf=_is_buffer)
    out, buffers, subdefs = [], [], []
    for path, node in top:
        prefix = jax.tree_util.keystr(path)
        if _is_buffer(node):
            sub, subdef = jax.tree_util.tree_flatten_with_path(node)
            subdefs.append(subdef)
            for subpath, leaf in sub:
                key = jax.tree_util.keystr(subpath)
                out.append(_Leaf(prefix + key, leaf, len(buffers) if key.startswith(".data") else None))
            buffers.append(node)
        else:
            subdefs.append(None)
            out.append(_Leaf(prefix, node, None))
    return out, buffers, treedef, subdefs


def _rebuild(treedef: Any, subdefs: list[Any], leaves: list[Any]) -> Any:
    it = iter(leaves)
    nodes = []
    for subdef in subdefs:
        nodes.append(next(it) if subdef is None else subdef.unflatten([next(it) for _ in range(subdef.num_leaves)]))
    return treedef.unflatten(nodes)


def nbytes(state: Any) -> int:
    """Size of the learner state with every buffer full: an upper bound on one checkpoint's arrays."""
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


# --- buffer blocks --------------------------------------------------------------------------


def block_rows(capacity: int) -> int:
    """Rows per block of a ring of `capacity` rows: at most MAX_BLOCK_ROWS, and about 64 blocks
    for small rings (so a checkpoint of a short test run still writes only some of them)."""
    return max(1, min(MAX_BLOCK_ROWS, -(-capacity // _BLOCKS_PER_BUFFER)))


def _buffer_arrays(buf: ReplayBuffer) -> dict[str, np.ndarray]:
    """Write position, fill level and write count per member: each (members,) int64."""
    arrays = {k: np.asarray(getattr(buf, k)).astype(np.int64) for k in ("position", "size", "count")}
    if any(a.ndim != 1 for a in arrays.values()):
        raise ValueError(f"checkpoints expect buffers with one leading member axis, got position shape "
                         f"{arrays['position'].shape}.")
    return arrays


def _filled_blocks(size: np.ndarray, capacity: int, rows: int) -> np.ndarray:
    """Blocks holding any filled row of any member: (blocks,) bool."""
    starts = np.arange(0, capacity, rows)
    return starts < int(np.max(size, initial=0))


def _dirty_blocks(now: dict[str, np.ndarray], base: Mapping[str, Any] | None, capacity: int,
                  rows: int) -> np.ndarray | None:
    """Blocks written since `base` (the previous checkpoint's record of this buffer): (blocks,) bool,
    or None when `base` does not describe an earlier state of this buffer (then every block is new).

    Rows are written at position, position + 1, ... (mod capacity) and each adds one to the write
    count (mod 2**32), so member i wrote d = count - base count rows since, into the ring range
    starting at the base position; d >= capacity rewrote every block.
    """
    if base is None or base["capacity"] != capacity or base["block_rows"] != rows \
            or len(base["count"]) != len(now["count"]):
        return None
    blocks = -(-capacity // rows)
    dirty = np.zeros(blocks, bool)
    for pos0, size0, count0, pos, size, count in zip(base["position"], base["size"], base["count"],
                                                      now["position"], now["size"], now["count"]):
        d = (int(count) - int(count0)) % 2**32
        if d >= capacity:
            if d >= 2**31 or size != capacity:
                return None  # counts that went backwards: not a later state of the same buffer
            dirty[:] = True
            continue
        if (pos0 + d) % capacity != pos or min(size0 + d, capacity) != size:
            return None
        if d:
            last = pos0 + d - 1
            dirty[pos0 // rows: min(last, capacity - 1) // rows + 1] = True
            if last >= capacity:
                dirty[: (last - capacity) // rows + 1] = True
    return dirty


def _runs(mask: np.ndarray) -> Iterator[tuple[int, int]]:
    """Half-open ranges [a, b) of consecutive True entries of `mask`, each at most _RUN_BLOCKS long."""
    idx = np.flatnonzero(mask)
    i = 0
    while i < len(idx):
        j = i
        while j + 1 < len(idx) and idx[j + 1] == idx[j] + 1 and j + 1 - i < _RUN_BLOCKS:
            j += 1
        yield int(idx[i]), int(idx[j]) + 1
        i = j + 1


def _host_rows(leaf: Any, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of a (members, capacity, ...) leaf as a host array. On a CPU device the
    array is already in host memory (a view, no copy); elsewhere only these rows are transferred."""
    if isinstance(leaf, jax.Array) and all(d.platform != "cpu" for d in leaf.devices()):
        return np.asarray(leaf[:, start:stop])
    return np.asarray(leaf)[:, start:stop]


def _block_member(leaf_index: int, block: int) -> str:
    return f"{leaf_index:04d}_{block:06d}"


def _segment_arrays(leaves: list[_Leaf], dirty: list[np.ndarray], rows: list[int],
                    owned: bool = False) -> Iterator[tuple[str, np.ndarray]]:
    """(member name, rows) of every dirty block, run by run. `owned`: each run copied into host
    memory of its own (on a CPU device the rows are otherwise views of the live buffers)."""
    for i, leaf in enumerate(leaves):
        if leaf.buffer is None:
            continue
        r = rows[leaf.buffer]
        for a, b in _runs(dirty[leaf.buffer]):
            host = _host_rows(leaf.value, a * r, b * r)
            if owned and not host.flags.owndata:
                host = np.array(host)
            for k in range(a, b):
                yield _block_member(i, k), host[:, (k - a) * r:(k - a + 1) * r]


def _owned(x: Any) -> np.ndarray:
    """`x` as a host array that no later device computation can change."""
    host = np.asarray(x)
    return host if host.flags.owndata else np.array(host)


def _base_record(folder: Path, leaves: list[_Leaf], step: int) -> dict[str, Any] | None:
    """The newest complete checkpoint in `folder` as a base for an incremental write, if it holds
    a learner of the same structure written before `step`; else None."""
    path = latest(folder)
    if path is None:
        return None
    meta = read_meta(path)
    if meta.get("format") != FORMAT or meta["step"] > step or [
        (x["name"], x["shape"], x["dtype"]) for x in meta["learner"]
    ] != [(x.name, list(x.value.shape), str(x.value.dtype)) for x in leaves]:
        return None
    return meta


def _copy_bytes(leaves: list[_Leaf], dirty: list[np.ndarray], rows: list[int]) -> int:
    """Host bytes that copies of a checkpoint's arrays take: its dirty blocks and the other leaves."""
    total = 0
    for leaf in leaves:
        size = int(np.prod(leaf.value.shape)) * np.dtype(leaf.value.dtype).itemsize
        if leaf.buffer is None:
            total += size
        else:
            capacity = leaf.value.shape[1]
            total += size * min(capacity, int(dirty[leaf.buffer].sum()) * rows[leaf.buffer]) // max(capacity, 1)
    return total


def _available_host_bytes() -> int:
    """Memory the system can still give this process (Linux's MemAvailable; free pages elsewhere)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2**62  # unknown: assume the copies fit


@dataclass
class _Job:
    """One checkpoint, planned: every array it writes and where. Built by `_plan` in the caller's
    thread; `_commit` writes it (there or in a `Writer`'s thread)."""

    folder: Path
    final: Path  # the checkpoint folder it becomes
    seg_name: str | None  # its new segment's file in folder/buffers/; None: segment.npz inside (a target)
    segment: Iterable[tuple[str, np.ndarray]] | None  # the dirty blocks; None when nothing was written
    learner: Iterable[tuple[str, np.ndarray]]  # the leaves that are not buffer rows
    host: Mapping[str, np.ndarray]
    info: dict[str, Any]  # meta.json
    step: int
    owned: bool  # every array above is a host copy of its own (else read while written)
    metrics: bytes | Path | None  # metrics.csv: its bytes when owned, else the file to copy


def _plan(folder: Path, step: int, learner_state: Any, host: Mapping[str, np.ndarray], meta: Mapping[str, Any],
          metrics_csv: Path | None, target: str | None, owned: bool) -> _Job:
    """Decide what the checkpoint of `step` writes. With `owned`, take host copies of all of it
    now (only the dirty blocks of each buffer), so that it can be written while the learner
    goes on changing its state in place; without, arrays are read while `_commit` writes."""
    folder.mkdir(parents=True, exist_ok=True)
    leaves, buffers, _, _ = _leaves(learner_state)
    base = None if target else _base_record(folder, leaves, step)
    records, dirty, rows = [], [], []
    seg_name = None if target else f"{name(step)}-{secrets.token_hex(4)}.npz"
    seg_ref = "segment.npz" if target else f"../{SEGMENTS}/{seg_name}"
    for b, buf in enumerate(buffers):
        cap = int(jax.tree_util.tree_leaves(buf.data)[0].shape[1])
        r = block_rows(cap)
        now = _buffer_arrays(buf)
        before = base["buffers"][b] if base is not None and b < len(base["buffers"]) else None
        changed = _dirty_blocks(now, before, cap, r)
        if changed is None:
            changed, blocks = _filled_blocks(now["size"], cap, r), [None] * -(-cap // r)
        else:  # the previous checkpoint's references, relative to its folder, which is a sibling
            blocks = list(before["blocks"])
        blocks = [seg_ref if c else ref for c, ref in zip(changed, blocks)]
        records.append({"capacity": cap, "block_rows": r, "blocks": blocks,
                        **{k: v.tolist() for k, v in now.items()}})
        dirty.append(changed)
        rows.append(r)
    written = any(d.any() for d in dirty)  # nothing written since the base: no segment
    if owned and _copy_bytes(leaves, dirty, rows) > _available_host_bytes() // 2:
        owned = False  # host copies would crowd out the run: the caller writes now, streaming as `write` does
    segment = _segment_arrays(leaves, dirty, rows, owned) if written else None
    learner = ((f"{i:04d}", x.value) for i, x in enumerate(leaves) if x.buffer is None)
    info = {
        "format": FORMAT,
        "step": step,
        **meta,
        "learner": [{"name": x.name, "shape": list(x.value.shape), "dtype": str(x.value.dtype),
                     "buffer": x.buffer} for x in leaves],
        "buffers": records,
        "segment": seg_ref if written else None,  # the one this write added
    }
    if owned:
        segment = list(segment) if segment is not None else None
        learner = [(k, _owned(v)) for k, v in learner]
        host = {k: np.array(v) for k, v in host.items()}
    return _Job(folder=folder, final=folder / (target or name(step)), seg_name=seg_name, segment=segment,
                learner=learner, host=host, info=info, step=step, owned=owned,
                metrics=metrics_csv.read_bytes() if owned and metrics_csv is not None else metrics_csv)


def _commit(job: _Job) -> Path:
    """Write a planned checkpoint atomically; returns its path (see `write`)."""
    folder, final = job.folder, job.final
    tmp = folder / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    seg_tmp = None
    try:
        if job.segment is not None:
            if job.seg_name is None:
                _write_npz(tmp / "segment.npz", iter(job.segment))
            else:
                (folder / SEGMENTS).mkdir(exist_ok=True)
                seg_tmp = folder / SEGMENTS / f".tmp-{job.seg_name}"
                _write_npz(seg_tmp, iter(job.segment))
                os.rename(seg_tmp, folder / SEGMENTS / job.seg_name)
                _fsync(folder / SEGMENTS)
        seg_tmp = None
        _write_npz(tmp / "learner.npz", iter(job.learner))
        _write_npz(tmp / "host.npz", iter(job.host.items()))
        if isinstance(job.metrics, bytes):
            (tmp / "metrics.csv").write_bytes(job.metrics)
            _fsync(tmp / "metrics.csv")
        elif job.metrics is not None:
            shutil.copyfile(job.metrics, tmp / "metrics.csv")
            _fsync(tmp / "metrics.csv")
        (tmp / "meta.json").write_text(json.dumps(job.info, indent=1) + "\n")
        _fsync(tmp / "meta.json")
        _fsync(tmp)
        if final.exists():  # e.g. a checkpoint of the same step written before a crash
            old = folder / f".tmp-replaced-{final.name}-{os.getpid()}"
            os.rename(final, old)
            shutil.rmtree(old)
        os.rename(tmp, final)
        _fsync(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if seg_tmp is not None:
            seg_tmp.unlink(missing_ok=True)
        raise
    return final


def write(
    folder: Path,
    step: int,
    learner_state: Any,
    host: Mapping[str, np.ndarray],
    meta: Mapping[str, Any],
    metrics_csv: Path | None,
    target: str | None = None,
) -> Path:
    """Write a checkpoint atomically into `folder/<target or step_...>`; returns its path.

    Without `target`, the buffers' rows go into one new segment of `folder/buffers/` holding only
    the blocks written since the newest checkpoint in `folder` (every filled block when there is
    none that fits). With `target`, the checkpoint holds all its rows itself (`segment.npz`).
    Raises OSError when the disk is full or unwritable; nothing partial stays visible.
    """
    return _commit(_plan(folder, step, learner_state, host, meta, metrics_csv, target, owned=False))


class Writer:
    """Checkpoints written on a background thread, one at a time, while the run goes on.

    `submit` takes host copies of what the checkpoint holds (the buffers' dirty blocks only) and
    returns; the files are written, fsync'ed and renamed into place by the thread, then
    `after` runs there (e.g. `prune`). Where the copies would take more than half the host memory
    still available, `submit` writes synchronously instead, streaming as `write` does. The run waits only for the copies, and for the previous
    write if it is still going when the next one is due. Everything `write` guarantees holds:
    a crash mid-write leaves the earlier checkpoints intact, and resuming starts from the newest
    complete one. A failed write (e.g. OSError, disk full) is raised by the next `submit`,
    `check` or `wait`, with `failed_step` set to the step it was writing.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.failed_step: int | None = None
        self.last: Path | None = None

    def submit(self, folder: Path, step: int, learner_state: Any, host: Mapping[str, np.ndarray],
               meta: Mapping[str, Any], metrics_csv: Path | None, after: Callable[[], None] | None = None) -> Path:
        """Start writing the checkpoint of `step` (see `write`); returns the path it will have."""
        self.wait()  # the next plan's base is the newest complete checkpoint on disk
        job = _plan(folder, step, learner_state, host, meta, metrics_csv, None, owned=True)
        if not job.owned:  # copies would not fit in half the free host memory: write now instead
            self.last = _commit(job)
            if after is not None:
                after()
            return job.final

        def run() -> None:
            try:
                self.last = _commit(job)
                if after is not None:
                    after()
            except BaseException as e:  # noqa: BLE001 - handed to the run's thread by check/wait
                self._error, self.failed_step = e, job.step

        self._thread = threading.Thread(target=run, name=f"dynalab-checkpoint-{step}")
        self._thread.start()
        return job.final

    def check(self) -> None:
        """Raise the error of a finished write that failed (returns at once otherwise)."""
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def wait(self) -> Path | None:
        """Wait for the write in progress; raises its error; returns the newest written path."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.check()
        return self.last


def written_bytes(path: Path) -> int:
    """Bytes that writing the checkpoint at `path` put on disk: its own files plus the segment
    it added (the blocks written since the checkpoint before it)."""
    own = sum(f.stat().st_size for f in path.iterdir())
    ref = read_meta(path).get("segment")
    return own + ((path / ref).stat().st_size if ref and Path(ref).parent.name == SEGMENTS else 0)


def disk_bytes(folder: Path) -> int:
    """Bytes of every complete checkpoint in `folder` and of the segments they share."""
    segments = folder / SEGMENTS
    shared = sum(p.stat().st_size for p in segments.glob("*.npz")) if segments.is_dir() else 0
    return shared + sum(f.stat().st_size for c in complete(folder) for f in c.iterdir())


def read_meta(path: Path) -> dict[str, Any]:
    return json.loads((path / "meta.json").read_text())


def read_host(path: Path) -> dict[str, np.ndarray]:
    with np.load(path / "host.npz", allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _mismatch(path: Path, info: Mapping[str, Any], leaf_name: str, leaf: Any) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path} does not fit this config: {info['name']} is "
        f"{info['dtype']}{tuple(info['shape'])} there but {leaf_name} is {leaf.dtype}{tuple(leaf.shape)} here."
    )


def read_learner(path: Path, template: Any) -> Any:
    """The learner state saved in `path`, shaped like `template` (a freshly initialised state).

    Raises CheckpointError naming the first leaf whose name, shape or dtype differs, which is
    what a config change that alters network or buffer sizes looks like, or naming a buffer
    segment that is missing.
    """
    meta = read_meta(path)
    if meta.get("format", 1) == 1:
        return _read_learner_v1(path, template, meta)
    leaves, _, treedef, subdefs = _leaves(template)
    saved = meta["learner"]
    if len(saved) != len(leaves):
        raise CheckpointError(
            f"checkpoint {path} holds {len(saved)} arrays but this config's learner has {len(leaves)}; "
            "the algorithm or its structure differs from the run that wrote it."
        )
    for info, x in zip(saved, leaves):
        if (info["name"], info["shape"], info["dtype"]) != (x.name, list(x.value.shape), str(x.value.dtype)):
            raise _mismatch(path, info, x.name, x.value)
    out: list[Any] = []
    segments: dict[str, Any] = {}
    try:
        with np.load(path / "learner.npz", allow_pickle=False) as f:
            for i, x in enumerate(leaves):
                if x.buffer is None:
                    out.append(jax.numpy.asarray(f[f"{i:04d}"]))
                    continue
                record = meta["buffers"][x.buffer]
                full = np.zeros(x.value.shape, x.value.dtype)
                r = record["block_rows"]
                for k, ref in enumerate(record["blocks"]):
                    if ref is None:
                        continue  # never written: still the zeros the buffer was created with
                    if ref not in segments:
                        seg = path / ref
                        if not seg.is_file():
                            raise CheckpointError(f"checkpoint {path} names the buffer segment {seg}, which is "
                                                  "missing; resume from a complete checkpoints folder.")
                        segments[ref] = np.load(seg, allow_pickle=False)
                    full[:, k * r:(k + 1) * r] = segments[ref][_block_member(i, k)]
                out.append(jax.numpy.asarray(full))
    finally:
        for seg in segments.values():
            seg.close()
    return _rebuild(treedef, subdefs, out)


def _read_learner_v1(path: Path, template: Any, meta: Mapping[str, Any]) -> Any:
    """Format 1: every leaf in learner.npz, buffer rows up to the largest fill; buffers had no
    write count (it is set to 0: only the next checkpoint's choice of blocks reads it)."""
    leaves, _, treedef, subdefs = _leaves(template)
    saved = {info["name"]: (i, info) for i, info in enumerate(meta["learner"])}
    expected = [x for x in leaves if not x.name.endswith(".count")]
    if len(saved) != len(expected):
        raise CheckpointError(
            f"checkpoint {path} holds {len(saved)} arrays but this config's learner has {len(expected)}; "
            "the algorithm or its structure differs from the run that wrote it."
        )
    out = []
    with np.load(path / "learner.npz", allow_pickle=False) as f:
        for x in leaves:
            if x.name.endswith(".count") and x.name not in saved:
                out.append(jax.numpy.zeros(x.value.shape, x.value.dtype))
                continue
            if x.name not in saved:
                raise CheckpointError(f"checkpoint {path} has no array {x.name}; the algorithm or its structure "
                                      "differs from the run that wrote it.")
            i, info = saved[x.name]
            arr = f[f"{i:04d}"]
            fill = info["fill"]
            leaf = x.value
            stored = list(leaf.shape) if fill is None else [leaf.shape[0], min(leaf.shape[1], fill), *leaf.shape[2:]]
            if (info["shape"], info["dtype"]) != (list(leaf.shape), str(leaf.dtype)) or list(arr.shape) != stored:
                raise _mismatch(path, info, x.name, leaf)
            if fill is not None:
                full = np.zeros(leaf.shape, leaf.dtype)
                full[:, : arr.shape[1]] = arr
                arr = full
            out.append(jax.numpy.asarray(arr))
    return _rebuild(treedef, subdefs, out)
