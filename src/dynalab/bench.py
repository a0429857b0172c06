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


def _buffer_counts(state: Any) -> list[np.ndarray]:
    """Each buffer's write count per member (flattening order): (members,) int64 each."""
    return [np.asarray(b.count).astype(np.int64) for b in jax.tree.leaves(state, is_leaf=checkpoint._is_buffer)
            if checkpoint._is_buffer(b)]


def _advance_buffers(state: Any, rows: list[int], full: bool) -> Any:
    """`state` with every buffer marked as holding `rows[b]` more rows (positions and counts moved
    on; the rows' contents are whatever the arrays hold). With `full`, each buffer first becomes full
    with its write position at 0, as after exactly one pass over the ring."""
    it = iter(rows)

    def move(buf):
        if not checkpoint._is_buffer(buf):
            return buf
        cap = jax.tree.leaves(buf.data)[0].shape[1]
        if full:
            buf = buf.replace(position=jax.numpy.zeros_like(buf.position), size=jax.numpy.full_like(buf.size, cap),
                              count=jax.numpy.full_like(buf.count, cap))
        k = next(it)
        return buf.replace(position=(buf.position + k) % cap, size=jax.numpy.minimum(buf.size + k, cap),
                           count=buf.count + np.uint32(k % 2**32))

    return jax.tree.map(move, state, is_leaf=checkpoint._is_buffer)


def _timed_write(trainer: Trainer, folder: Path, metrics: Path, loop: dict) -> tuple[float, int]:
    jax.block_until_ready(trainer.state)
    t0 = time.perf_counter()
    path = trainer.write_checkpoint(folder, metrics, loop)
    checkpoint.prune(folder, trainer.cfg.keep_checkpoints)  # as the loop does; part of the cost
    seconds = time.perf_counter() - t0
    return seconds, checkpoint.written_bytes(path)


def _timed_background_write(trainer: Trainer, folder: Path, metrics: Path, loop: dict) -> tuple[float, float, int]:
    """(seconds the loop waits, seconds until the files are in place, bytes) of one checkpoint
    written as the training loop writes it between its first and last step: by a
    `checkpoint.Writer` on a background thread, which prunes when done."""
    jax.block_until_ready(trainer.state)
    writer = checkpoint.Writer()
    t0 = time.perf_counter()
    trainer.write_checkpoint(folder, metrics, loop, writer=writer,
                             after=lambda: checkpoint.prune(folder, trainer.cfg.keep_checkpoints))
    wait = time.perf_counter() - t0
    path = writer.wait()
    return wait, time.perf_counter() - t0, checkpoint.written_bytes(path)


def _checkpoint(trainer: Trainer, cfg: TrainConfig, rows_per_step: list[float]) -> dict:
    """Time real checkpoint writes as the training loop makes them (write + prune).

    1. The bench's own state (buffers filled as far as the bench got), written into an empty folder.
    2. At full buffers: the trainer's state at the replay capacity of a long run of this config
       (`full_capacity`) with every buffer full is written once (every block: what the first
       checkpoint after a resume from an old-format checkpoint costs), then moved on by the rows one
       `checkpoint_every` interval adds (`rows_per_step`, measured in the bench, per buffer) and
       written again (synchronously: the cost of the write itself), then moved on by another
       interval and written as the loop writes it, in the background, twice: what the loop waits
       for the second time (the host copies of the interval's blocks; the first copy also pays
       for faulting in fresh host memory) is the steady-state cost it pays every interval,
       amortised per env step. The rows' contents are zeros, which costs as much to write as real
       rows (nothing is compressed).
    """
    loop = {"episode_returns": np.zeros((0, len(trainer.seeds))), "interval_step": np.asarray(0)}
    capacity = full_capacity(cfg)
    every = cfg.checkpoint_every
    out: dict[str, Any] = {"every": every, "full_capacity": capacity, "rows_per_env_step": rows_per_step,
                           "folder": tempfile.gettempdir()}
    bench_state = trainer.state
    with tempfile.TemporaryDirectory(prefix="dynalab-bench-") as tmp:
        metrics = Path(tmp) / "metrics.csv"
        metrics.write_text("step,seed,metric,value\n")
        out["bench_write_seconds"], out["bench_bytes"] = _timed_write(trainer, Path(tmp) / "bench", metrics, loop)
        if every:
            learner = make_learner(dataclasses.replace(trainer.cfg, buffer_capacity=capacity), trainer.spec)
            template = jax.vmap(learner.init)(seed_roots(trainer.seeds))
            # The bench's non-buffer leaves (trained networks) in a state with full-size buffers.
            full = jax.tree.map(lambda big, small: big if checkpoint._is_buffer(big) else small, template,
                                bench_state, is_leaf=checkpoint._is_buffer)
            del template
            folder = Path(tmp) / "full"
            trainer.state = _advance_buffers(full, [0] * len(rows_per_step), full=True)
            out["full_first_write_seconds"], out["full_first_bytes"] = _timed_write(trainer, folder, metrics, loop)
            rows = [int(np.ceil(r * every)) for r in rows_per_step]
            trainer.state = _advance_buffers(trainer.state, rows, full=False)
            seconds, written = _timed_write(trainer, folder, metrics, loop)
            waits = []
            for _ in range(2):  # the first copy into fresh host memory pays its page faults
                trainer.state = _advance_buffers(trainer.state, rows, full=False)
                wait, total, background_bytes = _timed_background_write(trainer, folder, metrics, loop)
                waits.append(wait)
            out.update(interval_rows=rows, interval_write_seconds=seconds, interval_bytes=written,
                       interval_background_first_wait_seconds=waits[0], interval_background_wait_seconds=wait,
                       interval_background_seconds=total, interval_background_bytes=background_bytes,
                       amortised_seconds_per_env_step=wait / every)
            trainer.state = full = None
    trainer.state = bench_state
    out["full_learner_bytes"] = checkpoint.nbytes(_full_state(trainer, capacity))
    return out


def _perfect_model_seconds(trainer: Trainer, cfg: TrainConfig, repeats: int = 3) -> float:
    """Seconds of the perfect model's host callback alone for one env step of every member: one
    `rollouts_per_step` x members batch of restored states (the members' current real states,
    repeated) stepped once per rollout step (at the longest horizon, `cfg.max_horizon`), on
    `cfg.env_workers` workers of kind `cfg.env_parallel`. Part of `learner` above, not added to the total."""
    from dynalab.models.perfect import Simulator  # only --perfect-model runs build simulators here

    sim = Simulator(trainer.spec, cfg.env_workers, cfg.env_parallel, cfg.imports)
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
    over its interval, and evaluation amortised over `eval_every`. After the timed steps real
    checkpoints are written to a temporary folder and timed (`checkpoint`; see `_checkpoint`),
    among them the one the loop writes every `checkpoint_every` steps once the buffers are full.
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

        counts = _buffer_counts(trainer.state)
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.step()
        jax.block_until_ready(trainer.state)
        wall = time.perf_counter() - t0
        phases = trainer.timer.drain()
        per_step = {k: phases.get(k, 0.0) / steps for k in ("env", "learner")}
        # Rows each buffer gains per env step (the most over members), to size a checkpoint interval.
        rows_per_step = [float(np.max((after - before) % 2**32)) / steps
                         for before, after in zip(counts, _buffer_counts(trainer.state))]
        ckpt = _checkpoint(trainer, cfg, rows_per_step)

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
        env_workers, env_parallel = trainer.envs.workers, trainer.envs.parallel
        perfect = _perfect_model_seconds(trainer, cfg) if cfg.perfect_model else None
        # The callback's rows (rollouts x members) are split over this many workers of kind env_parallel.
        from dynalab.envs.workers import resolve_workers

        perfect_workers = resolve_workers(cfg.env_workers, cfg.rollouts_per_step * len(cfg.members()))
    finally:
        trainer.close()

    total = sum(per_step.values())
    amortised = ckpt.get("amortised_seconds_per_env_step")
    ckpt["fraction_of_total"] = amortised / total if amortised is not None else None
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
        "env_workers": env_workers,  # workers stepping the training envs (--env-workers; 0 = all cores)
        "env_parallel": env_parallel,  # what they are: processes, threads, or sequential (one worker)
        "env_seconds_per_seed_step": per_step["env"] / len(cfg.members()),
        # The perfect model's host callback alone (part of `learner`), None without --perfect-model.
        "perfect_model_callback_seconds_per_env_step": perfect,
        "perfect_model_workers": perfect_workers if cfg.perfect_model else None,
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
                     f"  on {r['env_workers']} worker(s): {r.get('env_parallel', 'threads')}")
    if r.get("perfect_model_callback_seconds_per_env_step") is not None:
        pm = r["perfect_model_callback_seconds_per_env_step"]
        lines.append(f"{'  perfect model callback':<28}{ms(pm):>12}{ms(pm / n):>14}  (alone; part of learner; "
                     f"{r.get('perfect_model_workers')} worker(s))")
    lines.append(f"{'learner alone, on device':<28}{ms(r['learner_only_seconds_per_env_step']):>12}"
                 f"{ms(r['learner_only_seconds_per_env_step'] / n):>14}")
    lines.append(f"{'loop overhead over it':<28}{ms(r['loop_overhead_seconds_per_env_step']):>12}"
                 f"{ms(r['loop_overhead_seconds_per_env_step'] / n):>14}")
    lines += _checkpoint_lines(r["checkpoint"], n, ms)
    return "\n".join(lines)


def _checkpoint_lines(c: dict, n: int, ms) -> list[str]:
    mb = lambda b: f"{b / 1e6:.1f} MB"  # noqa: E731
    lines = ["-" * 54,
             f"{'checkpoint of this bench':<28}{mb(c['bench_bytes'])} in {c['bench_write_seconds']:.3f} s (write + prune)"]
    if c.get("amortised_seconds_per_env_step") is None:
        lines.append(f"{'checkpoint (amortised)':<28}{'off':>12}{'off':>14}  (--checkpoint-every 0)")
        return lines
    lines += [
        f"{'  full buffers, first':<28}{mb(c['full_first_bytes'])} in {c['full_first_write_seconds']:.2f} s "
        f"(capacity {c['full_capacity']:,}, every block)",
        f"{'  full buffers, interval':<28}{mb(c['interval_bytes'])} in {c['interval_write_seconds']:.2f} s "
        f"(rows of {c['every']:,} env steps: {', '.join(f'{r:,}' for r in c['interval_rows'])})",
        f"{'  the same, in background':<28}the loop waits {c['interval_background_wait_seconds']:.3f} s "
        f"(host copies; {c['interval_background_first_wait_seconds']:.3f} s the first time); "
        f"written in {c['interval_background_seconds']:.2f} s",
        f"{'checkpoint (amortised)':<28}{ms(c['amortised_seconds_per_env_step']):>12}"
        f"{ms(c['amortised_seconds_per_env_step'] / n):>14}  = {100 * c['fraction_of_total']:.2f}% of total; "
        f"every {c['every']:,} steps, full buffers",
    ]
    return lines


def write_json(r: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(r, indent=2) + "\n")
