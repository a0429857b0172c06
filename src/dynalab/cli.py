"""Command line: `dynalab train|resume|sweep|experiments|report|video|model-study|bench|envs`."""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import tyro

from dynalab.config import ConfigError, TrainConfig

# One flat set of run flags (--algo, --env, --replay-ratio, ...; SAC's as --sac.*, the model's
# as --model.*). Defaults are those of the algorithm named by --algo.
RunFlags = Annotated[TrainConfig, tyro.conf.arg(name="")]


@dataclass
class Train:
    """Train --seeds seeds of one algorithm on one task, in one vmapped program.

    Writes config.json, run.json and metrics.csv (columns step,seed,metric,value) into --out.
    Defaults follow the algorithm chosen with --algo (e.g. ftfl turns on --model.target-norm
    and --model.direct-next-state; --model.no-target-norm turns it off again).
    """

    cfg: RunFlags = field(default_factory=TrainConfig)
    out: Path = Path("runs/default")
    """Run folder. If it holds a checkpoint of the same config, the run resumes from it."""
    progress: bool = True
    """Show a progress bar with env steps per second and ETA."""
    allow_config_change: bool = False
    """Resume a run in --out even though these flags differ from its saved config.json."""

    def run(self) -> None:
        from dynalab.train import train

        _report(train(self.cfg, self.out, progress=self.progress, allow_config_change=self.allow_config_change),
                self.out)


@dataclass
class Resume:
    """Continue the run in DIR from its newest checkpoint, with the config saved in DIR."""

    dir: tyro.conf.Positional[Path]
    """Run folder written by `dynalab train`."""
    progress: bool = True
    """Show a progress bar with env steps per second and ETA."""

    def run(self) -> None:
        from dynalab import config as config_lib
        from dynalab.train import train

        if not (self.dir / "config.json").is_file():
            raise ConfigError(f"{self.dir} holds no config.json, so it is not a dynalab run folder; pass the --out of a run.")
        _report(train(config_lib.load(self.dir / "config.json"), self.dir, progress=self.progress), self.dir)


def _report(returns, out: Path) -> None:
    import json

    from dynalab.envs import DMC15

    # Known only where the reward bounds it: 1 per step for 1,000 steps (InvertedPendulum: 1 while
    # the pole is up; the DMC15 tasks: a reward in [0, 1] on each of the episode's 1,000 steps).
    env = json.loads((out / "config.json").read_text()).get("env")
    best = 1000 if env == "gym:InvertedPendulum-v5" or env in DMC15 else None
    print(f"final evaluation return (mean of {returns.shape[1]} episodes) per seed: "
          f"{[round(float(x), 1) for x in returns.mean(axis=1)]}"
          + (f"; the maximum possible on this task is {best}" if best else "") + f"; run folder: {out}")


BENCH_SIZE = {"steps": 50, "warmup_steps": 1_000}


@dataclass
class Bench:
    """Measure steady-state seconds per env step (compile time excluded), split by phase.

    --steps learning steps are timed after --warmup-steps random steps fill the buffer and the
    learning step, hooks and evaluation have compiled. Hooks (model refits, ...) are timed
    alone and amortised over their interval; the learner call is also timed alone on
    device-resident data, so the loop's overhead over it is visible.
    """

    cfg: RunFlags = field(default_factory=lambda: TrainConfig(**BENCH_SIZE))
    json: Path | None = None
    """Also write the measurements, with command, commit, date and device, to this file."""
    seed_counts: tuple[int, ...] = ()
    """A scaling curve: bench at each of these seed counts (e.g. 1 2 4 8) in one process, instead of at --seeds."""
    plot: Path | None = None
    """With --seed-counts: the PNG of the curve (default: beside --json, else bench_scaling.png)."""

    def run(self) -> None:
        from dynalab.bench import bench, format_table, write_json

        if self.seed_counts:
            from dynalab.scaling import format_curve, plot_curve, scaling

            result = scaling(self.cfg, list(self.seed_counts))
            print(format_curve(result))
            png = self.plot or (self.json.with_suffix(".png") if self.json else Path("bench_scaling.png"))
            print(f"wrote {plot_curve(result, png)}")
        else:
            result = bench(self.cfg)
            print(format_table(result))
        if self.json is not None:
            result["command"] = shlex.join(["dynalab", *_INVOCATION])  # as typed, so it can be rerun
            write_json(result, self.json)
            print(f"wrote {self.json}")


@dataclass
class Envs:
    """List every task id: Gym6 and DMC15 (the papers' suites) first, then all others (yours tagged 'user')."""

    imports: Annotated[tuple[str, ...], tyro.conf.arg(name="import", aliases=("--imports",), metavar="MODULE")] = ()
    """Modules that register your own tasks, imported first, e.g. --import my_tasks (several: --import a b)."""

    def run(self) -> None:
        from dynalab.envs import DMC15, GYM6, list_envs
        from dynalab.envs.custom import TaskImportError, import_modules
        from dynalab.envs.registry import is_user_id

        try:
            import_modules(self.imports)
        except TaskImportError as e:
            raise ConfigError(str(e)) from None
        for env_id in list_envs():
            tag = "gym6" if env_id in GYM6 else "dmc15" if env_id in DMC15 else "user" if is_user_id(env_id) else ""
            print(f"{tag:<6} {env_id}")


@dataclass
class Experiments:
    """List the papers' experiments (presets), or show one experiment's trials."""

    show: str | None = None
    """Print this experiment's trials and their configs' main fields."""

    def run(self) -> None:
        from dynalab import experiments

        if self.show is not None:
            exp = experiments.load(self.show, check=False)
            print(f"{exp.name}: {exp.description}\nreproduces: {exp.reproduces}\n")
            for t in exp.trials:
                c = t.cfg
                print(f"  {t.name:<52} algo={c.algo} seeds={c.seeds} steps={c.steps:,}")
            return
        for name in experiments.names():
            exp = experiments.load(name, check=False)
            seeds = sorted({t.cfg.seeds for t in exp.trials})
            steps = sorted({t.cfg.steps for t in exp.trials})
            budget = f"{steps[0] // 1000}k" + (f"-{steps[-1] // 1000}k" if len(steps) > 1 else "")
            print(f"{name:<26} {len(exp.trials):>3} trials  seeds {'/'.join(map(str, seeds)):<4} steps {budget:<10} "
                  f"{exp.reproduces}")
            print(f"{'':<26} {exp.description}")


@dataclass
class Sweep:
    """Run every trial (task x variant) of an experiment into OUT/<trial>/, locally or on Ray.

    Trials already finished are skipped, interrupted ones resume from their checkpoints, and
    failed ones are retried; OUT/sweep.json records each trial's status. Then
    `dynalab report OUT --out REPORT` turns the runs into figures and tables.
    """

    experiment: tyro.conf.Positional[str]
    """A preset name (`dynalab experiments` lists them) or a path to a .toml file."""
    out: Path = Path("runs/sweep")
    """Sweep folder; each trial is a run folder inside it."""
    scale: float = 1.0
    """Multiply every env-step count (steps, warm-up, intervals) by this, for a smoke run."""
    seeds: int | None = None
    """Override the number of seeds of every trial."""
    only: tuple[str, ...] = ()
    """Run only trials whose names match one of these glob patterns (e.g. 'sac__*')."""
    override: Annotated[tuple[str, ...], tyro.conf.arg(name="set")] = ()
    """Config overrides FIELD=VALUE in TOML syntax, e.g. --set replay_ratio=1 'sac.hidden=[32, 32]'."""
    ray: str | None = None
    """Run the trials as Ray tasks on this cluster ('auto' or HOST:PORT); needs dynalab[ray]."""
    retries: int = 1
    """Retry a failed trial this many times (it resumes from its last checkpoint)."""
    dry_run: bool = False
    """List the trials that would run, and stop."""
    progress: bool = True
    """Show progress bars (local runs)."""

    def run(self) -> None:
        import fnmatch

        from dynalab import experiments
        from dynalab.sweep import run_sweep

        overrides = experiments.parse_overrides(list(self.override))
        if self.seeds is not None:
            overrides["seeds"] = self.seeds
        exp = experiments.load(self.experiment, scale=self.scale, overrides=overrides, check=False)
        trials = [t for t in exp.trials if not self.only or any(fnmatch.fnmatch(t.name, p) for p in self.only)]
        if not trials:
            raise ConfigError(f"no trial of {exp.name} matches --only {' '.join(self.only)}; "
                              f"trials are: {', '.join(t.name for t in exp.trials)}.")
        if self.retries < 0:
            raise ConfigError(f"--retries must be >= 0, got {self.retries}.")
        print(f"{exp.name}: {len(trials)} trials -> {self.out}")
        if self.dry_run:
            for t in trials:
                print(f"  {t.name:<52} algo={t.cfg.algo} seeds={t.cfg.seeds} steps={t.cfg.steps:,}")
            return
        statuses = run_sweep(trials, self.out, ray_address=self.ray, retries=self.retries, progress=self.progress)
        failed = [name for name, status in statuses.items() if status == "failed"]
        if failed:
            raise SweepFailed(f"{len(failed)} of {len(trials)} trials failed ({', '.join(failed)}); "
                              f"see {self.out / 'sweep.json'}, then run the same command to retry them.")


class SweepFailed(RuntimeError):
    """Some trials of a sweep failed after their retries."""


@dataclass
class Report:
    """Turn run folders (or sweep folders) into figures, summary.md and one index.html."""

    dirs: tyro.conf.Positional[tuple[Path, ...]]
    """Run or sweep folders; every run folder found inside them is included."""
    out: Path = Path("report")
    """Report folder."""
    reps: int = 2000
    """Bootstrap resamples for the 95% confidence intervals."""

    def run(self) -> None:
        from dynalab.analysis.report import make_report

        for d in self.dirs:
            if not d.is_dir():
                raise ConfigError(f"{d} is not a folder; pass run or sweep folders written by dynalab.")
        files = make_report(list(self.dirs), self.out, reps=self.reps)
        print(f"wrote {len(files)} files to {self.out}; open {self.out / 'index.html'}")


@dataclass
class Video:
    """Render videos of a run's deterministic policy (the action evaluation takes) from a checkpoint.

    Plays evaluation episodes 0..N-1 (--episodes N) of every seed (or of --seed) in envs built from
    the run's evaluation env seeds, so each starts as the run's first evaluation did, and writes
    PATH/videos/step<step>_seed<seed>_ep<e>.mp4 with one frame per env step, in real time (with
    --gif also a .gif), plus a .json with the episode's return and length. Rendering is MuJoCo's
    offscreen OpenGL: MUJOCO_GL=egl (GPU, or Mesa on CPU), osmesa (software) or glfw (a display).
    """

    dir: tyro.conf.Positional[Path]
    """Run folder written by `dynalab train`."""
    checkpoint: int | None = None
    """Env step of the checkpoint whose policy plays (default: the newest)."""
    seed: tuple[int, ...] = ()
    """Render only these seeds of the run (default: all)."""
    episodes: int = 1
    """Evaluation episodes per seed, at most the run's eval_episodes."""
    gif: bool = False
    """Also write a looping GIF of each episode (at most 50 frames per second)."""
    max_steps: int | None = None
    """Stop each episode after this many env steps (default: play it to its end)."""
    width: int = 480
    """Frame width in pixels (even)."""
    height: int = 480
    """Frame height in pixels (even)."""
    out: Path | None = None
    """Folder for the files (default: DIR/videos)."""
    progress: bool = True
    """Show a progress bar of env steps."""

    def run(self) -> None:
        from dynalab.video import render_videos

        videos = render_videos(self.dir, checkpoint=self.checkpoint, seeds=self.seed or None,
                               episodes=self.episodes, formats=("mp4", "gif") if self.gif else ("mp4",),
                               max_steps=self.max_steps, width=self.width, height=self.height, out=self.out,
                               progress=self.progress)
        for v in videos:
            member = f"seed {v.seed}" + (f" ({v.sweep_field}={v.sweep_value:g})" if v.sweep_value is not None else "")
            print(f"{member}, episode {v.episode}: return {v.episode_return:.1f} over {v.length} steps ({v.ended}), "
                  f"policy of env step {v.step:,}")
            for f in v.files[:-1]:
                print(f"  wrote {f}")


@dataclass
class ModelStudy:
    """Fit model variants offline on fixed data and report how each predicts (STFL Figs 6-7, FTFL Figs 2a, 3).

    Data: the replay buffer of a run's checkpoint (--from RUN, a checkpoint folder, or a sweep folder: one
    study per run), transitions collected on tasks with random actions (--env TASK ...), or with the policy of
    a checkpoint (--policy RUN); held out: other episodes. Variants: mbpo, ftfl, target-norm, direct (each FTFL
    switch alone), ftfl-tuned, run (the run's own model), each with +FIELD=VALUE changes (mbpo+width=400).
    --experiment first runs a preset's short runs, then studies each. All variants x model seeds are one
    vmapped program. Writes OUT/index.html, summary.md, study.json and figures/ (STFL Figs 6-7 per task with
    several datasets; FTFL Figs 2a and 3 per task).
    """

    from_: Annotated[tuple[Path, ...], tyro.conf.arg(name="from", metavar="PATH")] = ()
    """Run folders, checkpoint folders (checkpoints/step_*) or folders holding runs: study each run's replay buffer."""
    env: tuple[str, ...] = ()
    """Tasks to collect data on with uniform-random actions (one study per task)."""
    policy: Path | None = None
    """A run or checkpoint folder whose policy collects the data on its task."""
    experiment: str | None = None
    """Run this preset's trials into OUT/runs (skipping finished ones), then study each run's buffer."""
    scale: float = 1.0
    """With --experiment: multiply every env-step count by this, for a smoke run."""
    only: tuple[str, ...] = ()
    """With --experiment: run and study only the trials whose names match these glob patterns (e.g. '*Hopper*')."""
    run_set: tuple[str, ...] = ()
    """With --experiment: overrides for the preset's runs, FIELD=VALUE in TOML syntax (as `dynalab sweep --set`)."""
    variants: tuple[str, ...] = ("mbpo", "target-norm", "direct", "ftfl")
    """Model variants: mbpo, ftfl, target-norm, direct, ftfl-tuned, run; each optionally +FIELD=VALUE (mbpo+lr=1e-3)."""
    override: Annotated[tuple[str, ...], tyro.conf.arg(name="set")] = ()
    """Model overrides for every variant, FIELD=VALUE in TOML syntax, e.g. --set model.width=400 model.depth=3."""
    refit_steps: int | None = None
    """Gradient steps per fit, the cap with --early-stopping (default: each variant's, 5,000 for MBPO's model)."""
    early_stopping: bool = False
    """Fit with MBPO's early stopping (holdout checked every model.early_stopping_eval_every steps)."""
    model_seeds: int = 3
    """Model seeds per variant (0, 1, ...): initial weights, holdout split and minibatches."""
    transitions: int = 20_000
    """--env / --policy: training transitions to collect."""
    heldout_transitions: int = 5_000
    """--env / --policy: held-out transitions to collect (other episodes)."""
    heldout_fraction: float = 0.1
    """--from: fraction of the buffer's transitions held out, as whole episodes drawn at random."""
    policy_mode: Literal["explore", "exploit"] = "explore"
    """--policy: explore (the stochastic action training takes) or exploit (evaluation's deterministic action)."""
    checkpoint: int | None = None
    """Env step of the checkpoint to use (default: the newest)."""
    run_seed: int | None = None
    """Which seed of the run gives the buffer or policy (default: its first)."""
    eval_transitions: int = 10_000
    """Score on at most this many held-out transitions (a random subset), and as many training ones."""
    seed: int = 0
    """Seed of the data collection, the held-out episodes and the scored subsets."""
    reps: int = 2000
    """Bootstrap resamples for the 95% CIs over model seeds."""
    out: Path = Path("studies/model")
    """Report folder."""
    progress: bool = True
    """Show progress (with --experiment: the runs' progress bars)."""

    def run(self) -> None:
        from dynalab.model_study import Budget, model_study, run_experiment

        runs = list(self.from_)
        if self.experiment is not None:
            if runs or self.env or self.policy is not None:
                raise ConfigError("--experiment makes its own data; leave out --from, --env and --policy.")
            from dynalab import experiments

            runs = run_experiment(self.experiment, self.out / "runs", scale=self.scale, progress=self.progress,
                                  only=self.only, overrides=experiments.parse_overrides(list(self.run_set)))
        elif self.only or self.run_set or self.scale != 1.0:
            raise ConfigError("--only, --run-set and --scale choose and change the runs of --experiment; "
                              "give --experiment or leave them out.")
        files = model_study(self.out, runs=runs, envs=self.env, policy=self.policy, variants=self.variants,
                            overrides=self.override,
                            budget=Budget(self.refit_steps, True if self.early_stopping else None, self.model_seeds),
                            transitions=self.transitions, heldout_transitions=self.heldout_transitions,
                            heldout_fraction=self.heldout_fraction, policy_mode=self.policy_mode,
                            checkpoint=self.checkpoint, run_seed=self.run_seed, eval_transitions=self.eval_transitions,
                            seed=self.seed, reps=self.reps)
        print(f"wrote {len(files)} files to {self.out}; open {self.out / 'index.html'}")


COMMANDS: dict[str, type] = {"train": Train, "resume": Resume, "sweep": Sweep, "experiments": Experiments,
                             "report": Report, "video": Video, "model-study": ModelStudy,
                             "bench": Bench, "envs": Envs}


def _algo_in(args: list[str]) -> str:
    """The --algo value, read ahead of parsing so its defaults can be the parser's defaults."""
    from dynalab.algos import ALGOS

    value = "sac"
    for i, arg in enumerate(args):
        if arg.startswith("--algo="):
            value = arg.split("=", 1)[1]
        elif arg == "--algo" and i + 1 < len(args):
            value = args[i + 1]
    return value if value in ALGOS else "sac"  # tyro then rejects a bad name, listing the choices


def _usage() -> str:
    from dynalab.algos import ALGOS

    lines = ["usage: dynalab {train,resume,sweep,experiments,report,video,model-study,bench,envs} [--help] ...", "",
             "dynalab: a fast, trustworthy JAX lab for Dyna-style model-based RL.", "", "commands:"]
    lines += [f"  {name:<12} {cmd.__doc__.splitlines()[0]}" for name, cmd in COMMANDS.items()]
    lines += ["", "algorithms (--algo):"] + [f"  {name:<11} {a.summary}" for name, a in ALGOS.items()]
    lines += ["", "papers: STFL = Stealing That Free Lunch (Barkley and Fridovich-Keil, ICML 2025);",
              "        FTFL = Fixing That Free Lunch (Barkley and Fridovich-Keil, arXiv 2510.01457).",
              "        BibTeX: the README's References section; dynalab itself: CITATION.cff."]
    return "\n".join(lines)


def _multi_value_flags(cls: type, prefix: str = "--") -> dict[str, str]:
    """Every flag of a command (with its run config's flags) that takes several values (a tuple
    field), and its aliases, -> its canonical name: `--sac.hidden`, `--logger`, `--import` (alias
    `--imports`), sweep's `--only` and `--set`, ... Positional arguments are not flags."""
    import dataclasses
    import typing

    out: dict[str, str] = {}
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        flag = prefix + f.name.replace("_", "-")
        value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if "Positional" in repr(getattr(hints[f.name], "__metadata__", ())):
            continue
        if dataclasses.is_dataclass(value):  # the run flags (`cfg`, no prefix of its own) or a config group
            out.update(_multi_value_flags(type(value), prefix if f.name == "cfg" else flag + "."))
        elif isinstance(value, tuple) or any(typing.get_origin(t) is tuple or t is tuple
                                             for t in (hints[f.name], *typing.get_args(hints[f.name]))):
            names = {flag}
            for meta in getattr(hints[f.name], "__metadata__", ()):  # tyro.conf.arg(name=..., aliases=...)
                if getattr(meta, "name", None):
                    names.add(prefix + meta.name)
                names.update(getattr(meta, "aliases", None) or ())
            out.update({n: min(names, key=len) for n in names})
    return out


def _refuse_repeated_multi_value_flags(command: type, args: list[str]) -> None:
    # `--import a --import b` would silently keep only b (the last of a repeated flag wins).
    multi = _multi_value_flags(command)
    seen: dict[str, str] = {}
    for arg in args:
        flag = multi.get(arg.split("=", 1)[0])
        if flag is None:
            continue
        if flag in seen:
            raise ConfigError(f"{flag} is given twice ({seen[flag]}, {arg.split('=', 1)[0]}), and only the last would "
                              f"count; give it once with every value after it, e.g. {flag} A B.")
        seen[flag] = arg.split("=", 1)[0]


def _parse(name: str, command: type, args: list[str], default_config):
    """tyro's parse, with its boxed error report condensed into one `dynalab: error:` line."""
    _refuse_repeated_multi_value_flags(command, args)
    kwargs = {"args": args, "prog": f"dynalab {name}"}
    if name in ("train", "bench"):
        cfg = default_config(_algo_in(args), **(BENCH_SIZE if name == "bench" else {}))
        kwargs["default"] = command(cfg=cfg)
    report = io.StringIO()
    try:
        with contextlib.redirect_stderr(report):
            return tyro.cli(command, **kwargs)
    except SystemExit as e:
        if e.code in (0, None):
            raise
        print(f"dynalab: error: {_condense(report.getvalue())} (see dynalab {name} --help).", file=sys.stderr)
        sys.exit(2)


def _condense(report: str) -> str:
    """The message of a tyro error box (unicode or plain), plus its 'Perhaps you meant' flag."""
    sections: list[list[str]] = [[]]
    for line in report.splitlines():
        text = line.strip().strip("│╭╮╰╯|+").strip()
        if text and set(text) <= set("─-+= "):
            sections.append([])
        elif text and not text.startswith("─"):  # a unicode box title line
            sections[-1].append(text)
    sections = [s for s in sections if s and not s[0].startswith("For full helptext")]
    if len(sections) > 1 and len(sections[0]) == 1 and ":" not in sections[0][0]:
        sections = sections[1:]  # the box's title, e.g. "Value error"
    if not sections:
        return " ".join(report.split())
    message = " ".join(sections[0]).rstrip(".")
    for section in sections[1:]:
        if section[0].startswith("Perhaps you meant") and len(section) > 1:
            message += f"; did you mean {section[1].split()[0]}"
    return " ".join(message.split())


_INVOCATION: list[str] = []  # this process's command line after `dynalab`, for records that name it


def main(argv: list[str] | None = None) -> None:
    from dynalab.algos import default_config
    from dynalab.checkpoint import CheckpointError
    from dynalab.envs import UnknownEnvError
    from dynalab.train import CheckpointWriteError, NonFiniteError, Preempted

    argv = sys.argv[1:] if argv is None else list(argv)
    _INVOCATION[:] = argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"dynalab: error: unknown command {name!r}; choose one of: {', '.join(COMMANDS)}.", file=sys.stderr)
        sys.exit(2)
    command = COMMANDS[name]
    try:
        parsed = _parse(name, command, rest, default_config)
        parsed.run()
    except (ConfigError, UnknownEnvError, CheckpointError) as e:  # ReportError is a ConfigError
        print(f"dynalab: error: {e}", file=sys.stderr)
        sys.exit(2)
    except (NonFiniteError, CheckpointWriteError, SweepFailed) as e:
        print(f"dynalab: error: {e}", file=sys.stderr)
        sys.exit(3)
    except Preempted as e:
        print(f"dynalab: {e}", file=sys.stderr)
        sys.exit(130 if e.signal_name == "SIGINT" else 143)
    except BrokenPipeError:  # e.g. `dynalab envs | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except KeyboardInterrupt:
        print("dynalab: interrupted", file=sys.stderr)
        sys.exit(130)
