"""The training loop: a thin host shell that steps the simulators and calls compiled learners.

The order of all work at env step k (k = env steps taken, counted from 1), defined here only:

1. act: a uniform random action while k <= warmup_steps, else the policy's;
2. step every simulator; a seed whose simulator diverged ends its episode, and its transition
   is marked invalid so that it never enters a buffer (counted per seed as `env/diverged`);
3. the learner call: store the transitions, and after warm-up learn (one compiled call);
4. "measure" hooks due at k (diagnostics): they see the learner that trained through step k;
5. evaluation, if k is a multiple of `eval_every` or the last step;
6. logging, if k is a multiple of `log_every` or the last step: step k's update metrics and
   the measure hooks' metrics;
7. "maintain" hooks due at k, in the learner's order (agent reset, model reset, model fit):
   they change what step k + 1 starts from; their metrics are written at step k; resets never
   run on the last step;
8. a checkpoint, if due: it holds the state that step k + 1 starts from.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from dynalab import __version__, checkpoint, rundir, trackers
from dynalab import config as config_lib
from dynalab.algos import ALGOS, make_learner
from dynalab.algos.base import Checked, Metrics, SeedBatch, seed_roots
from dynalab.config import ConfigError, TrainConfig
from dynalab.envs import BatchEnv, StepResult, env_spec
from dynalab.metrics import MetricsWriter
from dynalab.types import Transition, state_bits


def train_env_seed(seed: int) -> int:
    return int(np.random.SeedSequence((seed, 0)).generate_state(1)[0])


def eval_env_seed(seed: int, episode: int) -> int:
    return int(np.random.SeedSequence((seed, 1, episode)).generate_state(1)[0])


class Timer:
    """Wall-clock seconds accumulated per phase since the last `drain`."""

    def __init__(self):
        self.total: dict[str, float] = defaultdict(float)

    def add(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.total[name] += now - since
        return now

    def drain(self) -> dict[str, float]:
        out, self.total = dict(self.total), defaultdict(float)
        return out


class NonFiniteError(RuntimeError):
    """A NaN or Inf reached a loss, parameter or observation; the message is one sentence."""

    def __init__(self, step: int, member: str, quantities: list[str], offending: dict[str, np.ndarray]):
        super().__init__(step, member, quantities)
        self.step, self.member, self.offending = step, member, offending
        self.quantity, self.others = quantities[0], quantities[1:]
        self.saved_to: Path | None = None

    def __str__(self) -> str:
        more = f" (and {len(self.others)} more, e.g. {self.others[0]})" if self.others else ""
        where = (f"; saved the last finite state and the offending batch to {self.saved_to}"
                 if self.saved_to else "")
        return f"a NaN or Inf appeared in {self.quantity}{more} of {self.member} at env step {self.step}{where}."


def _arrays(prefix: str, tree) -> dict[str, np.ndarray]:
    """A pytree of arrays as flat `prefix/path` -> numpy entries (for .npz files)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {f"{prefix}{jax.tree_util.keystr(path)}": np.asarray(x) for path, x in leaves}


class Trainer:
    """Owns the envs, the compiled learner and its state; `step()` advances every seed once."""

    def __init__(self, cfg: TrainConfig):
        config_lib.validate(cfg, list(ALGOS))
        self.matmul_precision = config_lib.apply_matmul_precision(cfg)  # before anything is traced
        self.cfg = cfg
        self.members = cfg.members()
        self.seeds = [seed for seed, _ in self.members]  # one entry per member of the program
        self.spec = env_spec(cfg.env)
        self._base = make_learner(cfg, self.spec)
        self._learners = [self._base]  # every learner built, so that close() releases what they hold
        self.batch = SeedBatch(self._learner_for, self.spec.action_dim,
                               [0.0 if v is None else v for _, v in self.members])
        workers = dict(workers=cfg.env_workers, parallel=cfg.env_parallel, imports=cfg.imports)
        self.envs = BatchEnv(cfg.env, [train_env_seed(s) for s in self.seeds], **workers)
        self.eval_envs = BatchEnv(
            cfg.env, [eval_env_seed(s, e) for s in self.seeds for e in range(cfg.eval_episodes)], **workers
        )
        self.roots = seed_roots(self.seeds)  # a seed draws the same keys whatever value it runs with
        try:
            rundir.check_memory(jax.eval_shape(self.batch.init_state, self.roots), len(self.members),
                                rundir.device_free_bytes())
        except ConfigError:
            self.close()
            raise
        self.state = self.batch.init_state(self.roots)
        self.obs = self.envs.reset()
        self.env_step = 0  # env steps taken by each seed so far
        self.timer = Timer()
        self.last_metrics: Metrics = {}  # the latest update's metrics
        self.diverged = np.zeros(len(self.members), np.int64)  # diverged env steps per member, this interval
        self._divergence_warnings = 0

    def _learner_for(self, value):
        """The learner of one member: with a sweep, built around that member's (traced) value."""
        if not self.cfg.sweep_field or value is None:
            return self._base
        learner = make_learner(config_lib.with_field(self.cfg, self.cfg.sweep_field, value), self.spec)
        self._learners.append(learner)
        return learner

    def member_name(self, i: int) -> str:
        seed, value = self.members[i]
        return f"seed {seed}" + (f" ({self.cfg.sweep_field}={value})" if value is not None else "")

    def step(self) -> StepResult:
        """Steps 1-3 of the module docstring's order for every member; advances `env_step`."""
        t0 = time.perf_counter()
        learning = self.env_step >= self.cfg.warmup_steps
        if learning:
            action = self.batch.explore(self.state, self.obs, self.roots, self.env_step)
        else:
            action = self.batch.random_action(self.roots, self.env_step)
        action = np.asarray(action)
        t0 = self.timer.add("learner", t0)
        sim_state = state_bits(self.envs.get_states()) if self.batch.learner.needs_sim_state else None
        res = self.envs.step(action)
        transition = Transition(
            obs=self.obs,
            action=action,
            reward=res.reward,
            next_obs=res.next_obs,
            discount=(~res.terminated).astype(np.float32),
            sim_state=sim_state,
        )
        t0 = self.timer.add("env", t0)
        step = self.env_step + 1
        for quantity, value in (("reward", res.reward), ("observation", res.next_obs), ("reset observation", res.obs)):
            bad = ~np.isfinite(value.reshape(len(self.seeds), -1)).all(axis=1)
            if bad.any():
                raise NonFiniteError(step, self.member_name(int(np.argmax(bad))), [quantity], _arrays("transition", transition))
        valid = ~res.diverged
        if not valid.all():
            self._warn_diverged(step, np.flatnonzero(res.diverged))
            self.diverged += res.diverged
        if learning:
            self.state, self.last_metrics, checked = self.batch.update(
                self.state, transition, valid, self.roots, self.env_step)
            self._check(checked, step, transition)
        else:
            self.state = self.batch.observe(self.state, transition, valid)
        self.obs = res.obs
        self.env_step = step
        jax.block_until_ready(self.state)
        self.timer.add("learner", t0)
        return res

    def _warn_diverged(self, step: int, members: np.ndarray) -> None:
        for i in members:
            self._divergence_warnings += 1
            if self._divergence_warnings <= 10:
                more = "" if self._divergence_warnings < 10 else " Further divergences are only counted."
                tqdm.write(
                    f"dynalab: warning: the simulator of {self.member_name(int(i))} diverged at env step {step}; "
                    "its episode ended and the transition was dropped (counted as env/diverged in metrics.csv); "
                    f"if this repeats, check the task's actions and physics.{more}")

    def run_hooks(self, phase: str) -> Metrics:
        """Run the learner's hooks of `phase` due at the current env step; returns their metrics."""
        metrics: Metrics = {}
        for hook in self.batch.due_hooks(self.env_step, phase):
            t0 = time.perf_counter()
            self.state, hook_metrics, checked = self.batch.run_hook(hook, self.state, self.roots, self.env_step)
            self._check(checked, self.env_step, None)
            jax.block_until_ready(self.state)
            self.timer.add(hook.name, t0)
            metrics.update(hook_metrics)
        return metrics

    def _check(self, checked: Checked, step: int, transition: Transition | None) -> None:
        found = checked.first()
        if found is None:
            return
        seed, quantities = found
        offending = _arrays("transition", transition) if transition is not None else {}
        if checked.batch is not None:
            offending.update(_arrays("minibatch", checked.batch))
        # The guard kept the bad seed's pre-call learner state (its buffers do hold this step's data);
        # the caller saves it with the env-step counter not yet advanced.
        raise NonFiniteError(step, self.member_name(seed), quantities, offending)

    def evaluate(self) -> np.ndarray:
        """Undiscounted return of one deterministic episode per eval env: shape (seeds, episodes)."""
        t0 = time.perf_counter()
        n, e = len(self.seeds), self.cfg.eval_episodes
        obs = self.eval_envs.reset()
        returns = np.zeros(n * e)
        done = np.zeros(n * e, dtype=bool)
        while not done.all():
            action = np.asarray(self.batch.exploit(self.state, obs.reshape(n, e, -1))).reshape(n * e, -1)
            res = self.eval_envs.step(action)
            returns += np.where(done, 0.0, res.reward)
            done |= res.terminated | res.truncated | res.diverged
            obs = res.obs
        self.timer.add("eval", t0)
        return returns.reshape(n, e)

    def host_state(self) -> dict[str, np.ndarray]:
        """Everything outside the learner pytree that the next step depends on."""
        out = {f"train/{k}": v for k, v in self.envs.snapshot().items()}
        out.update({f"eval/{k}": v for k, v in self.eval_envs.snapshot().items()})
        out.update({f"last_metrics/{k}": np.asarray(v) for k, v in self.last_metrics.items()})
        out["obs"], out["env_step"] = self.obs, np.asarray(self.env_step)
        return out

    def load_host_state(self, host: dict[str, np.ndarray]) -> None:
        part = lambda prefix: {k[len(prefix):]: v for k, v in host.items() if k.startswith(prefix)}  # noqa: E731
        self.envs.restore(part("train/"))
        self.eval_envs.restore(part("eval/"))
        self.last_metrics = {k: jax.numpy.asarray(v) for k, v in part("last_metrics/").items()}
        self.obs, self.env_step = host["obs"], int(host["env_step"])

    def write_checkpoint(self, folder: Path, metrics_csv: Path | None, loop: dict | None = None,
                         extra_host: dict | None = None, extra_meta: dict | None = None,
                         target: str | None = None, writer: checkpoint.Writer | None = None,
                         after: Callable[[], None] | None = None) -> Path:
        """Write this trainer's learner and host state (plus the loop's bookkeeping) as a checkpoint;
        returns its path. With `writer` (not for a `target`), the files are written in the
        background once host copies are taken, and `after` runs when they are in place."""
        host = {**self.host_state(), **{f"loop/{k}": np.asarray(v) for k, v in (loop or {}).items()},
                **(extra_host or {})}
        meta = {"dynalab": __version__, "config": config_lib.to_dict(self.cfg), "seeds": self.seeds,
                **(extra_meta or {})}
        if writer is not None and target is None:
            return writer.submit(folder, self.env_step, self.state, host, meta, metrics_csv, after)
        path = checkpoint.write(folder, self.env_step, self.state, host, meta, metrics_csv, target=target)
        if after is not None:
            after()
        return path

    def close(self) -> None:
        """Close the envs and what the learners hold outside their state (e.g. the perfect model's
        simulators); worker processes stop once nothing uses them."""
        self.envs.close()
        self.eval_envs.close()
        for learner in self._learners:
            learner.close()


def _mean_finished(returns: np.ndarray) -> np.ndarray:
    """Per-seed mean over episodes finished in the interval (NaN where none finished)."""
    finished = ~np.isnan(returns)
    count = finished.sum(axis=0)
    total = np.where(finished, returns, 0.0).sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


class LineProgress:
    """Progress for logs (stderr not a terminal: CI, nohup, Ray, cluster logs): one short line every
    `every` percent of the run instead of hundreds of carriage-return redraws. The subset of tqdm's
    interface the loop uses."""

    def __init__(self, total: int, initial: int, desc: str, stream=None, every: float = 5.0):
        self.total, self.n, self.desc, self.stream = total, initial, desc, stream or sys.stderr
        self.step_size = max(1, int(total * every / 100))
        self.next = (initial // self.step_size + 1) * self.step_size
        self.postfix: dict[str, str] = {}
        self.start, self.start_n = time.perf_counter(), initial

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n >= self.next or self.n == self.total:
            self.next = (self.n // self.step_size + 1) * self.step_size
            rate = (self.n - self.start_n) / max(time.perf_counter() - self.start, 1e-9)
            extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
            print(f"{self.desc}: {100 * self.n / self.total:.0f}% ({self.n:,}/{self.total:,} steps, "
                  f"{rate:.1f} steps/s{extra})", file=self.stream, flush=True)

    def set_postfix(self, refresh: bool = True, **values) -> None:
        self.postfix = {k: str(v) for k, v in values.items()}

    def write(self, line: str) -> None:
        print(line, flush=True)  # to stdout, as tqdm.write

    def close(self) -> None:
        """Nothing to release: every line is flushed when printed (tqdm's bar needs this call)."""


def progress_bar(total: int, initial: int, desc: str, enabled: bool, stream=None):
    """tqdm's bar on a terminal, `LineProgress` when the output is a file or a pipe, nothing if disabled."""
    stream = stream or sys.stderr
    if enabled and not stream.isatty():
        return LineProgress(total, initial, desc, stream)
    return tqdm(total=total, initial=initial, unit="step", disable=not enabled, dynamic_ncols=True, desc=desc,
                file=stream)


class _Stop:
    """SIGTERM (preemption) or a first Ctrl-C (SIGINT) asks the loop to checkpoint and stop after the
    current step. After a first Ctrl-C the previous SIGINT handler is back, so a second one
    interrupts at once (losing the steps since the last checkpoint)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self.signal_name = ""
        self._old: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, self._old[signal.SIGINT])

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


class Preempted(RuntimeError):
    """The run stopped on SIGTERM or Ctrl-C after writing a checkpoint; `signal_name` says which."""

    def __init__(self, message: str, signal_name: str = "SIGTERM"):
        super().__init__(message)
        self.signal_name = signal_name


def train(cfg: TrainConfig, out: Path, progress: bool = True, allow_config_change: bool = False) -> np.ndarray:
    """Run (or resume) an experiment in `out`; returns the final evaluation returns (seeds, episodes).

    A folder holding a checkpoint of the same config is resumed from its newest checkpoint:
    metrics.csv is rolled back to that checkpoint's copy, and every later row is recomputed,
    so the file ends up as if the run had never stopped (timings aside).
    """
    config_lib.validate(cfg, list(ALGOS))
    trackers.require(cfg)
    ignored = config_lib.ignored_settings(cfg)
    if ignored:
        print(f"dynalab: warning: --algo {cfg.algo} does not use {', '.join(ignored)}; they have no effect on this "
              "run (leave them at their defaults to silence this).", file=sys.stderr)
    plan = rundir.plan_run(cfg, out, allow_config_change)
    cfg = plan.cfg
    if plan.finished:
        raise ConfigError(
            f"{out} holds a finished run of {cfg.steps} steps; pass a larger --steps with --allow-config-change "
            "to extend it, or choose a new --out."
        )
    trainer = Trainer(cfg)
    ckpts = out / "checkpoints"
    try:
        rundir.check_disk(out, cfg, checkpoint.nbytes(trainer.state))
        rundir.check_writable(out)
        checkpoint.remove_partial(ckpts)
        loop = {"episode_returns": np.zeros((0, len(trainer.members))), "interval_step": np.asarray(0)}
        if plan.checkpoint is None:
            config_lib.save(cfg, out / "config.json")
            rundir.write_run_meta(out, None, trainer.matmul_precision)
            (out / "metrics.csv").unlink(missing_ok=True)  # header-only leftovers of a run killed at once
        else:
            trainer.state = checkpoint.read_learner(plan.checkpoint, trainer.state)
            host = checkpoint.read_host(plan.checkpoint)
            trainer.load_host_state({k: v for k, v in host.items() if not k.startswith("loop/")})
            loop = {k[len("loop/"):]: v for k, v in host.items() if k.startswith("loop/")}
            tmp = out / ".metrics.csv.tmp"
            shutil.copyfile(plan.checkpoint / "metrics.csv", tmp)
            os.replace(tmp, out / "metrics.csv")
            if allow_config_change:
                config_lib.save(cfg, out / "config.json")
            rundir.write_run_meta(out, trainer.env_step, trainer.matmul_precision)
            print(f"dynalab: resuming {out} from its checkpoint at env step {trainer.env_step:,} of {cfg.steps:,} "
                  "(metrics.csv rolled back to it; later rows are recomputed).", file=sys.stderr)
        sinks = trackers.open_sinks(cfg, out, trainer.members)  # after the rollback: they catch up with metrics.csv
    except OSError as e:
        trainer.close()
        raise ConfigError(f"cannot write to run folder {out}: {e.strerror}.") from None
    except BaseException:
        trainer.close()
        raise
    return _loop(trainer, cfg, out, loop, progress, sinks)


def _save(trainer: Trainer, cfg: TrainConfig, out: Path, loop: dict, writer: MetricsWriter,
          saver: checkpoint.Writer, wait: bool) -> None:
    """Checkpoint the run, then prune: written in the background by `saver` (the loop goes on
    once host copies are taken), or completely before returning with `wait` (the last step, a
    stop). Raises CheckpointWriteError for this write or an earlier background one that failed."""
    folder = out / "checkpoints"
    with _checkpoint_errors(saver, trainer.env_step, folder):
        trainer.write_checkpoint(folder, writer.path, loop, writer=saver,
                                 after=lambda: checkpoint.prune(folder, cfg.keep_checkpoints))
        if wait:
            saver.wait()


@contextlib.contextmanager
def _checkpoint_errors(saver: checkpoint.Writer, step: int, folder: Path):
    """OSError of a checkpoint write (this one, or `saver`'s failed background write) as a
    one-sentence CheckpointWriteError naming the step it was writing."""
    try:
        yield
    except OSError as e:
        failed = saver.failed_step if saver.failed_step is not None else step
        saver.failed_step = None
        raise CheckpointWriteError(
            f"could not write the checkpoint of step {failed} to {folder} ({e.strerror}); "
            "earlier checkpoints are intact: free space and run the same command again to resume."
        ) from None


class CheckpointWriteError(RuntimeError):
    """Writing a checkpoint failed (disk full, I/O error); the message is one sentence."""


def _save_nonfinite(trainer: Trainer, cfg: TrainConfig, out: Path, err: NonFiniteError, writer: MetricsWriter) -> Path:
    info = {"step": err.step, "member": err.member, "quantity": err.quantity, "others": err.others}
    return trainer.write_checkpoint(out, writer.path, extra_host={f"offending/{k}": v for k, v in err.offending.items()},
                                    extra_meta={"nonfinite": info}, target="nonfinite")


def _loop(trainer: Trainer, cfg: TrainConfig, out: Path, loop: dict, progress: bool,
          sinks: list[trackers.Tracker]) -> np.ndarray:
    sweep = {cfg.sweep_field: [v for _, v in trainer.members]} if cfg.sweep_field else None
    writer = MetricsWriter(out / "metrics.csv", trainer.seeds, sweep, sinks)
    episode_returns = list(loop["episode_returns"])
    interval_start, interval_step = time.perf_counter(), int(loop["interval_step"])
    if "diverged" in loop:
        trainer.diverged = np.asarray(loop["diverged"], np.int64).copy()
    bar = progress_bar(cfg.steps, trainer.env_step, f"{cfg.algo} {cfg.env}", progress)
    returns = np.full((len(trainer.members), cfg.eval_episodes), np.nan)
    loop_state = lambda: {"episode_returns": np.asarray(episode_returns).reshape(-1, len(trainer.members)),  # noqa: E731
                          "interval_step": interval_step, "diverged": trainer.diverged}

    def guarded(fn, *args):
        try:
            return fn(*args)
        except NonFiniteError as e:
            e.saved_to = _save_nonfinite(trainer, cfg, out, e, writer)
            raise

    saver = checkpoint.Writer()
    try:
        with _Stop() as stop:
            if cfg.checkpoint_every and trainer.env_step == 0:
                _save(trainer, cfg, out, loop_state(), writer, saver, wait=False)  # resumable from the start
            while trainer.env_step < cfg.steps:
                with _checkpoint_errors(saver, trainer.env_step, out / "checkpoints"):
                    saver.check()  # a background write that failed stops the run at once
                res = guarded(trainer.step)
                bar.update(1)
                if np.any(res.episode_length > 0):
                    episode_returns.append(res.episode_return)
                step = trainer.env_step
                measured = guarded(trainer.run_hooks, "measure")
                if step % cfg.eval_every == 0 or step == cfg.steps:
                    returns = trainer.evaluate()
                    writer.write(step, {"eval/return": returns.mean(axis=1), "eval/return_std": returns.std(axis=1)})
                    bar.set_postfix(eval=f"{returns.mean():.1f}", refresh=False)
                    bar.write(f"step {step}: eval return per seed {np.round(returns.mean(axis=1), 1).tolist()}")
                if step % cfg.log_every == 0 or step == cfg.steps:
                    now = time.perf_counter()
                    n = step - interval_step
                    values: dict[str, np.ndarray | float] = {
                        k: np.asarray(v) for k, v in {**trainer.last_metrics, **measured}.items()
                    }
                    values.update({f"time/{k}": v / n for k, v in trainer.timer.drain().items()})
                    values["time/env_steps_per_sec"] = n / (now - interval_start)
                    values["env/diverged"] = trainer.diverged.astype(np.float64)
                    if episode_returns:
                        values["train/episode_return"] = _mean_finished(np.stack(episode_returns))
                    writer.write(step, values)
                    episode_returns.clear()
                    trainer.diverged[:] = 0
                    interval_start, interval_step = now, step
                    bar.set_postfix(sps=f"{values['time/env_steps_per_sec']:.1f}", refresh=False)
                elif measured:
                    writer.write(step, measured)
                maintained = guarded(trainer.run_hooks, "maintain")
                if maintained:
                    writer.write(step, maintained)
                if cfg.checkpoint_every and (step % cfg.checkpoint_every == 0 or step == cfg.steps or stop.requested):
                    t0 = time.perf_counter()
                    _save(trainer, cfg, out, loop_state(), writer, saver, wait=step == cfg.steps or stop.requested)
                    trainer.timer.add("checkpoint", t0)  # what the loop waited for, not the background write
                writer.end_step(step)
                if stop.requested:
                    raise Preempted(f"stopped by {stop.signal_name} at env step {step}" + (
                        " after checkpointing; run the same command to resume." if cfg.checkpoint_every else "."),
                        stop.signal_name)
    except BaseException:
        _finish_quietly(saver)
        raise
    finally:
        bar.close()
        writer.close()
        trainer.close()
    return returns


def _finish_quietly(saver: checkpoint.Writer) -> None:
    """On the way out of a run that failed: let a background checkpoint write finish (so that it
    is complete or cleaned up on the next start), and report on stderr if it failed too."""
    try:
        saver.wait()
    except BaseException as e:  # noqa: BLE001 - the run's own error is the one raised
        print(f"dynalab: the checkpoint write of step {saver.failed_step} also failed: {e}", file=sys.stderr)
