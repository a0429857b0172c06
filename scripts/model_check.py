"""Model check (issue 3): MBPO's model vs FTFL's on a fixed dataset of real transitions.

Collects real `dmc:humanoid-stand` transitions (uniform-random actions: the data every run
starts from), fits the STFL MBPO model (residual targets, no target normalisation) and the
FTFL model (target unit normalisation + direct next-state prediction) with the same training
budget on the same data, and reports held-out reward and next-state errors.

    python scripts/model_check.py --transitions 20000 --refit-steps 2000 --out results/model_check.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

import dynalab  # noqa: F401  (CPU dispatch setting)
from dynalab import replay
from dynalab.envs import make_env
from dynalab.models import ensemble
from dynalab.models.ensemble import ModelConfig
from dynalab.types import Transition


def collect(env_id: str, n: int, seed: int) -> Transition:
    env, rng = make_env(env_id, seed), np.random.default_rng(seed)
    rows = []
    obs = env.reset()
    while len(rows) < n:
        a = rng.uniform(-1, 1, env.spec.action_dim).astype(np.float32)
        o2, r, term, trunc = env.step(a)
        rows.append((obs, a, np.float32(r), o2, np.float32(not term)))
        obs = env.reset() if term or trunc else o2
    return Transition(*[np.stack(c) for c in zip(*rows)])


def evaluate(cfg: ModelConfig, state, test: Transition) -> dict:
    mean, _ = ensemble.predict(cfg, state, jnp.asarray(test.obs), jnp.asarray(test.action))
    elite_mean = jnp.mean(mean[state.elites], axis=0)
    next_obs, reward = ensemble.split_prediction(cfg, jnp.asarray(test.obs), elite_mean)
    err = np.asarray(next_obs) - test.next_obs
    return {
        "reward_mse": float(np.mean((np.asarray(reward) - test.reward) ** 2)),
        "reward_var_of_data": float(np.var(test.reward)),
        "next_state_mse": float(np.mean(err**2)),
        "next_state_pct_error": float(np.mean(100 * np.linalg.norm(err, axis=1) / np.maximum(np.linalg.norm(test.next_obs, axis=1), 1e-8))),
        "delta_pct_error": float(np.mean(100 * np.linalg.norm(err, axis=1)
                                         / np.maximum(np.linalg.norm(test.next_obs - test.obs, axis=1), 1e-8))),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="dmc:humanoid-stand")
    p.add_argument("--transitions", type=int, default=20_000)
    p.add_argument("--test-transitions", type=int, default=5_000)
    p.add_argument("--refit-steps", type=int, default=2_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args()

    train_data = collect(args.env, args.transitions, args.seed)
    test_data = collect(args.env, args.test_transitions, args.seed + 1000)  # other episodes
    obs_dim, act_dim = train_data.obs.shape[1], train_data.action.shape[1]
    buf = replay.init_buffer(args.transitions, jax.tree.map(lambda x: jnp.asarray(x[0]), train_data))
    buf = replay.add_batch(buf, jax.tree.map(jnp.asarray, train_data))

    base = ModelConfig(refit_steps=args.refit_steps)
    variants = {
        "mbpo": base,
        "ftfl": dataclasses.replace(base, target_norm=True, direct_next_state=True),
        "target_norm_only": dataclasses.replace(base, target_norm=True),
        "direct_only": dataclasses.replace(base, direct_next_state=True),
    }
    results = {}
    for name, cfg in variants.items():
        t0 = time.perf_counter()
        state = ensemble.init(jax.random.PRNGKey(args.seed), obs_dim, act_dim, cfg)
        state, metrics = jax.jit(lambda s, b, k, cfg=cfg: ensemble.fit(cfg, s, b, k))(state, buf, jax.random.PRNGKey(1))
        results[name] = {**evaluate(cfg, state, test_data), "fit_seconds": time.perf_counter() - t0,
                         "holdout_loss": float(metrics["model/holdout_loss"])}
        print(name, {k: round(v, 5) for k, v in results[name].items()}, flush=True)
    record = {"command": "python scripts/model_check.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "device": str(jax.devices()[0]), "env": args.env,
              "data": "uniform-random actions; test set from other episodes", "results": results}
    print(f"{'model':<18}{'reward MSE':>12}{'next-state MSE':>16}{'next-state %err':>17}{'delta %err':>12}")
    for name, r in results.items():
        print(f"{name:<18}{r['reward_mse']:>12.5f}{r['next_state_mse']:>16.5f}{r['next_state_pct_error']:>17.2f}{r['delta_pct_error']:>12.1f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
