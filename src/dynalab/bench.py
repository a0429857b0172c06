"""`dynalab bench`: steady-state seconds per env step, split by phase, compile time excluded."""

from __future__ import annotations

import dataclasses
import json
import platform
import subprocess
import time
from pathlib import Path

import jax
import numpy as np

from dynalab import __version__
from dynalab.config import TrainConfig
from dynalab.train import Trainer
from dynalab.types import Transition, state_bits


def _commit() -> str | None:
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


def bench(cfg: TrainConfig, learner_repeats: int = 20) -> dict:
    """Time `cfg.steps` learning steps after warm-up and compilation; returns a JSON-able record.

    Phases are seconds per env step of the whole program (all seeds together): `env` (stepping
    the simulators), `learner` (acting + the jitted update call), each learner hook amortised
    over its interval, and evaluation amortised over `eval_every`.
    """
    steps = cfg.steps
    # The trainer itself runs warm-up, two compile steps and the measured steps.
    trainer = Trainer(dataclasses.replace(cfg, steps=cfg.warmup_steps + steps + 3))
    try:
        while trainer.env_step < cfg.warmup_steps:
            trainer.step()
        # Compile the learning step, evaluation and hooks before any timing.
        for _ in range(2):
            trainer.step()
        jax.block_until_ready(trainer.state)
        hooks = trainer.batch.learner.hooks
        for h in hooks:
            trainer.state, _, _ = trainer.batch.run_hook(h, trainer.state, trainer.roots, trainer.env_step)
        jax.block_until_ready(trainer.state)
        trainer.evaluate()
        trainer.timer.drain()

        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.step()
        jax.block_until_ready(trainer.state)
        wall = time.perf_counter() - t0
        phases = trainer.timer.drain()
        per_step = {k: phases.get(k, 0.0) / steps for k in ("env", "learner")}

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
        for name, fn in trainer.batch.parts.items():
            jax.block_until_ready(fn(trainer.state, trainer.roots, trainer.env_step))
            t0 = time.perf_counter()
            for i in range(learner_repeats):
                out = fn(trainer.state, trainer.roots, trainer.env_step + i)
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
        state = trainer.state
        state, _, _ = trainer.batch.update(state, t, trainer.roots, trainer.env_step)
        jax.block_until_ready(state)
        t0 = time.perf_counter()
        for i in range(learner_repeats):
            state, _, _ = trainer.batch.update(state, t, trainer.roots, trainer.env_step + i)
            a = trainer.batch.explore(state, res_obs, trainer.roots, trainer.env_step + i)
        jax.block_until_ready((state, a))
        learner_only = (time.perf_counter() - t0) / learner_repeats
        trainer.state = state
    finally:
        trainer.close()

    total = sum(per_step.values())
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
        "replay_ratio": cfg.replay_ratio,
        "batch_size": cfg.batch_size,
        "measured_steps": steps,
        "config": dataclasses.asdict(cfg),
        "seconds_per_env_step": {**per_step, "total": total},
        "seconds_per_seed_step": total / cfg.seeds,
        "learner_parts_seconds_per_env_step": parts,
        "learner_only_seconds_per_env_step": learner_only,
        "loop_overhead_seconds_per_env_step": per_step["learner"] - learner_only,
        "measured_wall_seconds_per_env_step": wall / steps,
        "eval_seconds_per_evaluation": eval_seconds,
    }


def format_table(r: dict) -> str:
    ms = lambda x: f"{1e3 * x:10.2f}"  # noqa: E731
    n = r["seeds"]
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
    lines.append(f"{'learner alone, on device':<28}{ms(r['learner_only_seconds_per_env_step']):>12}"
                 f"{ms(r['learner_only_seconds_per_env_step'] / n):>14}")
    lines.append(f"{'loop overhead over it':<28}{ms(r['loop_overhead_seconds_per_env_step']):>12}"
                 f"{ms(r['loop_overhead_seconds_per_env_step'] / n):>14}")
    return "\n".join(lines)


def write_json(r: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(r, indent=2) + "\n")
