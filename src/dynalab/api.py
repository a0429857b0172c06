"""The Python API, for notebooks and scripts: everything `dynalab train|resume|sweep|report` does,
as functions that take and return Python objects.

    from dynalab import make_config, run_training, load_metrics, make_report
    cfg = make_config("sac", env="gym:InvertedPendulum-v5", seeds=2, steps=3_000, sac={"hidden": (64, 64)})
    run_training(cfg, "runs/pendulum")          # returns the final evaluation returns
    df = load_metrics("runs/pendulum")          # tidy DataFrame: one row per (run, seed, step, metric)
    make_report(["runs/pendulum"], "report")    # the report's figures, summary.md and index.html

(The names are not `train`, `config` or `report`: `dynalab.train` and `dynalab.config` are modules.)

Each function is the same code path as the command line (same validation, same run folder, same
resume rules); errors are `dynalab.ConfigError` with the command line's one-sentence messages.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from dynalab import config as config_lib
from dynalab.config import ConfigError, TrainConfig

if TYPE_CHECKING:
    import pandas as pd

    from dynalab.experiments import Experiment

__all__ = ["make_config", "run_training", "resume_training", "load_config", "load_metrics", "make_report",
           "load_experiment", "run_experiment", "run_model_study"]


def make_config(algo: str = "sac", **changes: Any) -> TrainConfig:
    """The config `dynalab train --algo ALGO` would run with, changed by keyword.

    Top-level fields are keywords (`env=`, `seeds=`, `steps=`, `replay_ratio=`, ...); a nested group
    takes a dict of its fields (`sac={"hidden": (64, 64)}`, `model={"target_norm": False}`,
    `alm={"horizon": 5}`), changing only those. The names are the command line's flags with `_` for
    `-` (`--sac.critic-layernorm` is `sac={"critic_layernorm": True}`).

    Raises ConfigError (one sentence naming the valid choices) for an unknown algorithm or field
    name, or for values `dynalab train` would refuse.
    """
    from dynalab.algos import ALGOS, default_config

    if algo not in ALGOS:
        raise ConfigError(f"unknown algorithm {algo!r}; choose one of: {', '.join(ALGOS)}.")
    cfg = default_config(algo)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    top: dict[str, Any] = {}
    for name, value in changes.items():
        if name not in fields or name == "algo":
            valid = ", ".join(sorted(fields - {"algo"}))
            raise ConfigError(f"make_config() got an unknown field {name!r}; valid fields are: {valid}.")
        group = getattr(cfg, name)
        if dataclasses.is_dataclass(group) and isinstance(value, dict):
            inner = {f.name for f in dataclasses.fields(group)}
            unknown = sorted(set(value) - inner)
            if unknown:
                raise ConfigError(f"make_config() got unknown {name} field(s) {', '.join(map(repr, unknown))}; "
                                  f"valid {name} fields are: {', '.join(sorted(inner))}.")
            value = dataclasses.replace(group, **value)
        top[name] = value
    cfg = dataclasses.replace(cfg, **top)
    # A round trip through the JSON form turns lists into the tuples the config holds, as loading
    # config.json does.
    cfg = config_lib.from_dict(config_lib.to_dict(cfg))
    config_lib.validate(cfg, list(ALGOS))
    return cfg


def run_training(cfg: TrainConfig, out: str | Path, progress: bool = True, allow_config_change: bool = False) -> np.ndarray:
    """Train (or resume, if `out` holds a checkpoint of the same config) as `dynalab train` does.

    Returns the final evaluation returns, shape (members, eval_episodes): one row per seed (per seed
    and swept value for a vmapped sweep), one column per evaluation episode. Writes config.json,
    run.json, metrics.csv and checkpoints/ into `out` (README, "Outputs").

    Raises ConfigError for a bad config or a folder holding a different or finished run.
    """
    from dynalab.train import train as _train

    return _train(cfg, Path(out), progress=progress, allow_config_change=allow_config_change)


def resume_training(run_dir: str | Path, progress: bool = True) -> np.ndarray:
    """Continue the run in `run_dir` from its newest checkpoint with its saved config (`dynalab resume`).

    Returns the final evaluation returns as `run_training` does. Raises ConfigError if `run_dir` is not a
    run folder or holds a finished run.
    """
    run_dir = Path(run_dir)
    return run_training(load_config(run_dir), run_dir, progress=progress)


def load_config(run_dir: str | Path) -> TrainConfig:
    """The config a run folder was trained with (its config.json). Raises ConfigError if it has none."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir} holds no config.json, so it is not a dynalab run folder; pass the folder a "
                          "run was trained into.")
    return config_lib.load(path)


def load_metrics(*run_dirs: str | Path, metrics: Iterable[str] | None = None) -> pd.DataFrame:
    """Every run folder under `run_dirs` (runs or sweep folders) as one tidy DataFrame.

    One row per (run, seed, step, metric), columns: run, env, suite, task, algo, variant,
    base_variant, ratio_group, synthetic_ratio, seed, step, metric, value. `variant` is the name the
    report gives the run's settings (e.g. "MBPO", "SAC (replay ratio 1)"); a vmapped sweep's run
    folder gives one run per swept value. Steps are env steps per seed. `metrics` keeps only those
    metric names (e.g. ["eval/return"]). A wide table is one pivot away:
    `df.pivot_table(index=["run", "seed", "step"], columns="metric", values="value")`.

    Raises ConfigError (a ReportError) if no run folder with metrics is found.
    """
    import pandas as pd

    from dynalab.analysis.runs import load_runs

    frame = load_runs([Path(d) for d in run_dirs], metrics=metrics).metrics
    for col in frame.columns:  # plain strings are friendlier to filter and plot than categoricals
        if isinstance(frame[col].dtype, pd.CategoricalDtype):
            frame[col] = frame[col].astype(str)
    return frame


def make_report(run_dirs: Iterable[str | Path], out: str | Path = "report", reps: int = 2000) -> list[Path]:
    """The report of `dynalab report`: figures (PNG and PDF), summary.md and index.html in `out`.

    IQM over seeds with 95% stratified-bootstrap CIs (rliable, `reps` resamples); the definitions are
    in summary.md. Returns the files written. Raises ConfigError (a ReportError) for unusable inputs.
    """
    from dynalab.analysis.report import make_report

    return make_report([Path(d) for d in run_dirs], Path(out), reps=reps)


def load_experiment(name: str, scale: float = 1.0, **overrides: Any) -> Experiment:
    """One of the papers' experiments (`dynalab experiments` lists them), or a path to your own TOML.

    Its `.trials` are (name, cfg) pairs, one per task x variant. `scale` multiplies every env-step
    count (for a smoke run); `overrides` set config fields of every trial as `dynalab sweep --set`
    does, nested groups as dicts as in `make_config` (`seeds=2, sac={"hidden": [64, 64]}`). Raises ConfigError.
    """
    from dynalab import experiments

    return experiments.load(name, scale=scale, overrides=dict(overrides) or None)


def run_experiment(exp: Experiment, out: str | Path, ray_address: str | None = None, retries: int = 1,
                   progress: bool = True) -> dict[str, str]:
    """Run every trial of `exp` into `out/<trial>/` as `dynalab sweep` does (skip finished trials,
    resume interrupted ones, retry failed ones; on Ray with `ray_address`). Returns trial name ->
    "finished-before", "done" or "failed"."""
    from dynalab.sweep import run_sweep

    return run_sweep(list(exp.trials), Path(out), ray_address=ray_address, retries=retries, progress=progress)


def run_model_study(out: str | Path = "studies/model", runs: Iterable[str | Path] = (), envs: Iterable[str] = (),
                policy: str | Path | None = None, variants: Iterable[str] = ("mbpo", "target-norm", "direct", "ftfl"),
                overrides: Iterable[str] = (), refit_steps: int | None = None, early_stopping: bool = False,
                model_seeds: int = 3, **options: Any) -> list[Path]:
    """`dynalab model-study`: fit model variants offline on fixed data and write the study's report into `out`.

    (`from dynalab.api import run_model_study`; the name differs from the module `dynalab.model_study`, which
    holds the pieces: datasets, variants, `run_study` returning the fitted models and every number.)

    Data: exactly one of `runs` (run folders, checkpoint folders or sweep folders: each run's replay buffer),
    `envs` (tasks, uniform-random actions) or `policy` (a run or checkpoint whose policy collects). `variants`
    are specs such as "mbpo", "ftfl", "target-norm", "direct", "ftfl-tuned", "run", "mbpo+width=400";
    `overrides` change every variant ("model.width=400"). `options`: transitions, heldout_transitions,
    heldout_fraction, policy_mode, checkpoint, run_seed, eval_transitions, seed, reps (as the command's flags).
    Returns the files written (figures, study.json, summary.md, index.html). Raises ConfigError.
    """
    from dynalab.model_study import Budget
    from dynalab.model_study import model_study as _study

    return _study(Path(out), runs=[Path(r) for r in runs], envs=list(envs), policy=Path(policy) if policy else None,
                  variants=list(variants), overrides=list(overrides),
                  budget=Budget(refit_steps, True if early_stopping else None, model_seeds), **options)
