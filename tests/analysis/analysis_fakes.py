"""Synthetic run folders (config.json + metrics.csv written directly) for fast report tests."""

import csv
import dataclasses
import json
import zlib
from pathlib import Path

import numpy as np

from dynalab import config as config_lib
from dynalab.algos import default_config
from dynalab.config import TrainConfig

GYM = ["gym:Hopper-v5", "gym:Walker2d-v5"]
DMC = ["dmc:hopper-stand", "dmc:humanoid-stand"]
SCALE = {"gym:Hopper-v5": 3000.0, "gym:Walker2d-v5": 4000.0, "dmc:hopper-stand": 800.0, "dmc:humanoid-stand": 600.0}
# Final-return multipliers relative to SAC, loosely after the papers: MBPO helps in Gym, fails in DMC.
GAIN = {"mbpo": {"gym": 1.2, "dmc": 0.05}, "ftfl": {"gym": 1.15, "dmc": 1.3}}
SPS = {"sac": 8.0, "mbpo": 3.0, "ftfl": 2.8}


def write_run(folder: Path, cfg: TrainConfig, rows: list[tuple[int, int, str, float]], meta_dirs=True) -> Path:
    """A run folder as `dynalab train` leaves it (plus checkpoints/ and nonfinite/ that are not runs)."""
    folder.mkdir(parents=True, exist_ok=True)
    config_lib.save(cfg, folder / "config.json")
    with (folder / "metrics.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "seed", "metric", "value"])
        w.writerows((s, k, m, repr(float(v))) for s, k, m, v in rows)
    if meta_dirs:
        for sub in ("checkpoints/step_000000001000", "nonfinite/step_000000000500"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            (folder / sub / "meta.json").write_text(json.dumps({"step": 1000}))
            # A stray config-like file inside a checkpoint must not make it a run.
            (folder / sub / "config.json").write_text("{}")
    return folder


# Model error, in % (gym, dmc): on the residual target s'-s, and on s' (the same quantity for every model).
PCT_ERROR_DELTA = {"gym": 15.0, "dmc": 120.0}
PCT_ERROR_NEXT = {"gym": 2.0, "dmc": 6.0}


def fake_rows(cfg: TrainConfig, upto: int | None = None, unmeasured: str = "absent") -> list:
    """Plausible metrics for every seed of `cfg` up to `upto` steps (default: the whole run).

    The model and synthetic-batch diagnostics of a model-based run exist only after warm-up (the
    synthetic buffer is empty before); at or before `cfg.warmup_steps` they are left out
    (`unmeasured="absent"`, as `dynalab train` does) or written as NaN (`unmeasured="nan"`).
    Residual-target models log `model/pct_error` on s'-s (PCT_ERROR_DELTA); direct ones (FTFL)
    on s', where it equals `model/pct_error_next_state` (PCT_ERROR_NEXT).
    """
    suite = cfg.env.split(":")[0]
    gain = 1.0 if cfg.algo == "sac" else GAIN[cfg.algo][suite] * (1 - 0.8 * max(0.0, cfg.synthetic_ratio - 0.5)
                                                                   if suite == "dmc" and cfg.algo == "mbpo" else 1)
    rows = []
    last = upto or cfg.steps
    for k in cfg.seed_list():
        key = [k, zlib.crc32(cfg.env.encode()), zlib.crc32(cfg.algo.encode()), int(100 * cfg.synthetic_ratio)]
        rng = np.random.default_rng(key)
        for step in range(cfg.log_every, last + 1, cfg.log_every):
            frac = step / cfg.steps
            if step % cfg.eval_every == 0 or step == cfg.steps:
                ret = SCALE[cfg.env] * gain * (1 - np.exp(-4 * frac)) * rng.lognormal(0, 0.12)
                rows.append((step, k, "eval/return", ret))
            rows.append((step, k, "time/env_steps_per_sec", SPS[cfg.algo] * rng.lognormal(0, 0.05)))
            rows.append((step, k, "q/mean_real", 50 * gain * frac + rng.normal(0, 2)))
            rows.append((step, k, "loss/critic", rng.lognormal(0, 0.3)))
            if cfg.algo != "sac":
                rows.append((step, k, "reward/mean_real", 2 * frac + rng.normal(0, 0.05)))
                if step <= cfg.warmup_steps and unmeasured == "absent":
                    continue
                measured = step > cfg.warmup_steps
                nan_unless = lambda x: x if measured else float("nan")  # noqa: E731
                nxt = PCT_ERROR_NEXT[suite] * (1 + rng.normal(0, 0.05))
                delta = nxt if cfg.model.direct_next_state else PCT_ERROR_DELTA[suite] * (1 + rng.normal(0, 0.05))
                rows.append((step, k, "model/pct_error", nan_unless(delta)))
                rows.append((step, k, "model/pct_error_next_state", nan_unless(nxt)))
                rows.append((step, k, "q/mean_synthetic", nan_unless(50 * gain * frac * 0.6 + rng.normal(0, 2))))
                rows.append((step, k, "reward/mean_synthetic", nan_unless(1.5 * frac + rng.normal(0, 0.05))))
                var = (1e-3 if cfg.algo == "ftfl" else 1.0) * (10 if suite == "dmc" else 1) * np.exp(-3 * frac)
                rows.append((step, k, "model/var_state", nan_unless(var * rng.lognormal(0, 0.1))))
    return rows


def build_fake_sweep(root: Path) -> Path:
    """4 tasks (2 Gym, 2 DMC) x SAC, MBPO, FTFL (DMC only); an S sweep on dmc:hopper-stand;
    FTFL on humanoid-stand split over two run folders, one of them unfinished."""
    base = dict(seeds=3, steps=20_000, eval_every=2_000, log_every=1_000, warmup_steps=1_000)
    for env in GYM + DMC:
        task = env.split(":")[1]
        for algo in ("sac", "mbpo"):
            cfg = TrainConfig(algo=algo, env=env, **base)
            write_run(root / env.split(":")[0] / f"{algo}-{task}", cfg, fake_rows(cfg))
    for s in (0.25, 0.5):
        cfg = TrainConfig(algo="mbpo", env="dmc:hopper-stand", synthetic_ratio=s, **base)
        write_run(root / "dmc" / "ratio" / f"mbpo-s{s}", cfg, fake_rows(cfg))
    cfg = default_config("ftfl", env="dmc:hopper-stand", **base)  # FTFL's model switches, as `dynalab train` saves
    write_run(root / "dmc" / "ftfl-hopper-stand", cfg, fake_rows(cfg))
    a = default_config("ftfl", env="dmc:humanoid-stand", **base)
    write_run(root / "dmc" / "ftfl-humanoid-a", a, fake_rows(a))
    b = dataclasses.replace(a, seed=3, seeds=2)
    write_run(root / "dmc" / "ftfl-humanoid-b", b, fake_rows(b, upto=12_000))
    return root
