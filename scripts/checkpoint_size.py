"""Checkpoint sizes with full buffers: the size a run's checkpoints reach once its buffers are full.

The learner state is never built: `jax.eval_shape` of the seed-batched init gives the shape and
dtype of every leaf, so nothing is compiled or allocated. Sizes are array bytes of a checkpoint
with every buffer block written (`learner.npz` plus its buffer segment, the checkpoint's bulk;
`host.npz`, `meta.json` and the `metrics.csv` copy add well under 1 MB per seed), split into
the real replay buffer, MBPO's synthetic buffer and everything else (networks, optimiser states, temperature, model ensemble, normalisers).

    python scripts/checkpoint_size.py [--env dmc:humanoid-stand] [--steps 500000]
"""

from __future__ import annotations

import argparse
import dataclasses
import os

os.environ.setdefault("MUJOCO_GL", "egl")  # no display needed

import jax

import dynalab  # noqa: F401  (CPU dispatch setting)
from dynalab import checkpoint
from dynalab.algos import default_config, make_learner
from dynalab.algos.base import seed_roots
from dynalab.envs import env_spec
from dynalab.replay import ReplayBuffer


def _is_buffer(x) -> bool:
    return isinstance(x, ReplayBuffer)


def sizes(algo: str, env: str, steps: int, seeds: int, capacity: int | None) -> tuple[dict[str, int], int]:
    """Bytes of {replay, synthetic, other} with full buffers, and the replay capacity used."""
    cfg = default_config(algo, env=env, steps=steps, seeds=seeds)
    if capacity is not None:
        cfg = dataclasses.replace(cfg, buffer_capacity=capacity)
    learner = make_learner(cfg, env_spec(env))
    state = jax.eval_shape(jax.vmap(learner.init), seed_roots(cfg.seed_list()))
    out = {"replay": 0, "synthetic": 0, "other": 0}
    for path, node in jax.tree_util.tree_flatten_with_path(state, is_leaf=_is_buffer)[0]:
        if _is_buffer(node):
            out["synthetic" if "synthetic" in jax.tree_util.keystr(path) else "replay"] += checkpoint.nbytes(node)
        else:
            out["other"] += checkpoint.nbytes(node)
    assert sum(out.values()) == checkpoint.nbytes(state)
    return out, cfg.capacity


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="dmc:humanoid-stand")
    p.add_argument("--steps", type=int, default=500_000)
    p.add_argument("--algos", nargs="+", default=["sac", "mbpo"])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 10])
    p.add_argument("--capacities", type=int, nargs="+", default=[1_000_000],
                   help="replay capacities shown besides the default min(1e6, steps)")
    args = p.parse_args()

    spec = env_spec(args.env)
    print(f"checkpoint sizes with full buffers: {args.env} (obs {spec.obs_dim}, action {spec.action_dim}), "
          f"default configs, --steps {args.steps:,}; GB = 1e9 bytes")
    head = (f"{'algo':<6}{'seeds':>6}{'replay cap.':>13}{'replay':>9}{'synthetic':>11}{'other':>8}{'total':>8}"
            f"{'(other MB)':>12}")
    print(head)
    print("-" * len(head))
    gb = lambda b: f"{b / 1e9:.2f}"  # noqa: E731
    for algo in args.algos:
        for seeds in args.seeds:
            for capacity in [None, *args.capacities]:
                s, cap = sizes(algo, args.env, args.steps, seeds, capacity)
                if capacity is not None and cap == default_config(algo, steps=args.steps).capacity:
                    continue  # the default already showed it
                tag = "" if capacity is not None else " (default)"
                print(f"{algo:<6}{seeds:>6}{cap:>13,}{gb(s['replay']):>9}{gb(s['synthetic']):>11}"
                      f"{gb(s['other']):>8}{gb(sum(s.values())):>8}{s['other'] / 1e6:>12.1f}{tag}")


if __name__ == "__main__":
    main()
