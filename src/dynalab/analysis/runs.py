"""Find run folders and load them into one tidy table.

A run folder is any folder holding a `config.json` (written by `dynalab train`); the folders
`checkpoints/` and `nonfinite/` inside a run, and hidden folders (`.tmp-*` checkpoint writes), are
not runs and are not searched. A run that is still going is read as far as it has got.

Variants. A run's variant is its `label`, or the algorithm's display name (SAC, MBPO, FTFL, Tuned
FTFL, ALM, ALM without Dyna) when the label is empty. When runs with the same name on the same task
differ in a setting that changes results (e.g. a synthetic-ratio sweep), every run of that name, on
every task, gets those settings appended, e.g. "MBPO (S=0.5)" and "MBPO (S=0.95)", so that
different experiments never pool. Settings that do not change what is learned (seed, seeds, steps,
eval/log/checkpoint cadence, label, baseline) are not compared, nor the settings an algorithm
ignores: SAC ignores the Dyna-only and `alm.*` settings, ALM (with or without Dyna) the `sac.*`,
`model.*` and Dyna-only ones, MBPO and FTFL the `alm.*` ones. The algorithm is compared: one label
on two algorithms names two variants ("X (algo=sac)", "X (algo=mbpo)").

Baselines. Reports normalise each variant to its baseline variant on the same task: the variant
its runs name in `baseline` (an exact variant name, or a label/display name; when several variants
carry that name, the one with default settings), else the SAC reference (algo sac labelled '' or
'SAC'; if several, the one with default settings). A variant that is some variant's baseline and
names none itself is a reference: normalised to itself, as SAC. Runs of one variant that name
different baselines are refused (ReportError); a baseline that cannot be resolved leaves its
variants unnormalised, with a note.

Seeds from different run folders of the same task and variant pool together. The same seed in two
run folders of one task and variant is refused (ReportError) rather than silently de-duplicated:
it means a repeated or copied run, and which copy is "right" is the user's decision.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from dynalab import config as config_lib
from dynalab.config import ConfigError, TrainConfig

NOT_RUNS = {"checkpoints", "nonfinite"}
DISPLAY = {"sac": "SAC", "mbpo": "MBPO", "ftfl": "FTFL", "ftfl-tuned": "Tuned FTFL", "alm": "ALM",
           "alm-nodyna": "ALM without Dyna"}
SUITES = {"gym": "Gym", "dmc": "DMC"}
SUITE_ORDER = ("gym", "dmc")

# Settings that do not change what a run learns: never used to tell variants apart.
NOT_COMPARED = {"env", "imports", "seed", "seeds", "steps", "eval_every", "eval_episodes", "log_every",
                *config_lib.RUN_CONTROL}  # label, baseline, checkpointing, trackers: never what was learned
# Algorithms without a synthetic ratio (no synthetic batches): their `synthetic_ratio` column is NaN.
NO_SYNTHETIC = ("sac",) + config_lib.ALM_ALGOS
SHORT_NAMES = {"synthetic_ratio": "S"}

RUN_COLUMNS = ["run", "path", "env", "suite", "task", "algo", "label", "baseline", "base_variant", "variant",
               "ratio_group",
               "synthetic_ratio", "is_sac", "state_target", "seeds", "program_seeds", "configured_steps", "last_step",
               "finished"]
METRIC_COLUMNS = ["run", "env", "suite", "task", "algo", "variant", "base_variant", "ratio_group", "synthetic_ratio",
                  "seed", "step", "metric", "value"]


class ReportError(ConfigError):
    """A problem with the report's inputs; the message is one sentence."""


@dataclass
class RunData:
    """Everything the report reads: one row per run folder, and all metric rows (tidy)."""

    runs: pd.DataFrame
    """One row per run folder (RUN_COLUMNS)."""
    metrics: pd.DataFrame
    """Long format: one row per (run, seed, step, metric) (METRIC_COLUMNS)."""
    sac_variant: str | None
    """The SAC reference: variants without a `baseline` are normalised to it (None: no SAC runs, or no single
    SAC variant)."""
    notes: list[str] = field(default_factory=list)
    """Things the reader should know (runs skipped, SAC reference ambiguous, ...)."""
    baselines: dict[str, str] = field(default_factory=dict)
    """{variant: the variant it is normalised to}; a reference (SAC, or a baseline naming none itself) maps to
    itself; a variant whose baseline could not be resolved is absent."""


def find_run_folders(dirs: list[Path]) -> list[Path]:
    """Every folder under `dirs` (each may itself be a run) that holds a config.json, sorted."""
    found: dict[Path, None] = {}
    for d in map(Path, dirs):
        if not d.is_dir():
            raise ReportError(f"{d} is not a folder.")
        for root, subdirs, files in os.walk(d):
            subdirs[:] = sorted(s for s in subdirs if s not in NOT_RUNS and not s.startswith("."))
            if "config.json" in files:
                found.setdefault(Path(root).resolve(), None)
    if not found:
        raise ReportError(f"no run folders (folders with a config.json) under {', '.join(map(str, dirs))}.")
    return sorted(found)


def parse_env(env: str) -> tuple[str, str]:
    """'dmc:humanoid-stand' -> ('dmc', 'humanoid-stand')."""
    suite, _, task = env.partition(":")
    return (suite, task) if task else ("", env)


def task_title(env: str) -> str:
    """'dmc:humanoid-stand' -> 'DMC humanoid-stand'."""
    suite, task = parse_env(env)
    return f"{SUITES.get(suite, suite)} {task}".strip()


def env_sort_key(env: str) -> tuple:
    suite, task = parse_env(env)
    return (SUITE_ORDER.index(suite) if suite in SUITE_ORDER else len(SUITE_ORDER), suite, task.lower())


def variant_sort_key(name: str) -> tuple:
    """SAC, MBPO, FTFL, Tuned FTFL first (with their suffixed forms), then the rest alphabetically."""
    order = list(DISPLAY.values())
    base = name.split(" (")[0]
    return (order.index(base) if base in order else len(order), base.lower(), name)


def _exact_floats(text: pd.Series) -> pd.Series:
    """Strings to float64 exactly as written (NaN where unparseable): pd.to_numeric's fast parser can
    be off by one unit in the last place, and metrics.csv holds each value's shortest exact repr."""
    values = pd.to_numeric(text, errors="coerce")
    ok = values.notna()
    values[ok] = text[ok].astype(np.float64)
    return values


def read_metrics(path: Path) -> pd.DataFrame:
    """A run's metrics.csv (columns step, seed, metric, value); a torn last line is dropped.

    A program that swept a scalar has that scalar's column after `seed`; it comes back as `swept`.
    """
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame({"step": pd.Series(dtype="int64"), "seed": pd.Series(dtype="int64"),
                             "metric": pd.Series(dtype="object"), "value": pd.Series(dtype="float64")})
    df = pd.read_csv(path, dtype=str, keep_default_na=False, on_bad_lines="skip")
    missing = {"step", "seed", "metric", "value"} - set(df.columns)
    if missing:
        raise ReportError(f"{path} lacks the column(s) {', '.join(sorted(missing))}; expected step,seed,metric,value.")
    columns = {
        "step": pd.to_numeric(df["step"], errors="coerce"),
        "seed": pd.to_numeric(df["seed"], errors="coerce"),
        "metric": df["metric"].where(df["metric"] != ""),
        "value": _exact_floats(df["value"]),
    }
    swept = [c for c in df.columns if c not in ("step", "seed", "metric", "value")]
    if swept:
        columns["swept"] = _exact_floats(df[swept[0]])
    out = pd.DataFrame(columns).dropna()
    out = out[np.isfinite(out["value"])]
    with path.open("rb") as f:  # a run killed mid-write can leave a torn last line: drop it
        f.seek(-1, os.SEEK_END)
        torn = f.read(1) != b"\n"
    if torn and len(out) and len(df) and out.index[-1] == len(df) - 1:
        out = out.iloc[:-1]
    out = out.astype({"step": "int64", "seed": "int64"})
    key = ["step", "seed", "swept", "metric"] if swept else ["step", "seed", "metric"]
    return out.drop_duplicates(key, keep="last").reset_index(drop=True)


def _compared_settings(cfg: TrainConfig) -> dict[str, str]:
    """The result-affecting settings of a run, as canonical JSON strings."""
    flat = config_lib.flatten(config_lib.to_dict(cfg))
    if flat.get("buffer_capacity") == dataclasses.replace(cfg, buffer_capacity=None).capacity:
        flat["buffer_capacity"] = None  # the resolved default depends on `steps` (and task), which are not compared
    out = {}
    for k, v in flat.items():
        if k in NOT_COMPARED:
            continue
        if not config_lib.uses_field(cfg.algo, k):  # e.g. sac.* for ALM: never tells variants apart
            continue
        out[k] = json.dumps(v, sort_keys=True)
    return out


def _format_setting(key: str, value_json: str) -> str:
    value = json.loads(value_json)
    if isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, list):
        text = "(" + ", ".join(str(v) for v in value) + ")"
    else:
        text = str(value)
    return f"{SHORT_NAMES.get(key, key)}={text}"


def _setting_order(key: str) -> tuple:
    return (key != "synthetic_ratio", key)


def load_runs(dirs: list[Path], metrics: Iterable[str] | None = None) -> RunData:
    """Discover, read and name every run under `dirs`; see the module docstring for the rules.

    `metrics` keeps only those metric names (default: all), to save memory on large sweeps.
    """
    keep = None if metrics is None else set(metrics)
    folders = find_run_folders(dirs)
    roots = [Path(d).resolve() for d in dirs]
    notes: list[str] = []
    runs, metric_frames = [], {}
    pieces = []
    for folder in folders:
        try:
            cfg = config_lib.load(folder / "config.json")
        except ConfigError as e:
            raise ReportError(str(e)) from None
        m = read_metrics(folder / "metrics.csv")
        if keep is not None:
            m = m[m["metric"].isin(keep)].reset_index(drop=True)
        name = _display_name(folder, roots)
        if name in metric_frames or any(p[2] == name for p in pieces):
            name = str(folder)  # two input folders with the same name
        if not cfg.sweep_field:
            pieces.append((folder, cfg, name, m.drop(columns="swept", errors="ignore")))
            continue
        # A swept program holds one run per value: report each as its own run.
        single = dataclasses.replace(cfg, sweep_field="", sweep_values=())
        short = SHORT_NAMES.get(cfg.sweep_field, cfg.sweep_field)
        for v in cfg.sweep_values:
            part = m[np.isclose(m["swept"], v)].drop(columns="swept") if "swept" in m else m.iloc[:0]
            pieces.append((folder, config_lib.with_field(single, cfg.sweep_field, v), f"{name} [{short}={v:g}]",
                           part.reset_index(drop=True)))
    for folder, cfg, name, m in pieces:
        if m.empty:
            notes.append(f"Run `{name}` has no metrics yet; it is left out.")
            continue
        suite, task = parse_env(cfg.env)
        base = cfg.label or DISPLAY.get(cfg.algo, cfg.algo)
        runs.append({
            "run": name, "path": str(folder), "env": cfg.env, "suite": suite, "task": task, "algo": cfg.algo,
            "label": cfg.label, "baseline": cfg.baseline.strip(), "base_variant": base,
            "synthetic_ratio": math.nan if cfg.algo in NO_SYNTHETIC else float(cfg.synthetic_ratio),
            "is_sac": cfg.algo == "sac" and cfg.label.strip().lower() in ("", "sac"),
            "state_target": state_target(cfg),
            "seeds": sorted(int(s) for s in m["seed"].unique()), "program_seeds": cfg.seeds,
            "configured_steps": cfg.steps, "last_step": int(m["step"].max()),
            "_settings": _compared_settings(cfg),
        })
        metric_frames[name] = m
    if not runs:
        raise ReportError("none of the run folders has any metrics yet.")
    _name_variants(runs)
    sac_variant = _sac_reference(runs, notes)
    baselines = resolve_baselines(runs, sac_variant, notes)
    _check_seeds(runs)

    run_table = pd.DataFrame(runs).drop(columns=["_settings", "_default"])
    run_table["finished"] = run_table["last_step"] >= run_table["configured_steps"]
    run_table = run_table[RUN_COLUMNS]
    parts = []
    for r in run_table.itertuples(index=False):
        m = metric_frames[r.run].copy()
        for col in ("run", "env", "suite", "task", "algo", "variant", "base_variant", "ratio_group", "synthetic_ratio"):
            m[col] = getattr(r, col)
        parts.append(m)
    metrics = pd.concat(parts, ignore_index=True)[METRIC_COLUMNS]
    for col in ("run", "env", "suite", "task", "algo", "variant", "base_variant", "ratio_group", "metric"):
        metrics[col] = metrics[col].astype("category")
    return RunData(runs=run_table, metrics=metrics, sac_variant=sac_variant, notes=notes, baselines=baselines)


def _algo_defaults(algo: str) -> TrainConfig:
    """What `--algo` runs with unless told otherwise (ALM sets its own replay ratio, batch, warm-up)."""
    from dynalab.algos import ALGOS, default_config  # lazy: pulls in JAX and the learners

    return default_config(algo) if algo in ALGOS else TrainConfig()


def state_target(cfg: TrainConfig) -> str:
    """What a run's learned model predicts for the state: "s'-s" (residual, MBPO), "s'" (direct, FTFL),
    or "" (no learned state model: SAC, a perfect model, or ALM, whose model predicts a latent state)."""
    if cfg.algo in NO_SYNTHETIC or cfg.perfect_model:
        return ""
    return "s'" if cfg.model.direct_next_state else "s'-s"


def _display_name(folder: Path, roots: list[Path]) -> str:
    """The run folder relative to the input folder it was found under (prefixed by that folder's name)."""
    for root in roots:
        if folder == root:
            return root.name or str(root)
        if folder.is_relative_to(root):
            return str(Path(root.name) / folder.relative_to(root))
    return str(folder)


def _name_variants(runs: list[dict]) -> None:
    """Set variant, ratio_group and _default on every run (see the module docstring)."""
    values: dict[tuple[str, str], dict[str, set[str]]] = {}
    for r in runs:
        per_key = values.setdefault((r["env"], r["base_variant"]), {})
        for k, v in r["_settings"].items():
            per_key.setdefault(k, set()).add(v)
    varying: dict[str, set[str]] = {}
    for (_, base), per_key in values.items():
        varying.setdefault(base, set()).update(k for k, vs in per_key.items() if len(vs) > 1)
    defaults: dict[str, dict[str, str]] = {}  # per algorithm: its ignored settings are not compared
    for r in runs:
        default_settings = defaults.setdefault(r["algo"], _compared_settings(_algo_defaults(r["algo"])))
        keys = sorted(varying[r["base_variant"]], key=_setting_order)
        parts = [_format_setting(k, r["_settings"].get(k, "null")) for k in keys]
        r["variant"] = r["base_variant"] + (f" ({', '.join(parts)})" if parts else "")
        group = [p for k, p in zip(keys, parts) if k != "synthetic_ratio"]
        r["ratio_group"] = r["base_variant"] + (f" ({', '.join(group)})" if group else "")
        r["_default"] = all(r["_settings"].get(k) == default_settings.get(k) for k in keys)


def _sac_reference(runs: list[dict], notes: list[str]) -> str | None:
    """The SAC variant to normalise by: algo sac labelled '' or 'SAC'; if several, the one with default settings."""
    candidates = sorted({r["variant"] for r in runs if r["is_sac"]})
    if len(candidates) > 1:
        defaults = sorted({r["variant"] for r in runs if r["is_sac"] and r["_default"]})
        if len(defaults) == 1:
            return defaults[0]
        notes.append(f"SAC normalisation is skipped: several SAC variants ({', '.join(candidates)}) qualify as the "
                     "reference; label the others differently.")
        return None
    return candidates[0] if candidates else None


def resolve_baselines(runs: list[dict], sac_variant: str | None, notes: list[str]) -> dict[str, str]:
    """{variant: the variant reports normalise it to} (see the module docstring); references map to themselves.

    `runs` are load_runs' run dicts (with variant, base_variant, baseline, is_sac and _default set). A variant
    whose baseline cannot be resolved is left out, with a note. Raises ReportError when the runs of one
    variant name different baselines.
    """
    requested: dict[str, tuple[str, str]] = {}  # variant -> (baseline as written, first run naming it)
    for r in runs:
        first = requested.setdefault(r["variant"], (r["baseline"], r["run"]))
        if first[0] != r["baseline"]:
            raise ReportError(
                f"runs of {r['variant']} name different baselines ({_quoted(first[0])} in {first[1]}, "
                f"{_quoted(r['baseline'])} in {r['run']}); give every run of a variant the same --baseline, or the "
                "runs different --label values."
            )
    resolved = {v: _baseline_variant(v, name, runs, sac_variant, notes) for v, (name, _) in requested.items()}
    references = {b for b in resolved.values() if b is not None}
    out = {}
    for v, b in resolved.items():
        # A base algorithm that names no baseline of its own (e.g. ALM without Dyna for ALM) is the reference
        # of its family, as SAC is: dividing it by SAC would compare two unrelated base algorithms.
        if v in references and not requested[v][0]:
            out[v] = v
        elif b is not None:
            out[v] = b
    unnormalised = sorted((v for v, (name, _) in requested.items() if not name and v not in out), key=variant_sort_key)
    if unnormalised and out and not any(r["is_sac"] for r in runs):
        notes.append(f"No SAC reference runs (algo sac with an empty label or the label SAC), so "
                     f"{', '.join(unnormalised)} (whose baseline is SAC) {'is' if len(unnormalised) == 1 else 'are'} "
                     "not normalised.")
    return out


def _quoted(baseline: str) -> str:
    return f"'{baseline}'" if baseline else "none (SAC)"


def _baseline_variant(variant: str, name: str, runs: list[dict], sac_variant: str | None,
                      notes: list[str]) -> str | None:
    """The variant that `name` (a run's `baseline`; empty: SAC) names for `variant`, or None (with a note)."""
    if not name:
        return sac_variant
    variants = {r["variant"] for r in runs}
    if name in variants:
        return name
    candidates = sorted({r["variant"] for r in runs if r["base_variant"] == name}, key=variant_sort_key)
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        defaults = sorted({r["variant"] for r in runs if r["base_variant"] == name and r["_default"]})
        if len(defaults) == 1:
            return defaults[0]
        notes.append(f"{variant} is not normalised: several variants ({', '.join(candidates)}) qualify as its "
                     f"baseline {name}; give the runs of the one meant a label of its own and name that.")
        return None
    notes.append(f"{variant} names the baseline '{name}', but no run has that name, so it is not normalised; the "
                 f"variants are: {', '.join(sorted(variants, key=variant_sort_key))}.")
    return None


def _check_seeds(runs: list[dict]) -> None:
    owner: dict[tuple[str, str, int], str] = {}
    for r in runs:
        for s in r["seeds"]:
            key = (r["env"], r["variant"], s)
            if key in owner:
                raise ReportError(
                    f"seed {s} of {r['variant']} on {r['env']} is in two run folders, {owner[key]} and {r['run']}; "
                    "remove one of them, or give the runs different --label values."
                )
            owner[key] = r["run"]
