"""The run folder: deciding between a fresh start and a resume, and checking it can hold the run.

Nothing here changes a folder until `train` has decided to use it: `plan_run`, `check_disk` and
`check_writable` only read (the write probe is a new hidden file, removed at once).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax

from dynalab import __version__, checkpoint
from dynalab import config as config_lib
from dynalab.config import ConfigError, TrainConfig
from dynalab.replay import ReplayBuffer


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def has_data_rows(metrics_csv: Path) -> bool:
    if not metrics_csv.exists():
        return False
    with metrics_csv.open() as f:
        return sum(1 for _ in zip(range(2), f)) > 1


@dataclass(frozen=True)
class Plan:
    """What `train` will do with a run folder, decided before anything in it is touched."""

    cfg: TrainConfig
    checkpoint: Path | None  # resume from this one; None: start fresh
    finished: bool = False


def plan_run(cfg: TrainConfig, out: Path, allow_config_change: bool = False) -> Plan:
    """Inspect `out` and decide between a fresh start and a resume; raises ConfigError, writes nothing."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; choose a folder path.")
    explicit_capacity = cfg.buffer_capacity is not None
    cfg = dataclasses.replace(cfg, buffer_capacity=cfg.capacity)
    saved_path = out / "config.json"
    if not saved_path.exists():
        if has_data_rows(out / "metrics.csv"):
            raise ConfigError(f"{out} holds a metrics.csv but no config.json, so it is not a dynalab run to resume; choose a new --out.")
        return Plan(cfg, None)
    saved = config_lib.load(saved_path)
    if not explicit_capacity:  # the default capacity follows --steps; a resumed run keeps its buffers
        cfg = dataclasses.replace(cfg, buffer_capacity=saved.buffer_capacity)
    diff = config_lib.differences(saved, cfg)
    if diff and not allow_config_change:
        raise ConfigError(
            f"{out} holds a run with a different config ({'; '.join(diff)}); resume it with the same flags "
            "(or `dynalab resume`), pass --allow-config-change to continue it with the new ones, or choose a new --out."
        )
    ckpt = checkpoint.latest(out / "checkpoints")
    if ckpt is None:
        if has_data_rows(out / "metrics.csv"):
            raise ConfigError(
                f"{out} holds a run without checkpoints (it ran with --checkpoint-every 0), so it cannot be "
                "resumed; choose a new --out."
            )
        return Plan(cfg, None)
    step = checkpoint.read_meta(ckpt)["step"]
    if step >= cfg.steps:
        return Plan(cfg, ckpt, finished=True)
    return Plan(cfg, ckpt)


def check_disk(out: Path, cfg: TrainConfig, full_bytes: int) -> None:
    if not cfg.checkpoint_every:
        return
    probe = out if out.exists() else next(p for p in out.parents if p.exists())
    free = shutil.disk_usage(probe).free
    have = checkpoint.disk_bytes(out / "checkpoints")
    need = max(full_bytes, (cfg.keep_checkpoints + 1) * full_bytes - have)
    if free < need:
        raise ConfigError(
            f"not enough free disk space for {out}: checkpoints of this run need up to {need / 1e9:.2f} GB "
            f"({cfg.keep_checkpoints + 1} x {full_bytes / 1e9:.2f} GB with full buffers) but {free / 1e9:.2f} GB "
            "are free; free space, lower --keep-checkpoints or --buffer-capacity, or pass --checkpoint-every 0."
        )


def check_writable(out: Path) -> None:
    """Create `out` and prove a file can be written there, without touching anything already in it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".dynalab-write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"cannot write to run folder {out}: {e.strerror}; choose a writable --out.") from None


# What decides a run's numbers besides dynalab and JAX (the lock, constraints.txt, pins them all).
_RECORDED = ("jaxlib", "flax", "optax", "numpy", "mujoco", "dm-control", "gymnasium")


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that compute a run (None: not installed)."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in _RECORDED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def write_run_meta(out: Path, resumed_from: int | None, matmul_precision: str = "default") -> None:
    path = out / "run.json"
    meta = json.loads(path.read_text()) if resumed_from is not None and path.exists() else {}
    entry = {
        "dynalab": __version__,
        "jax": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
        "python": platform.python_version(),
        "packages": package_versions(),
        "matmul_precision": matmul_precision,
        "command": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if resumed_from is None:
        meta = entry
    else:
        meta.setdefault("resumes", []).append({**entry, "from_step": resumed_from})
    atomic_write_text(path, json.dumps(meta, indent=2) + "\n")


def device_free_bytes(device: jax.Device | None = None) -> int | None:
    """Bytes free on `device` (default: JAX's first): its allocator's limit minus what is in use
    on an accelerator, the kernel's MemAvailable for the CPU; None if unknown."""
    device = device or jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
        return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(shapes: Any, members: int, free: int | None) -> None:
    """Refuse, before anything is allocated, a learner state larger than the device's free memory.

    `shapes`: the seed-batched learner state as `jax.ShapeDtypeStruct`s (from `jax.eval_shape`),
    members on the leading axis. Raises ConfigError naming the need per seed and in all, the
    largest buffers, and the flags that shrink them.
    """
    if free is None:
        return
    total = checkpoint.nbytes(shapes)
    if total <= free:
        return
    buffers = []
    for path, node in jax.tree_util.tree_flatten_with_path(shapes, is_leaf=lambda x: isinstance(x, ReplayBuffer))[0]:
        if isinstance(node, ReplayBuffer):
            kind = "synthetic buffer" if "synthetic" in jax.tree_util.keystr(path) else "replay buffer"
            buffers.append((checkpoint.nbytes(node) / members, kind))
    parts = ", ".join(f"{name} {size / 1e9:.2f} GB" for size, name in sorted(buffers, reverse=True))
    raise ConfigError(
        f"the learner state needs {total / members / 1e9:.2f} GB per seed ({parts}), {total / 1e9:.2f} GB for "
        f"{members} seeds, but the device has {free / 1e9:.2f} GB free; lower --buffer-capacity or --seeds "
        "(or, for model-based runs, --synthetic-retain-steps or --rollouts-per-step)."
    )
