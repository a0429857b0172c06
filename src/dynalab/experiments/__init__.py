"""The papers' experiments as named presets: one TOML file each in this folder.

A preset lists tasks (`envs`) and variants (`[[variant]]`, each with a `label`, an `algo` and
any config fields); its trials are every task x variant. Config fields are set, later ones
winning, by: the algorithm's defaults, `[defaults]`, `[per_env."<task>"]`, then the variant.
Nested fields use dotted keys (`sac.critic_layernorm = true`, `model.target_norm = true`).
A path to your own TOML file works wherever a preset name does.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynalab import config as config_lib
from dynalab.config import ConfigError, TrainConfig
from dynalab.sweep import Trial

PRESETS = Path(__file__).parent

# The experiment's timeline, in env steps: `scale` shrinks these with --steps.
_STEP_FIELDS = ("steps", "warmup_steps", "eval_every", "log_every", "checkpoint_every", "reset_agent_every",
                "reset_model_every")


@dataclass(frozen=True)
class Experiment:
    name: str
    reproduces: str
    description: str
    trials: tuple[Trial, ...]


def names() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.toml"))


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def trial_name(label: str, env: str) -> str:
    slug = re.sub(r"[^a-z0-9.=]+", "-", label.lower()).strip("-")
    return f"{slug}__{env.replace(':', '-')}"


def load(name_or_path: str, scale: float = 1.0, overrides: dict[str, Any] | None = None,
         check: bool = True) -> Experiment:
    """Read a preset (by name, or a path to a TOML file) into trials, validated unless `check` is False."""
    from dynalab.algos import ALGOS, default_config

    path = Path(name_or_path)
    if not (path.suffix == ".toml" and path.is_file()):
        path = PRESETS / f"{name_or_path}.toml"
        if not path.is_file():
            raise ConfigError(f"unknown experiment {name_or_path!r}; choose one of: {', '.join(names())} "
                              "(or pass a path to a .toml file).")
    try:
        spec = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"cannot parse {path}: {e}.") from None
    unknown = set(spec) - {"reproduces", "description", "envs", "defaults", "per_env", "variant"}
    if unknown:
        raise ConfigError(f"{path} has unknown keys {sorted(unknown)}; valid keys are reproduces, description, "
                          "envs, defaults, per_env and variant.")
    if not spec.get("envs") or not spec.get("variant"):
        raise ConfigError(f"{path} needs a non-empty `envs` list and at least one [[variant]].")
    trials = []
    for env in spec["envs"]:
        for variant in spec["variant"]:
            variant = dict(variant)
            label, algo = variant.get("label"), variant.get("algo", "sac")
            if not label:
                raise ConfigError(f"every [[variant]] in {path} needs a label.")
            if algo not in ALGOS:
                raise ConfigError(f"variant {label!r} in {path} has unknown algo {algo!r}; choose one of: "
                                  f"{', '.join(ALGOS)}.")
            fields = config_lib.to_dict(default_config(algo))
            for layer in (spec.get("defaults", {}), spec.get("per_env", {}).get(env, {}), variant,
                          {"env": env}, overrides or {}):
                fields = _merge(fields, layer)
            cfg = scale_steps(config_lib.from_dict(fields), scale)
            if check:
                config_lib.validate(cfg, list(ALGOS))
            trials.append(Trial(trial_name(label, env), cfg))
    seen = [t.name for t in trials]
    if len(set(seen)) != len(seen):
        raise ConfigError(f"{path} gives two trials the same name; make the variant labels distinct.")
    return Experiment(path.stem, spec.get("reproduces", ""), spec.get("description", ""), tuple(trials))


def scale_steps(cfg: TrainConfig, scale: float) -> TrainConfig:
    """Shrink the experiment's timeline by `scale` (a smoke run of the same experiment), keeping it valid.

    Steps, warm-up, reset and checkpoint intervals, the horizon schedule and ALM's exploration
    schedule shrink in proportion.
    Evaluation and logging shrink too, but to no fewer than steps/10 and steps/50 env steps:
    an evaluation costs whole episodes at any scale. The model refit interval is per-step
    compute, not timeline: it stays, capped at steps/4 so a smoke run still refits.
    """
    if scale == 1.0:
        return cfg
    if not 0 < scale <= 1:
        raise ConfigError(f"--scale must be in (0, 1], got {scale}.")
    changes = {f: max(1, round(getattr(cfg, f) * scale)) if getattr(cfg, f) else 0 for f in _STEP_FIELDS}
    steps = changes["steps"] = max(changes["steps"], 2)
    changes["warmup_steps"] = min(changes["warmup_steps"], steps - 1)
    changes["eval_every"] = max(changes["eval_every"], steps // 10)
    changes["log_every"] = max(changes["log_every"], steps // 50)
    changes["model_refit_every"] = max(1, min(cfg.model_refit_every, steps // 4))
    changes["synthetic_retain_steps"] = max(1, round(cfg.synthetic_retain_steps * scale))
    if cfg.buffer_capacity is None and changes["steps"] < cfg.batch_size:
        changes["buffer_capacity"] = cfg.batch_size  # the default min(1e6, steps) could not fill one batch
    # ALM's exploration std decays over post-warm-up steps: part of the timeline.
    changes["alm"] = dataclasses.replace(cfg.alm, std_duration=max(1, round(cfg.alm.std_duration * scale)))
    if cfg.horizon_schedule is not None:
        start, end, lo, hi = cfg.horizon_schedule
        changes["horizon_schedule"] = (round(start * scale), max(round(end * scale), round(start * scale) + 1), lo, hi)
    # Settings the algorithm never reads stay as they were: changed, they would only earn the run
    # an "unused setting" warning (e.g. SAC's runs and the model refit interval).
    return dataclasses.replace(cfg, **{k: v for k, v in changes.items() if config_lib.uses_field(cfg.algo, k)})


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["replay_ratio=1", "sac.hidden=[32, 32]"]` -> nested dict; values use TOML syntax."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects FIELD=VALUE (e.g. replay_ratio=1 or sac.hidden=[32, 32]), got {item!r}.")
        try:
            parsed = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value.strip()  # a bare word: a string
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = parsed
    return out
