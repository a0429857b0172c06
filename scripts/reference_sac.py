"""Independent reference for the SAC learning check: Stable-Baselines3's SAC, same settings.

dynalab's learning check (tests/test_learning.py) asks Table-1 SAC at replay ratio 1 with
1,000 warm-up steps for >= 900 on gym:InvertedPendulum-v5 within 10k steps and >= 800 on
dmc:cartpole-balance within 20k. This script runs a second, unrelated implementation (PyTorch
SB3) with the same hyperparameters and evaluation protocol, so a miss can be told apart from
a dynalab bug. It needs its own environment, since torch is not a dynalab dependency:

    python3 -m venv /tmp/sb3 && /tmp/sb3/bin/pip install stable-baselines3 'gymnasium[mujoco]' \
        'mujoco>=3.3,<4' dm-control==1.0.50
    /tmp/sb3/bin/python scripts/reference_sac.py --env gym:InvertedPendulum-v5 --steps 10000 \
        --seeds 0 1 --out results/reference/sb3-sac-rr1-inverted-pendulum.json

Settings (STFL Table 1 plus the check's): Adam lr 3e-4 and eps 1.5e-4 for actor, critics
and temperature; 2x256 ReLU; batch 256; gamma 0.99; tau 0.005; initial temperature 1; target
entropy -|A|/2; uniform random actions for the warm-up; one gradient step per env step; every
1,000 steps the deterministic policy's mean return over `--eval-episodes` separate episodes.
SB3's own choices differ from dynalab's in initialisation (PyTorch default, not orthogonal),
log-std bounds ([-20, 2] clipped) and update order (target update after the actor step).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time

import gymnasium as gym
import numpy as np


class DMCEnv(gym.Env):
    """A dm_control suite task as a Gymnasium env: flattened float32 observations.

    dm_control ends every suite episode at its time limit with discount 1 (truncation);
    a discount of 0 at the last step would be a true termination.
    """

    def __init__(self, name: str) -> None:
        from dm_control import suite

        self._suite = suite
        self._domain, self._task = name.split("-", 1)
        self._env = suite.load(self._domain, self._task, task_kwargs={"random": 0})
        spec = self._env.action_spec()
        self.action_space = gym.spaces.Box(spec.minimum.astype(np.float32), spec.maximum.astype(np.float32))
        size = sum(int(np.prod(v.shape)) for v in self._env.observation_spec().values())
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (size,), np.float32)

    def _flat(self, timestep) -> np.ndarray:
        return np.concatenate([np.asarray(v, np.float32).ravel() for v in timestep.observation.values()])

    def reset(self, seed=None, options=None):
        if seed is not None:
            self._env = self._suite.load(self._domain, self._task, task_kwargs={"random": seed})
        return self._flat(self._env.reset()), {}

    def step(self, action):
        ts = self._env.step(action)
        terminated = ts.last() and ts.discount == 0.0
        truncated = ts.last() and not terminated
        return self._flat(ts), float(ts.reward), bool(terminated), bool(truncated), {}


def make_env(env_id: str) -> gym.Env:
    kind, name = env_id.split(":", 1)
    if kind == "dmc":
        return DMCEnv(name)
    return gym.wrappers.RescaleAction(gym.make(name), -1.0, 1.0)


def run(env_id: str, seed: int, steps: int, warmup: int, replay_ratio: int, eval_every: int,
        eval_episodes: int) -> dict[int, float]:
    import torch
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    torch.set_num_threads(1)
    env, eval_env = make_env(env_id), make_env(env_id)
    curve: dict[int, float] = {}

    class Evaluate(BaseCallback):
        def _on_step(self) -> bool:
            t = self.num_timesteps
            if t % eval_every:
                return True
            returns = []
            for episode in range(eval_episodes):
                obs, _ = eval_env.reset(seed=1_000_000 + 1000 * seed + episode + t)
                done, total = False, 0.0
                while not done:
                    action, _ = self.model.predict(obs, deterministic=True)
                    obs, reward, terminated, truncated, _ = eval_env.step(action)
                    total, done = total + reward, terminated or truncated
                returns.append(total)
            curve[t] = float(np.mean(returns))
            alpha = float(torch.exp(self.model.log_ent_coef).item())
            print(f"{env_id} seed {seed} step {t}: eval return {curve[t]:.1f} (temperature {alpha:.3f})",
                  flush=True)
            return True

    model = SAC(
        "MlpPolicy", env, learning_rate=3e-4, buffer_size=steps, learning_starts=warmup, batch_size=256,
        tau=0.005, gamma=0.99, train_freq=1, gradient_steps=replay_ratio, ent_coef="auto_1.0",
        target_entropy=-0.5 * env.action_space.shape[0],
        policy_kwargs=dict(net_arch=[256, 256], optimizer_kwargs=dict(eps=1.5e-4)),
        seed=seed, device="cpu",
    )
    model.learn(steps, callback=Evaluate())
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", required=True, help="gym:<Name>-v5 or dmc:<domain>-<task>")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--warmup-steps", type=int, default=1000)
    parser.add_argument("--replay-ratio", type=int, default=1)
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--out", help="write the curves and provenance here as JSON")
    args = parser.parse_args()

    start = time.time()
    curves = {seed: run(args.env, seed, args.steps, args.warmup_steps, args.replay_ratio, args.eval_every,
                        args.eval_episodes) for seed in args.seeds}
    steps = sorted(next(iter(curves.values())))
    mean = {t: float(np.mean([c[t] for c in curves.values()])) for t in steps}
    print("mean over seeds by step: " + ", ".join(f"{t}: {v:.1f}" for t, v in mean.items()))
    print(f"best mean {max(mean.values()):.1f} at step {max(mean, key=mean.get)}")
    if args.out:
        import stable_baselines3
        import torch

        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        record = {
            "command": " ".join(["python", *sys.argv]),
            "commit": commit,
            "date": datetime.date.today().isoformat(),
            "device": f"CPU ({platform.machine()}, {platform.processor() or 'unknown'}), torch threads 1",
            "library": f"stable-baselines3 {stable_baselines3.__version__}, torch {torch.__version__}",
            "settings": vars(args),
            "seconds": round(time.time() - start, 1),
            "eval_return_by_seed": {str(s): {str(t): v for t, v in c.items()} for s, c in curves.items()},
            "eval_return_mean": {str(t): v for t, v in mean.items()},
            "best_mean": max(mean.values()),
        }
        with open(args.out, "w") as f:
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
