"""The training loop: a thin host shell that steps the simulators and calls compiled learners."""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from dynalab import __version__
from dynalab import config as config_lib
from dynalab.algos import ALGOS, make_learner
from dynalab.algos.base import Metrics, SeedBatch, seed_roots
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


class Trainer:
    """Owns the envs, the compiled learner and its state; `step()` advances every seed once."""

    def __init__(self, cfg: TrainConfig):
        config_lib.validate(cfg, list(ALGOS))
        self.cfg = cfg
        self.seeds = cfg.seed_list()
        self.spec = env_spec(cfg.env)
        self.batch = SeedBatch(make_learner(cfg, self.spec), self.spec.action_dim)
        self.envs = BatchEnv(cfg.env, [train_env_seed(s) for s in self.seeds])
        self.eval_envs = BatchEnv(
            cfg.env, [eval_env_seed(s, e) for s in self.seeds for e in range(cfg.eval_episodes)]
        )
        self.roots = seed_roots(self.seeds)
        self.state = self.batch.init(self.roots)
        self.obs = self.envs.reset()
        self.env_step = 0  # env steps taken by each seed so far
        self.timer = Timer()
        self.last_metrics: Metrics = {}

    def step(self) -> StepResult:
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
        if learning:
            self.state, self.last_metrics = self.batch.update(self.state, transition, self.roots, self.env_step)
        else:
            self.state = self.batch.observe(self.state, transition)
        self.obs = res.obs
        self.env_step += 1
        for hook in self.batch.due_hooks(self.env_step):
            jax.block_until_ready(self.state)  # charge pending learner work to the learner, not the hook
            t0 = self.timer.add("learner", t0)
            self.state, hook_metrics = self.batch.run_hook(hook, self.state, self.roots, self.env_step)
            jax.block_until_ready(self.state)
            t0 = self.timer.add(hook.name, t0)
            self.last_metrics = {**self.last_metrics, **hook_metrics}
        self.timer.add("learner", t0)
        return res

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
            done |= res.terminated | res.truncated
            obs = res.obs
        self.timer.add("eval", t0)
        return returns.reshape(n, e)

    def close(self) -> None:
        self.envs.close()
        self.eval_envs.close()


def _mean_finished(returns: np.ndarray) -> np.ndarray:
    """Per-seed mean over episodes finished in the interval (NaN where none finished)."""
    finished = ~np.isnan(returns)
    count = finished.sum(axis=0)
    total = np.where(finished, returns, 0.0).sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def prepare_run_dir(out: Path, cfg: TrainConfig) -> None:
    if (out / "metrics.csv").exists():
        raise ConfigError(f"run folder {out} already holds a run (metrics.csv); choose a new --out.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        resolved = dataclasses.replace(cfg, buffer_capacity=cfg.capacity)
        config_lib.save(resolved, out / "config.json")
        meta = {
            "dynalab": __version__,
            "jax": jax.__version__,
            "devices": [str(d) for d in jax.devices()],
            "python": platform.python_version(),
            "command": sys.argv,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (out / "run.json").write_text(json.dumps(meta, indent=2) + "\n")
    except OSError as e:
        raise ConfigError(f"cannot write to run folder {out}: {e.strerror}.") from None


def train(cfg: TrainConfig, out: Path, progress: bool = True) -> np.ndarray:
    """Run a whole experiment into `out`; returns the final evaluation returns (seeds, episodes)."""
    config_lib.validate(cfg, list(ALGOS))
    prepare_run_dir(out, cfg)
    trainer = Trainer(cfg)
    writer = MetricsWriter(out / "metrics.csv", trainer.seeds)
    episode_returns: list[np.ndarray] = []
    interval_start, interval_step = time.perf_counter(), 0
    bar = tqdm(total=cfg.steps, unit="step", disable=not progress, dynamic_ncols=True, desc=f"{cfg.algo} {cfg.env}")
    returns = np.full((cfg.seeds, cfg.eval_episodes), np.nan)
    try:
        while trainer.env_step < cfg.steps:
            res = trainer.step()
            bar.update(1)
            if np.any(res.episode_length > 0):
                episode_returns.append(res.episode_return)
            step = trainer.env_step
            if step % cfg.eval_every == 0 or step == cfg.steps:
                returns = trainer.evaluate()
                writer.write(step, {"eval/return": returns.mean(axis=1), "eval/return_std": returns.std(axis=1)})
                bar.set_postfix(eval=f"{returns.mean():.1f}", refresh=False)
                bar.write(f"step {step}: eval return per seed {np.round(returns.mean(axis=1), 1).tolist()}")
            if step % cfg.log_every == 0 or step == cfg.steps:
                now = time.perf_counter()
                n = step - interval_step
                values: dict[str, np.ndarray | float] = {
                    k: np.asarray(v) for k, v in trainer.last_metrics.items()
                }
                values.update({f"time/{k}": v / n for k, v in trainer.timer.drain().items()})
                values["time/env_steps_per_sec"] = n / (now - interval_start)
                if episode_returns:
                    values["train/episode_return"] = _mean_finished(np.stack(episode_returns))
                writer.write(step, values)
                episode_returns.clear()
                interval_start, interval_step = now, step
                bar.set_postfix(sps=f"{values['time/env_steps_per_sec']:.1f}", refresh=False)
    finally:
        bar.close()
        writer.close()
        trainer.close()
    return returns
