"""Typed run configuration, its validation, and its JSON form."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro

from dynalab.agents.alm import ALMConfig
from dynalab.agents.sac import SACConfig
from dynalab.models.ensemble import ModelConfig

Algo = Literal["sac", "mbpo", "ftfl", "ftfl-tuned", "alm", "alm-nodyna"]
# Experiment trackers that can mirror metrics.csv (src/dynalab/trackers.py), and W&B's modes.
Logger = Literal["tensorboard", "wandb"]
LOGGERS: tuple[str, ...] = typing.get_args(Logger)
WandbMode = Literal["offline", "online"]  # checked with every Literal field by _check_types
# JAX's `jax_default_matmul_precision` for float32 dots and convolutions (see `apply_matmul_precision`).
MatmulPrecision = Literal["default", "float32", "tensorfloat32", "bfloat16"]
EnvParallel = Literal["processes", "threads"]  # what --env-workers are (dynalab.envs.workers)
# The algorithms that roll out a learned model, so need to know when a rollout terminates.
MODEL_ALGOS = ("mbpo", "ftfl", "ftfl-tuned")
# Aligned Latent Models with and without its Dyna-style actor loss (STFL section 3.3, Table 3).
ALM_ALGOS = ("alm", "alm-nodyna")
# ALM's replay capacity (STFL Table 3): 1e6 on humanoid tasks, 1e5 elsewhere, capped at the run length.
ALM_CAPACITY, ALM_HUMANOID_CAPACITY = 100_000, 1_000_000


class ConfigError(ValueError):
    """A user-facing configuration problem; its message is one sentence."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run. Saved whole as `config.json` in the run folder."""

    algo: Algo = "sac"
    """Algorithm."""
    label: str = ""
    """Name of this variant in reports, e.g. "MBPO + LayerNorm" (empty: the algorithm's name)."""
    baseline: str = ""
    """Variant (label) that reports normalise this one to, e.g. "ALM without Dyna" (empty: SAC)."""
    env: str = "dmc:cheetah-run"
    """Task id, e.g. dmc:cheetah-run or gym:Hopper-v5 (`dynalab envs` lists them), or one of your own."""
    imports: Annotated[tuple[str, ...], tyro.conf.arg(name="import", aliases=("--imports",), metavar="MODULE")] = ()
    """Modules that register your own tasks, imported before --env is looked up (several: --import a b)."""
    seeds: int = 1
    """Number of seeds trained together in one vmapped program."""
    seed: int = 0
    """First seed; the run trains seeds seed, seed+1, ..., seed+seeds-1."""
    sweep_field: str = ""
    """Sweep this scalar inside one vmapped program (one of: synthetic_ratio, sac.discount, sac.tau)."""
    sweep_values: tuple[float, ...] = ()
    """The values of --sweep-field; each runs with every seed. metrics.csv gains a column for it."""
    steps: int = 100_000
    """Environment steps per seed."""
    replay_ratio: int = 20
    """Gradient updates per environment step (ALM: 1, its update-to-data ratio)."""
    warmup_steps: int = 10_000
    """Uniform-random exploration steps before learning starts."""
    batch_size: int = 256
    """Minibatch size of each gradient update."""
    buffer_capacity: int | None = None
    """Replay capacity per seed; default min(1e6, steps) (ALM: 1e6 on humanoid tasks, else 1e5, capped at steps)."""
    eval_every: int = 5_000
    """Evaluate the deterministic policy every this many env steps (and at the end)."""
    eval_episodes: int = 10
    """Evaluation episodes per seed."""
    log_every: int = 1_000
    """Write training metrics every this many env steps."""
    checkpoint_every: int = 10_000
    """Write a resumable checkpoint every N env steps, and at the start and end (0: never)."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep in the run folder."""
    env_workers: int = 1
    """Workers that step the simulators (training envs, evaluation envs, --perfect-model's rollouts); 0: one per
    available CPU core; 1 (default): one loop in the main process. Results are bit-identical whatever the count.
    Default 1: on the 2-core reference machine 2 worker processes cut an 8-seed humanoid step by about 1.4-1.5x
    with the cores nearly free, short of 1.6x, and slowed it (0.8x) when other jobs shared them (README)."""
    env_parallel: EnvParallel = "processes"
    """What --env-workers above 1 are: processes (the main process and worker processes, each owning a chunk of
    the simulators) or threads (of the main process: MuJoCo releases the GIL, but dm_control's per-step Python
    holds it, so 2 threads measured 0.87-1.05x)."""
    matmul_precision: MatmulPrecision = "default"
    """Float32 matmul precision: default (JAX's: TF32 on NVIDIA GPUs since Ampere, float32 on CPU), float32,
    tensorfloat32 or bfloat16 (README, "Float precision")."""
    logger: tuple[Logger, ...] = ()
    """Also send metrics.csv's rows to tensorboard, wandb or both (pip install 'dynalab[tensorboard,wandb]')."""
    wandb_project: str = "dynalab"
    """W&B project of --logger wandb."""
    wandb_entity: str = ""
    """W&B entity (user or team) of --logger wandb (empty: your default entity)."""
    wandb_group: str = ""
    """W&B group of --logger wandb, e.g. the experiment's name (empty: none)."""
    wandb_mode: WandbMode = "offline"
    """offline: keep the W&B run in the run folder, upload it later with `wandb sync`; online: stream it to W&B."""
    reset_agent_every: int = 0
    """Re-initialise actor, critic, target critic and temperature every N env steps (0: never)."""
    sac: SACConfig = field(default_factory=SACConfig)
    """Actor-critic hyperparameters (STFL, Table 1)."""

    # Dyna-style algorithms (mbpo, ftfl, ftfl-tuned); SAC ignores these.
    synthetic_ratio: float = 0.95
    """Fraction S of every training batch drawn from synthetic (model) data, in [0, 1)."""
    rollouts_per_step: int = 400
    """Model rollouts started per env step, from states sampled out of the real buffer."""
    rollout_horizon: int = 1
    """Model rollout length (ignored when --horizon-schedule is given)."""
    horizon_schedule: tuple[int, int, int, int] | None = None
    """MBPO's linear horizon schedule: START END MIN MAX (env steps, horizons)."""
    synthetic_retain_steps: int = 2_500
    """The synthetic buffer holds the model rollouts of the last N env steps: the newest
    rollouts-per-step x N x (current horizon) transitions are sampled, older ones never (the
    STFL authors' code keeps a FIFO of 1e6 rows, i.e. N = 2,500 at 400 rollouts per step, our
    default; the original MBPO keeps N = 1,000)."""
    model_refit_every: int = 250
    """Refit the model every N env steps."""
    reset_model_every: int = 0
    """Re-initialise the model's parameters every N env steps (0: never)."""
    perfect_model: bool = False
    """Replace the learned model by the simulator itself (restored to each sampled real state)."""
    termination: str = "auto"
    """When a model rollout terminates: auto (the built-in rule of a known task), never, or MODULE:FUNCTION,
    a jittable function of the predicted next observation, float32 (..., obs_dim) -> bool (...)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Dynamics-reward ensemble (STFL Table 2; FTFL's switches)."""

    # Aligned Latent Models (alm, alm-nodyna); the others ignore these.
    alm: ALMConfig = field(default_factory=ALMConfig)
    """ALM's latent model, networks and schedules (STFL Table 3)."""

    @property
    def max_horizon(self) -> int:
        return self.horizon_schedule[3] if self.horizon_schedule else self.rollout_horizon

    @property
    def synthetic_capacity(self) -> int:
        return self.rollouts_per_step * self.max_horizon * self.synthetic_retain_steps

    @property
    def capacity(self) -> int:
        if self.buffer_capacity is not None:
            return self.buffer_capacity
        if self.algo in ALM_ALGOS:
            humanoid = "humanoid" in self.env.lower()
            return min(ALM_HUMANOID_CAPACITY if humanoid else ALM_CAPACITY, self.steps)
        return min(1_000_000, self.steps)

    def seed_list(self) -> list[int]:
        return [self.seed + k for k in range(self.seeds)]

    def members(self) -> list[tuple[int, float | None]]:
        """(seed, swept value) of every run in the program, value-major; value None without a sweep."""
        values = self.sweep_values if self.sweep_field else (None,)
        return [(s, v) for v in values for s in self.seed_list()]


# Scalars a program may sweep over its member axis: used only in traced arithmetic, never as shapes.
SWEEPABLE = ("synthetic_ratio", "sac.discount", "sac.tau", "alm.discount", "alm.tau")


# The model rollouts' settings of the SAC family (MBPO, FTFL), which SAC and ALM never read.
DYNA_FIELDS = ("synthetic_ratio", "rollouts_per_step", "rollout_horizon", "horizon_schedule",
               "synthetic_retain_steps", "model_refit_every", "reset_model_every", "perfect_model", "termination",
               "model")


def _unused_groups(algo: str) -> tuple[str, ...]:
    if algo in ALM_ALGOS:
        return ("sac",) + DYNA_FIELDS
    return ("alm",) + (DYNA_FIELDS if algo == "sac" else ())


def uses_field(algo: str, field_path: str) -> bool:
    """Whether `algo` ever reads the (dotted) config field: SAC's settings for the SAC family, ALM's
    for ALM, the rollout and model settings for MBPO and FTFL. The one statement of it, used by
    sweep validation, the ignored-settings warning and the report's variant naming."""
    return field_path.split(".")[0] not in _unused_groups(algo)


def with_field(cfg: TrainConfig, field_path: str, value: Any) -> TrainConfig:
    """`cfg` with the (possibly nested, dotted) field set to `value`."""
    head, _, rest = field_path.partition(".")
    if rest:
        return dataclasses.replace(cfg, **{head: dataclasses.replace(getattr(cfg, head), **{rest: value})})
    return dataclasses.replace(cfg, **{head: value})


def _positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}.")


def _check_types(obj: Any, prefix: str = "") -> None:
    """Scalar fields must hold their declared type (config files are not type-checked by a parser)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, kind, flag = getattr(obj, f.name), hints[f.name], f"--{prefix}{f.name.replace('_', '-')}"
        if dataclasses.is_dataclass(value):
            _check_types(value, f"{prefix}{f.name}.")
        elif kind is bool and not isinstance(value, bool):
            raise ConfigError(f"{flag} must be true or false, got {value!r}.")
        elif kind is int and (not isinstance(value, int) or isinstance(value, bool)):
            raise ConfigError(f"{flag} must be an integer, got {value!r}.")
        elif kind is float and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise ConfigError(f"{flag} must be a number, got {value!r}.")
        elif kind is str and not isinstance(value, str):
            raise ConfigError(f"{flag} must be a string, got {value!r}.")
        elif typing.get_origin(kind) is Literal and value not in typing.get_args(kind):
            raise ConfigError(f"{flag} must be one of: {', '.join(map(str, typing.get_args(kind)))}, got {value!r}.")


def apply_matmul_precision(cfg: TrainConfig) -> str:
    """Make every float32 matmul traced from now on in this process use `cfg.matmul_precision`;
    returns a description of what that means here (recorded in run.json).

    JAX's default computes float32 dots in reduced precision on accelerators that have a faster
    mode (TF32 tensor cores on NVIDIA GPUs since Ampere, bfloat16 passes on TPU) and in float32 on
    CPU. The setting is global to the process and part of JAX's trace context, so programs already
    compiled with another precision are not reused for this run.
    """
    import jax

    jax.config.update("jax_default_matmul_precision", None if cfg.matmul_precision == "default" else cfg.matmul_precision)
    platform = jax.default_backend()
    if cfg.matmul_precision != "default":
        return cfg.matmul_precision
    return {"cpu": "default (float32 on CPU)", "gpu": "default (TF32 on NVIDIA GPUs since Ampere, else float32)",
            "tpu": "default (bfloat16 passes on TPU)"}.get(platform, f"default ({platform})")


def validate(cfg: TrainConfig, algos: list[str]) -> None:
    """Raise ConfigError naming the first impossible value and the valid choices."""
    from dynalab.envs import UnknownEnvError, env_spec  # lazy: simulators are slow to import

    _check_types(cfg)
    if cfg.sweep_field or cfg.sweep_values:
        if cfg.sweep_field not in SWEEPABLE:
            raise ConfigError(f"--sweep-field must be one of: {', '.join(SWEEPABLE)}, got {cfg.sweep_field!r}.")
        if not cfg.sweep_values:
            raise ConfigError(f"--sweep-values needs at least one value for --sweep-field {cfg.sweep_field}.")
        if not uses_field(cfg.algo, cfg.sweep_field):
            usable = ", ".join(f for f in SWEEPABLE if uses_field(cfg.algo, f))
            raise ConfigError(f"--algo {cfg.algo} does not use {cfg.sweep_field}, so sweeping it changes nothing; "
                              f"sweep one of: {usable}.")
        for v in cfg.sweep_values:  # each value must make a valid run on its own
            validate(with_field(dataclasses.replace(cfg, sweep_field="", sweep_values=()), cfg.sweep_field, v), algos)
        return
    if cfg.algo not in algos:
        raise ConfigError(f"unknown algo {cfg.algo!r}; choose one of: {', '.join(algos)}.")
    _import_task_modules(cfg)
    try:
        spec = env_spec(cfg.env)
    except UnknownEnvError as e:
        raise ConfigError(str(e)) from None
    _check_termination(cfg, spec.obs_dim)
    _check_perfect_model(cfg)
    _validate_alm(cfg)
    for name in ("seeds", "steps", "replay_ratio", "batch_size", "eval_every", "eval_episodes", "log_every"):
        _positive(name, getattr(cfg, name))
    if cfg.seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {cfg.seed}.")
    if cfg.warmup_steps < 0:
        raise ConfigError(f"--warmup-steps must be >= 0, got {cfg.warmup_steps}.")
    if cfg.warmup_steps >= cfg.steps:
        raise ConfigError(
            f"--warmup-steps ({cfg.warmup_steps}) must be smaller than --steps ({cfg.steps}), "
            "otherwise the agent never learns."
        )
    if cfg.buffer_capacity is not None:
        _positive("buffer_capacity", cfg.buffer_capacity)
    if cfg.capacity < cfg.batch_size:
        how = "--buffer-capacity" if cfg.buffer_capacity is not None else "the buffer capacity (capped at --steps)"
        raise ConfigError(f"{how} ({cfg.capacity}) must be at least --batch-size ({cfg.batch_size}).")
    if cfg.algo in ALM_ALGOS and cfg.alm.horizon > cfg.capacity:
        raise ConfigError(f"--alm.horizon ({cfg.alm.horizon}) cannot exceed the buffer capacity ({cfg.capacity}): "
                          "no sequence that long could ever be stored.")
    s = cfg.sac
    for name in ("actor_lr", "critic_lr", "temperature_lr", "init_temperature", "adam_eps", "log_std_init_scale"):
        if not getattr(s, name) > 0:
            raise ConfigError(f"--sac.{name.replace('_', '-')} must be > 0, got {getattr(s, name)}.")
    if s.log_std_mode not in ("tanh", "clip") or not s.log_std_min < s.log_std_max:
        raise ConfigError(f"--sac.log-std-mode must be tanh or clip with --sac.log-std-min < --sac.log-std-max, "
                          f"got {s.log_std_mode!r} in [{s.log_std_min}, {s.log_std_max}].")
    if not 0 <= s.discount < 1:
        raise ConfigError(f"--sac.discount must be in [0, 1), got {s.discount}.")
    if not 0 < s.tau <= 1:
        raise ConfigError(f"--sac.tau must be in (0, 1], got {s.tau}.")
    if not s.hidden or any(h <= 0 for h in s.hidden):
        raise ConfigError(f"--sac.hidden must be positive layer widths, got {s.hidden}.")
    _positive("keep_checkpoints", cfg.keep_checkpoints)
    if cfg.env_workers < 0:
        raise ConfigError(f"--env-workers must be >= 0 (0 means one per available CPU core), got {cfg.env_workers}.")
    _validate_trackers(cfg)
    for name in ("checkpoint_every", "reset_agent_every", "reset_model_every"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0 (0 means never), got {getattr(cfg, name)}.")
    if not 0 <= cfg.synthetic_ratio < 1:
        raise ConfigError(f"--synthetic-ratio must be in [0, 1), got {cfg.synthetic_ratio}.")
    for name in ("rollouts_per_step", "rollout_horizon", "synthetic_retain_steps", "model_refit_every"):
        _positive(name, getattr(cfg, name))
    if cfg.horizon_schedule is not None:
        start, end, lo, hi = cfg.horizon_schedule
        if not (0 <= start < end and 1 <= lo <= hi):
            raise ConfigError(
                f"--horizon-schedule must be START END MIN MAX with 0 <= START < END and 1 <= MIN <= MAX, "
                f"got {cfg.horizon_schedule}."
            )
    m = cfg.model
    for name in ("ensemble_size", "num_elites", "width", "depth", "batch_size", "refit_steps"):
        if not isinstance(getattr(m, name), int) or getattr(m, name) <= 0:
            raise ConfigError(f"--model.{name.replace('_', '-')} must be a positive integer, got {getattr(m, name)!r}.")
    if m.num_elites > m.ensemble_size:
        raise ConfigError(
            f"--model.num-elites ({m.num_elites}) cannot exceed --model.ensemble-size ({m.ensemble_size})."
        )
    if not m.lr > 0:
        raise ConfigError(f"--model.lr must be > 0, got {m.lr}.")
    if not 0 < m.holdout_ratio < 1:
        raise ConfigError(f"--model.holdout-ratio must be in (0, 1), got {m.holdout_ratio}.")


def _validate_trackers(cfg: TrainConfig) -> None:
    for name in cfg.logger if isinstance(cfg.logger, (tuple, list)) else [cfg.logger]:
        if name not in LOGGERS:
            raise ConfigError(f"--logger must be {' or '.join(LOGGERS)} (or both), got {name!r}.")


def _validate_alm(cfg: TrainConfig) -> None:
    """ALM's own settings, and the run settings that mean nothing for ALM."""
    a = cfg.alm
    for name in ("latent_dim", "hidden", "model_hidden", "horizon", "std_duration"):
        if not isinstance(getattr(a, name), int) or getattr(a, name) <= 0:
            raise ConfigError(f"--alm.{name.replace('_', '-')} must be a positive integer, got {getattr(a, name)!r}.")
    for name in ("lr", "max_grad_norm", "std_end", "adam_eps"):
        if not getattr(a, name) > 0:
            raise ConfigError(f"--alm.{name.replace('_', '-')} must be > 0, got {getattr(a, name)}.")
    if not 0 <= a.discount < 1:
        raise ConfigError(f"--alm.discount must be in [0, 1), got {a.discount}.")
    if not 0 < a.tau <= 1:
        raise ConfigError(f"--alm.tau must be in (0, 1], got {a.tau}.")
    if not 0 <= a.td_lambda <= 1:
        raise ConfigError(f"--alm.td-lambda must be in [0, 1], got {a.td_lambda}.")
    if not a.std_start >= a.std_end:
        raise ConfigError(f"--alm.std-start ({a.std_start}) must be >= --alm.std-end ({a.std_end}): the exploration "
                          "std decays.")
    for name in ("noise_clip", "classifier_reward_weight"):
        if not getattr(a, name) >= 0:
            raise ConfigError(f"--alm.{name.replace('_', '-')} must be >= 0, got {getattr(a, name)}.")
    if cfg.algo not in ALM_ALGOS:
        return
    for name, value in (("reset_agent_every", cfg.reset_agent_every), ("reset_model_every", cfg.reset_model_every),
                        ("perfect_model", cfg.perfect_model)):
        if value:
            raise ConfigError(f"--{name.replace('_', '-')} is defined for the SAC-based algorithms only "
                              f"(sac, {', '.join(MODEL_ALGOS)}), not for --algo {cfg.algo}.")


def ignored_settings(cfg: TrainConfig) -> list[str]:
    """Flags set away from their defaults that `cfg.algo` never reads (e.g. --sac.tau for ALM).

    Not an error, because a preset's shared defaults and `--set` apply to every variant; the CLI
    and the sweep print them so that nobody believes they took effect.
    """
    base = flatten(to_dict(TrainConfig(algo=cfg.algo)))
    have = flatten(to_dict(cfg))
    return sorted(f"--{k.replace('_', '-')}" for k, v in have.items()
                  if not uses_field(cfg.algo, k) and v != base.get(k))


def _import_task_modules(cfg: TrainConfig) -> None:
    """Import the modules of --import, which register the user's tasks, before --env is looked up.

    Every path that builds a run's envs validates its config first (train, resume, bench, sweeps
    and their Ray workers), so this is the one place that makes the user's tasks known to them.
    """
    from dynalab.envs.custom import TaskImportError, import_modules

    if isinstance(cfg.imports, str) or not isinstance(cfg.imports, (tuple, list)):
        raise ConfigError(f"--import must be a list of module names, e.g. [\"my_tasks\"], got {cfg.imports!r}.")
    try:
        import_modules(cfg.imports)
    except TaskImportError as e:
        raise ConfigError(str(e)) from None


def _check_termination(cfg: TrainConfig, obs_dim: int) -> None:
    """Check --termination, and that a model-based run with a learned model has a rule.

    A learned model needs a rule: --termination auto (the built-in rule of a known task; every
    dm_control task that cannot end early has one, see envs/termination.py), never, or a user's
    MODULE:FUNCTION. A perfect model takes `terminated` from the simulator itself, so needs none.
    """
    from dynalab.envs import termination

    try:
        termination.check_rule(cfg.termination)
        if cfg.algo not in MODEL_ALGOS or cfg.perfect_model:
            return
        rule = termination.resolve(cfg.env, cfg.termination, obs_dim)
    except termination.TerminationRuleError as e:
        raise ConfigError(str(e)) from None
    if rule is None:
        raise ConfigError(
            f"--algo {cfg.algo} needs the termination function of {cfg.env} for its model rollouts, "
            "and none is known for it; pass --termination never (if the task never ends an episode early) or "
            "--termination MODULE:FUNCTION (a jittable function of the predicted next observation, "
            f"(..., obs_dim) -> bool (...)), or choose one of {', '.join(termination.supported_ids())} or any dmc: "
            "task of dm_control's suite, or add --perfect-model, or use --algo sac."
        )


def _check_perfect_model(cfg: TrainConfig) -> None:
    """Refuse --perfect-model on a user's task whose steps a restored simulator does not reproduce.

    The suites' tasks are checked by the tests (tests/algos/test_mbpo.py); a user's task is
    probed once per process (models/perfect.py, check_task).
    """
    if not cfg.perfect_model or cfg.algo not in MODEL_ALGOS:
        return
    from dynalab.envs.registry import is_user_id
    from dynalab.models.perfect import PerfectModelError, check_task

    if is_user_id(cfg.env):
        try:
            check_task(cfg.env)
        except PerfectModelError as e:
            raise ConfigError(str(e)) from None


# Fields that change how a run is kept or watched, not what it computes: they may differ on resume.
RUN_CONTROL = ("label", "baseline", "checkpoint_every", "keep_checkpoints", "env_workers", "env_parallel", "logger",
               "wandb_project", "wandb_entity", "wandb_group", "wandb_mode")


def differences(saved: TrainConfig, new: TrainConfig) -> list[str]:
    """`field: saved -> new` for every result-affecting field that differs."""
    a, b = flatten(to_dict(saved)), flatten(to_dict(new))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a.keys() | b.keys())
            if k not in RUN_CONTROL and a.get(k) != b.get(k)]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config dict -> {"sac.hidden": [...], ...} with tuples as lists."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _as_tuples(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """JSON and TOML lists -> tuples for the tuple-typed fields of `cls` (what the dataclass holds);
    a bare string for a tuple of strings (`logger = "wandb"`, `imports = "my_tasks"`) -> a 1-tuple."""
    hints = typing.get_type_hints(cls)
    out = dict(values)
    for name, value in values.items():
        kinds = [k for k in (hints.get(name), *typing.get_args(hints.get(name))) if typing.get_origin(k) is tuple]
        if not kinds:
            continue
        items = typing.get_args(kinds[0])[:1]
        of_strings = bool(items) and (items[0] is str or typing.get_origin(items[0]) is Literal)
        if isinstance(value, list):
            out[name] = tuple(value)
        elif isinstance(value, str) and of_strings:
            out[name] = (value,)
    return out


def from_dict(d: dict[str, Any]) -> TrainConfig:
    """A config from its JSON form; unknown or missing-typed fields raise ConfigError."""
    try:
        d = dict(d)
        sac = _as_tuples(SACConfig, dict(d.pop("sac", {})))
        alm = _as_tuples(ALMConfig, dict(d.pop("alm", {})))
        model = _as_tuples(ModelConfig, dict(d.pop("model", {})))
        d = _as_tuples(TrainConfig, d)
        return TrainConfig(**d, sac=SACConfig(**sac), model=ModelConfig(**model), alm=ALMConfig(**alm))
    except TypeError as e:  # an unknown or misspelt field
        valid = ", ".join(f.name for f in dataclasses.fields(TrainConfig))
        raise ConfigError(f"bad config: {e}; valid top-level fields are: {valid}.") from None


def save(cfg: TrainConfig, path: Path) -> None:
    path.write_text(json.dumps(to_dict(cfg), indent=2) + "\n")


def load(path: Path) -> TrainConfig:
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read config {path}: {e}.") from None
    if not isinstance(d, dict):
        raise ConfigError(f"config {path} must hold a JSON object of config fields.")
    return from_dict(d)
