"""Command line: `dynalab train`, `dynalab bench`, `dynalab envs`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import tyro

from dynalab.config import ConfigError, TrainConfig

# One flat set of run flags (--algo, --env, --replay-ratio, ...; SAC's as --sac.*).
RunFlags = Annotated[TrainConfig, tyro.conf.arg(name="")]


def train(cfg: RunFlags, out: Path = Path("runs/default"), progress: bool = True) -> None:
    """Train `--seeds` seeds of one algorithm on one task, in one vmapped program.

    Writes config.json, run.json and metrics.csv (columns step,seed,metric,value) into --out.
    """
    from dynalab.train import train as run

    returns = run(cfg, out, progress=progress)
    print(f"final eval return per seed: {[round(float(x), 1) for x in returns.mean(axis=1)]}")
    print(f"run folder: {out}")


BENCH_DEFAULTS = TrainConfig(steps=50, warmup_steps=1_000)


def bench(cfg: RunFlags = BENCH_DEFAULTS, json: Path | None = None) -> None:
    """Measure steady-state seconds per env step (compile time excluded), split by phase.

    --steps learning steps are timed after --warmup-steps random steps fill the buffer and
    the learning step, hooks and evaluation have compiled. The learner call is also timed
    alone on device-resident data, so the loop's overhead over it is visible.
    """
    from dynalab.bench import bench as run_bench
    from dynalab.bench import format_table, write_json

    result = run_bench(cfg)
    print(format_table(result))
    if json is not None:
        write_json(result, json)
        print(f"wrote {json}")


def envs() -> None:
    """List every task id: Gym6 and DMC15 (the papers' suites) first, then all others."""
    from dynalab.envs import DMC15, GYM6, list_envs

    for env_id in list_envs():
        tag = "gym6" if env_id in GYM6 else "dmc15" if env_id in DMC15 else ""
        print(f"{tag:<6} {env_id}")


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    from dynalab.envs import UnknownEnvError

    try:
        tyro.extras.subcommand_cli_from_dict(
            {"train": train, "bench": bench, "envs": envs},
            prog="dynalab",
            description="dynalab: a fast, trustworthy JAX lab for Dyna-style model-based RL.",
            args=argv,
        )
    except (ConfigError, UnknownEnvError) as e:
        print(f"dynalab: error: {e}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:  # e.g. `dynalab envs | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except KeyboardInterrupt:
        print("dynalab: interrupted", file=sys.stderr)
        sys.exit(130)
