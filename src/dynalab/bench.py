"""`dynalab bench`: steady-state seconds per env step, split by phase, compile time excluded."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from dynalab import __version__, checkpoint
from dynalab.algos import make_learner
from dynalab.algos.base import seed_roots
from dynalab.config import TrainConfig
from dynalab.train import Trainer
from dynalab.types import Transition, state_bits


def _commit() -> str | None:
    # A copy of the working tree without .git (the GPU machine's) passes the commit in DYNALAB_COMMIT.
    if os.environ.get("DYNALAB_COMMIT"):
        return os.environ["DYNALAB_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _device() -> str:
    d = jax.devices()[0]
    return f"{d.platform}:{getattr(d, 'device_kind', '')}".rstrip(":") + (
        f" ({platform.processor() or platform.machine()})" if d.platform == "cpu" else ""
    )


# Buffer capacity a default run's checkpoint is sized for when --buffer-capacity is not given:
# the default is min(1e6, steps), so this is the largest checkpoint a default run writes.
FULL_CAPACITY = 1_000_000


def full_capacity(cfg: TrainConfig) -> int:
    """The replay capacity of a long run of `cfg`: `--buffer-capacity` if given, else the
    algorithm's default once the run is longer than it (1e6; ALM 1e5 off humanoid tasks)."""
    return dataclasses.replace(cfg, steps=max(cfg.steps, FULL_CAPACITY)).capacity


def _full_state(trainer: Trainer, capacity: int) -> Any:
    """Shapes and dtypes of the trainer's learner state at buffer `capacity` (nothing allocated)."""
    learner = make_learner(dataclasses.replace(trainer.cfg, buffer_capacity=capacity), trainer.spec)
    return jax.eval_shape(jax.vmap(learner.init), seed_roots(trainer.seeds))


def _stored_learner_bytes(meta: dict) -> int:
    """Array bytes of `learner.npz` as written: buffer data up to the fill level only."""
    total = 0
    for leaf in meta["learner"]:
        shape = list(leaf["shape"])
        if leaf["fill"] is not None:
            shape[1] = min(shape[1], leaf["fill"])
        total += int(np.prod(shape)) * np.dtype(leaf["dtype"]).itemsize
    return total


def _checkpoint(trainer: Trainer, cfg: TrainConfig) -> dict:
    """Write one real checkpoint of the trainer (as the training loop does) and time it.

    The measured write holds the buffers as far as they are filled in the bench; the full-size
    checkpoint (every buffer full, at the capacity of a long run of this config) is not written:
    its write time is estimated from the measured bytes/second.
    """
    loop = {"episode_returns": np.zeros((0, len(trainer.seeds))), "interval_step": np.asarray(0)}
    with tempfile.TemporaryDirectory(prefix="dynalab-bench-") as tmp:
        metrics = Path(tmp) / "metrics.csv"
        metrics.write_text("step,seed,metric,value\n")
        jax.block_until_ready(trainer.state)
        t0 = time.perf_counter()
        path = trainer.write_checkpoint(Path(tmp) / "checkpoints", metrics, loop)
        seconds = time.perf_counter() - t0
        written = sum(f.stat().st_size for f in path.iterdir())
        saved = checkpoint.read_meta(path)
    capacity = full_capacity(cfg)
    fullest = max(saved["learner"], key=lambda leaf: leaf["fill"] or 0, default=None)
    full_learner = checkpoint.nbytes(_full_state(trainer, capacity))
    # The full-size checkpoint: this one with every buffer filled (metrics.csv, which grows
    # by a few hundred kB per seed over a long run, is left at its size here).
    full = written - _stored_learner_bytes(saved) + full_learner
    rate = written / seconds
    full_seconds = full / rate
    every = cfg.checkpoint_every
    return {
        "write_seconds": seconds,
        "bytes_written": written,
        # The fullest buffer's rows and its allocated rows (leaves are (members, capacity, ...)).
        "buffer_fill": fullest["fill"] or 0 if fullest else 0,
        "bench_capacity": fullest["shape"][1] if fullest else trainer.cfg.capacity,
        "bench_state_full_bytes": checkpoint.nbytes(trainer.state),
        "full_capacity": capacity,
        "full_learner_bytes": full_learner,
        "full_bytes": full,
        "write_bytes_per_second": rate,
        "full_write_seconds_estimate": full_seconds,
        "every": every,
        "amortised_seconds_per_env_step_estimate": full_seconds / every if every else None,
        "folder": tempfile.gettempdir(),
    }


def _perfect_model_seconds(trainer: Trainer, cfg: TrainConfig, repeats: int = 3) -> float:
    """Seconds of the perfect model's host callback alone for one env step of every member: one
    `rollouts_per_step` x members batch of restored states (the members' current real states,
    repeated) stepped once per rollout step (at the longest horizon, `cfg.max_horizon`), on
    `cfg.env_workers` threads. Part of `learner` above, not added to the total."""
    from dynalab.models.perfect import Simulator  # only --perfect-model runs build simulators here

    sim = Simulator(trainer.spec, cfg.env_workers)
    try:
        states = trainer.envs.get_states()
        rows = np.resize(states, (cfg.rollouts_per_step * len(states), states.shape[1]))
        bits = state_bits(rows)
        actions = np.random.default_rng(0).uniform(-1, 1, (len(rows), trainer.spec.action_dim))
        sim.host_step(bits[:1], actions[:1])  # builds the per-worker simulators, untimed
        t0 = time.perf_counter()
        for _ in range(repeats):
            sim.host_step(bits, actions)
        return (time.perf_counter() - t0) / repeats * cfg.max_horizon
    finally:
        sim.close()


def bench(cfg: TrainConfig, learner_repeats: int = 20) -> dict:
    """Time `cfg.steps` learning steps after warm-up and compilation; returns a JSON-able record.

    Phases are seconds per env step of the whole program (all seeds together): `env` (stepping
    the simulators), `learner` (acting + the jitted update call), each learner hook amortised
    over its interval, and evaluation amortised over `eval_every`. After the timed steps one
    real checkpoint is written to a temporary folder and timed (`checkpoint`), and the cost of
    a full-size checkpoint every `checkpoint_every` steps is estimated from it.
    """
    steps = cfg.steps
    # The trainer itself runs warm-up, two compile steps and the measured steps.
    trainer = Trainer(dataclasses.replace(cfg, steps=cfg.warmup_steps + steps + 3))
    try:
        while trainer.env_step < cfg.warmup_steps:
            trainer.step()
        # Compile the learning step, evaluation and hooks before any timing.
        t0 = time.perf_counter()
        for _ in range(2):
            trainer.step()
        jax.block_until_ready(trainer.state)
        hooks = trainer.batch.learner.hooks
        for h in hooks:
            trainer.state, _, _ = trainer.batch.run_hook(h, trainer.state, trainer.roots, trainer.env_step)
        jax.block_until_ready(trainer.state)
        trainer.evaluate()
        # First calls: compilation (or a compile-cache load) plus one execution of each program.
        compile_seconds = time.perf_counter() - t0
        trainer.timer.drain()

        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.step()
        jax.block_until_ready(trainer.state)
        wall = time.perf_counter() - t0
        phases = trainer.timer.drain()
        per_step = {k: phases.get(k, 0.0) / steps for k in ("env", "learner")}
        ckpt = _checkpoint(trainer, cfg)

        for h in hooks:
            t0 = time.perf_counter()
            trainer.state, _, _ = trainer.batch.run_hook(h, trainer.state, trainer.roots, trainer.env_step)
            jax.block_until_ready(trainer.state)
            per_step[h.name] = (time.perf_counter() - t0) / h.every

        t0 = time.perf_counter()
        trainer.evaluate()
        eval_seconds = time.perf_counter() - t0
        per_step["eval"] = eval_seconds / cfg.eval_every

        # Pieces of the learner call (model rollouts), each alone: part of `learner` above.
        parts = {}
        for name in trainer.batch.parts:
            jax.block_until_ready(trainer.batch.part(name, trainer.state, trainer.roots, trainer.env_step))
            t0 = time.perf_counter()
            for i in range(learner_repeats):
                out = trainer.batch.part(name, trainer.state, trainer.roots, trainer.env_step + i)
            jax.block_until_ready(out)
            parts[name] = (time.perf_counter() - t0) / learner_repeats

        # The learner call alone, on data already on the device: the floor the loop can reach.
        res_obs = jax.device_put(trainer.obs)
        action = trainer.batch.explore(trainer.state, res_obs, trainer.roots, trainer.env_step)
        t = jax.device_put(
            Transition(
                obs=res_obs,
                action=action,
                reward=np.zeros(len(trainer.seeds), np.float32),
                next_obs=res_obs,
                discount=np.ones(len(trainer.seeds), np.float32),
                sim_state=state_bits(trainer.envs.get_states()) if trainer.batch.learner.needs_sim_state else None,
            )
        )
        valid = np.ones(len(trainer.seeds), bool)  # every member's transition is stored
        state = trainer.state
        state, _, _ = trainer.batch.update(state, t, valid, trainer.roots, trainer.env_step)
        jax.block_until_ready(state)
        t0 = time.perf_counter()
        for i in range(learner_repeats):
            state, _, _ = trainer.batch.update(state, t, valid, trainer.roots, trainer.env_step + i)
            a = trainer.batch.explore(state, res_obs, trainer.roots, trainer.env_step + i)
        jax.block_until_ready((state, a))
        learner_only = (time.perf_counter() - t0) / learner_repeats
        trainer.state = state
        env_workers = trainer.envs.workers
        perfect = _perfect_model_seconds(trainer, cfg) if cfg.perfect_model else None
    finally:
        trainer.close()

    total = sum(per_step.values())
    amortised = ckpt["amortised_seconds_per_env_step_estimate"]
    ckpt["fraction_of_total_estimate"] = amortised / total if amortised is not None else None
    return {
        "command": "dynalab bench",
        "dynalab": __version__,
        "commit": _commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": _device(),
        "jax": jax.__version__,
        "algo": cfg.algo,
        "env": cfg.env,
        "seeds": cfg.seeds,
        "members": len(cfg.members()),  # seeds x swept values: the runs in the program
        "replay_ratio": cfg.replay_ratio,
        "batch_size": cfg.batch_size,
        "measured_steps": steps,
        "config": dataclasses.asdict(cfg),
        "seconds_per_env_step": {**per_step, "total": total},
        "seconds_per_seed_step": total / len(cfg.members()),
        "env_workers": env_workers,  # threads stepping the training envs (--env-workers; 0 = all cores)
        "env_seconds_per_seed_step": per_step["env"] / len(cfg.members()),
        # The perfect model's host callback alone (part of `learner`), None without --perfect-model.
        "perfect_model_callback_seconds_per_env_step": perfect,
        "learner_parts_seconds_per_env_step": parts,
        "learner_only_seconds_per_env_step": learner_only,
        "loop_overhead_seconds_per_env_step": per_step["learner"] - learner_only,
        "measured_wall_seconds_per_env_step": wall / steps,
        "eval_seconds_per_evaluation": eval_seconds,
        "checkpoint": ckpt,
        "compile_seconds": compile_seconds,
        "peak_device_bytes": _peak_device_bytes(),
    }


def _peak_device_bytes() -> int | None:
    """Peak bytes allocated on the first device so far in this process (None where the backend does
    not report it, e.g. on CPU)."""
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def format_table(r: dict) -> str:
    ms = lambda x: f"{1e3 * x:10.2f}"  # noqa: E731
    n = r.get("members", r["seeds"])
    lines = [
        f"dynalab bench: {r['algo']} on {r['env']}, {n} seed(s), replay ratio {r['replay_ratio']}, "
        f"{r['measured_steps']} steps, device {r['device']}",
        f"{'phase':<28}{'ms/env step':>12}{'ms/seed-step':>14}",
    ]
    for k, v in r["seconds_per_env_step"].items():
        label = {"env": "env", "learner": "learner (act + update)", "eval": "evaluation (amortised)"}.get(
            k, f"{k} (amortised)"
        )
        if k == "total":
            lines.append("-" * 54)
            label = "total"
        lines.append(f"{label:<28}{ms(v):>12}{ms(v / n):>14}")
        if k == "learner":
            for part, pv in r["learner_parts_seconds_per_env_step"].items():
                lines.append(f"{'  of which ' + part:<28}{ms(pv):>12}{ms(pv / n):>14}")
    if "env_workers" in r:
        lines.append(f"{'env, per seed-step':<28}{'':>12}{ms(r['env_seconds_per_seed_step']):>14}"
                     f"  on {r['env_workers']} worker thread(s)")
    if r.get("perfect_model_callback_seconds_per_env_step") is not None:
        pm = r["perfect_model_callback_seconds_per_env_step"]
        lines.append(f"{'  perfect model callback':<28}{ms(pm):>12}{ms(pm / n):>14}  (alone; part of learner)")
    lines.append(f"{'learner alone, on device':<28}{ms(r['learner_only_seconds_per_env_step']):>12}"
                 f"{ms(r['learner_only_seconds_per_env_step'] / n):>14}")
    lines.append(f"{'loop overhead over it':<28}{ms(r['loop_overhead_seconds_per_env_step']):>12}"
                 f"{ms(r['loop_overhead_seconds_per_env_step'] / n):>14}")
    lines += _checkpoint_lines(r["checkpoint"], n, ms)
    return "\n".join(lines)


def _checkpoint_lines(c: dict, n: int, ms) -> list[str]:
    mb = lambda b: f"{b / 1e6:.1f} MB"  # noqa: E731
    lines = [
        "-" * 54,
        f"{'checkpoint, measured':<28}{mb(c['bytes_written'])} in {c['write_seconds']:.3f} s "
        f"({c['write_bytes_per_second'] / 1e6:.0f} MB/s; buffers filled to {c['buffer_fill']:,} "
        f"of {c['bench_capacity']:,})",
        f"{'checkpoint, full buffers':<28}{c['full_bytes'] / 1e9:.2f} GB at buffer capacity "
        f"{c['full_capacity']:,} (learner {c['full_learner_bytes'] / 1e9:.2f} GB)",
        f"{'  write time, estimate':<28}{c['full_write_seconds_estimate']:.2f} s at the measured MB/s",
    ]
    amortised = c["amortised_seconds_per_env_step_estimate"]
    if amortised is None:
        lines.append(f"{'checkpoint (amortised)':<28}{'off':>12}{'off':>14}  (--checkpoint-every 0)")
    else:
        lines.append(f"{'checkpoint (amort., est.)':<28}{ms(amortised):>12}{ms(amortised / n):>14}"
                     f"  = {100 * c['fraction_of_total_estimate']:.2f}% of total; every {c['every']:,} steps")
    return lines


def write_json(r: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(r, indent=2) + "\n")
