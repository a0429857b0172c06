"""GFLOP/s of the CPU learner next to what XLA reaches on bare matmuls of the same shapes.

Two programs, on dmc:humanoid-stand's dimensions (obs 67, action 21) with the default configs:

- the SAC learner's update of one env step: `replay_ratio` (20) SAC gradient updates in one
  `lax.scan`, each on a fresh minibatch of 256 drawn from a replay buffer (what
  `dynalab.algos.sac.gradient_steps` compiles into every env step);
- one gradient step of the MBPO model (`ensemble.fit`'s `train_step`: 7 members, width 200,
  depth 4, 256 per member, minibatch gather, normalisation, NLL + weight decay, Adam), and a
  scan of `--model-steps` of them (what `fit` runs 5,000 of per refit).

FLOPs are counted two ways and both are reported: (a) by hand from the layer shapes (matmuls
only, 2*M*K*N each: forward, input-gradient and weight-gradient products; see `sac_matmuls` and
`model_matmuls`), and (b) by XLA's cost analysis of the compiled program (`cost_analysis()
["flops"]`, which also counts elementwise work; a while loop's body is counted once, so the
scanned programs are analysed per iteration). The ceiling is the same list of matmuls run
bare: each shape as a chain of dependent `jnp.dot`s inside one jitted `fori_loop` (no dispatch
per matmul), timed as the programs are (many calls, median).

    .venv/bin/python scripts/learner_flops.py [--json results/bench/cpu-learner-flops-DATE.json]

Timings on a shared machine are noisy: the script interleaves its measurements in rounds and
reports medians; the machine's load average is written next to them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import dynalab  # noqa: F401  (CPU dispatch and XLA settings, as every dynalab entry point)
from dynalab import replay
from dynalab.agents import sac
from dynalab.algos import sac as sac_learner
from dynalab.config import TrainConfig
from dynalab.models import ensemble
from dynalab.types import EnvSpec, Transition

OBS, ACT = 67, 21  # dmc:humanoid-stand
SPEC = EnvSpec("dmc:humanoid-stand", OBS, ACT, 1000, 55)


@dataclass(frozen=True)
class Matmul:
    """One product [batch x] (m x k) @ (k x n); `count` of them per program call."""

    name: str
    m: int
    k: int
    n: int
    batch: int = 1
    count: int = 1

    @property
    def flops(self) -> int:
        return 2 * self.batch * self.m * self.k * self.n * self.count


def dense_matmuls(prefix: str, b: int, sizes: list[int], members: int, *, fwd: int, wgrad: int, dgrad: int,
                  first_dgrad: bool = False) -> list[Matmul]:
    """Forward, weight-gradient and input-gradient products of an MLP with layer `sizes`.

    fwd/wgrad/dgrad: how many times each product runs per call. The input gradient of the first
    layer is only computed when something upstream needs it (`first_dgrad`).
    """
    out = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        tag = f"{prefix}{i}[{n_in}x{n_out}]"
        if fwd:
            out.append(Matmul(f"{tag} fwd", b, n_in, n_out, members, fwd))
        if wgrad:
            out.append(Matmul(f"{tag} wgrad", n_in, b, n_out, members, wgrad))
        if dgrad and (i > 0 or first_dgrad):
            out.append(Matmul(f"{tag} dgrad", b, n_out, n_in, members, dgrad))
    return out


def sac_matmuls(cfg: TrainConfig) -> list[Matmul]:
    """Matmuls of one SAC update (see `dynalab.agents.sac.update`), times the replay ratio.

    critic step: actor forward on s' (no grad), target critics forward on (s', a'), critics
    forward + backward on (s, a) (weight gradients; input gradients of layers > 0);
    actor step: actor forward + backward on s, critics forward on (s, pi(s)) and backward to the
    action (input gradients of every layer, no weight gradients).
    The actor's mean and log-std heads are counted as one (256 x 2|A|) product each way.
    """
    b, h, n = cfg.batch_size, list(cfg.sac.hidden), cfg.replay_ratio
    actor = [OBS, *h, 2 * ACT]
    critic = [OBS + ACT, *h, 1]
    return [
        *dense_matmuls("actor", b, actor, 1, fwd=2 * n, wgrad=n, dgrad=n),
        *dense_matmuls("critic", b, critic, 2, fwd=3 * n, wgrad=n, dgrad=n),
        *dense_matmuls("critic(actor loss)", b, critic, 2, fwd=0, wgrad=0, dgrad=n, first_dgrad=True),
    ]


def model_matmuls(mcfg: ensemble.ModelConfig, steps: int = 1) -> list[Matmul]:
    """Matmuls of `steps` model gradient steps: forward, weight and input gradients per layer."""
    sizes = [OBS + ACT, *[mcfg.width] * mcfg.depth, 2 * (OBS + 1)]
    return dense_matmuls("layer", mcfg.batch_size, sizes, mcfg.ensemble_size, fwd=steps, wgrad=steps, dgrad=steps)


# --- programs ------------------------------------------------------------------------


def random_buffer(key: jax.Array, capacity: int) -> replay.ReplayBuffer:
    """A full replay buffer of random humanoid-sized transitions."""
    ks = jax.random.split(key, 4)
    data = Transition(
        obs=jax.random.normal(ks[0], (capacity, OBS)), action=jax.random.uniform(ks[1], (capacity, ACT), minval=-1, maxval=1),
        reward=jax.random.uniform(ks[2], (capacity,)), next_obs=jax.random.normal(ks[3], (capacity, OBS)),
        discount=jnp.ones((capacity,)),
    )  # fmt: skip
    buf = replay.init_buffer(capacity, jax.tree.map(lambda x: x[0], data))
    return replay.add_batch(buf, data)


def sac_program(cfg: TrainConfig, n_updates: int | None = None):
    """(jitted fn, args): one env step's SAC updates on a full buffer (`n_updates` overrides the ratio)."""
    cfg_n = cfg if n_updates is None else dataclasses.replace(cfg, replay_ratio=n_updates)
    agent = sac.init(jax.random.PRNGKey(0), OBS, ACT, cfg.sac)
    buffer = random_buffer(jax.random.PRNGKey(1), 100_000)

    def step(agent, buffer, key):
        return sac_learner.gradient_steps(cfg_n, agent, lambda k: sac_learner.sample_real(buffer, k, cfg.batch_size), key)

    return jax.jit(step), (agent, buffer, jax.random.PRNGKey(2))


def model_program(mcfg: ensemble.ModelConfig, steps: int):
    """(jitted fn, args): `steps` of the model's `fit` gradient steps (minibatches from a full buffer).

    Uses `ensemble.fit` itself with refit_steps=`steps`, so the measured code is the library's.
    The fit's split, normalisers and final holdout evaluation are a fixed cost, measured with
    refit_steps=0 and subtracted; the holdout is cut to 256 transitions here so that this fixed
    cost (50,000 x 7 forward passes by default, ~115 GFLOP) does not drown the steps in noise.
    """
    state = ensemble.init(jax.random.PRNGKey(0), OBS, ACT, mcfg)
    buffer = random_buffer(jax.random.PRNGKey(1), 100_000)
    m = dataclasses.replace(mcfg, refit_steps=steps, max_holdout=256)
    return jax.jit(partial(ensemble.fit, m)), (state, buffer, jax.random.PRNGKey(2))


def bare_matmul(mm: Matmul, reps: int):
    """(jitted fn, args): `reps` dependent products of mm's shape, the ceiling for that shape."""
    kx, kw = jax.random.split(jax.random.PRNGKey(0))
    shape_x = (mm.batch, mm.m, mm.k) if mm.batch > 1 else (mm.m, mm.k)
    shape_w = (mm.batch, mm.k, mm.n) if mm.batch > 1 else (mm.k, mm.n)
    x, w = jax.random.normal(kx, shape_x), jax.random.normal(kw, shape_w) / np.sqrt(mm.k)

    def run(x, w):
        def body(_, c):
            y = jnp.matmul(x + c, w)  # depends on the last result: no hoisting out of the loop
            return y.reshape(-1)[0] * 1e-30
        return jax.lax.fori_loop(0, reps, body, jnp.float32(0))

    return jax.jit(run), (x, w)


# --- timing --------------------------------------------------------------------------


def block(x):
    return jax.block_until_ready(x)


def time_call(fn, args, calls: int) -> float:
    """Median seconds per call over `calls` calls (already compiled)."""
    ts = []
    for _ in range(calls):
        t0 = time.perf_counter()
        block(fn(*args))
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def xla_flops(fn, args) -> float | None:
    """XLA's cost-analysis FLOPs of the compiled program (a while body counted once)."""
    cost = fn.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)) if cost else None


def load() -> float:
    return os.getloadavg()[0]


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except OSError:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved measurement rounds")
    ap.add_argument("--calls", type=int, default=10, help="calls per program per round")
    ap.add_argument("--model-steps", type=int, default=200, help="model gradient steps per timed fit call")
    args = ap.parse_args()

    cfg = TrainConfig(algo="sac", env=SPEC.env_id)
    mcfg = ensemble.ModelConfig()
    programs = {"sac_update": sac_program(cfg), "model_fit": model_program(mcfg, args.model_steps),
                "model_fit_overhead": model_program(mcfg, 0)}
    hand = {"sac_update": sac_matmuls(cfg), "model_fit": model_matmuls(mcfg, args.model_steps)}
    # Cost analysis counts a scan body once: analyse one SAC update and one model step.
    xla = {"sac_update": xla_flops(*sac_program(cfg, 1)) * cfg.replay_ratio,
           "model_step": (xla_flops(*model_program(mcfg, 1)) - xla_flops(*model_program(mcfg, 0)))}
    bare_reps = 50
    matmuls = {mm.name: mm for mms in hand.values() for mm in mms}
    bares = {name: bare_matmul(Matmul(mm.name, mm.m, mm.k, mm.n, mm.batch), bare_reps) for name, mm in matmuls.items()}

    for fn, a in [*programs.values(), *bares.values()]:
        block(fn(*a))  # compile
    times: dict[str, list[float]] = {k: [] for k in [*programs, *bares]}
    loads = []
    for _ in range(args.rounds):
        loads.append(load())
        for name, (fn, a) in programs.items():
            times[name].append(time_call(fn, a, args.calls))
        for name, (fn, a) in bares.items():
            times[name].append(time_call(fn, a, args.calls) / bare_reps)
    t = {k: float(np.median(v)) for k, v in times.items()}

    def ceiling(mms: list[Matmul]) -> dict:
        """The programs' matmuls run bare: total flops / total bare time."""
        seconds = sum(t[mm.name] * mm.count for mm in mms)
        flops = sum(mm.flops for mm in mms)
        return {"matmul_flops": flops, "bare_seconds": seconds, "gflops": flops / seconds / 1e9}

    sac_s = t["sac_update"]
    model_s = (t["model_fit"] - t["model_fit_overhead"]) / args.model_steps
    sac_hand = sum(mm.flops for mm in hand["sac_update"])
    model_hand = sum(mm.flops for mm in hand["model_fit"]) / args.model_steps
    result = {
        "command": "python scripts/learner_flops.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                                                              if v is not None),
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": f"{jax.devices()[0].platform}:{platform.processor() or platform.machine()} ({os.cpu_count()} cpus)",
        "jax": jax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "load_average_per_round": loads,
        "flop_count": "hand: matmuls only, 2*M*K*N from the layer shapes; xla: cost_analysis()['flops'] of the "
                      "compiled program (one scan iteration, times the iteration count)",
        "sac_update": {
            "what": f"one env step's learner update: {cfg.replay_ratio} SAC updates, batch {cfg.batch_size}, "
                    f"hidden {list(cfg.sac.hidden)}, obs {OBS}, action {ACT}",
            "seconds": sac_s,
            "flops_hand": sac_hand, "flops_xla": xla["sac_update"],
            "gflops_hand": sac_hand / sac_s / 1e9, "gflops_xla": xla["sac_update"] / sac_s / 1e9,
            "bare_matmul_ceiling": ceiling(hand["sac_update"]),
        },
        "model_step": {
            "what": f"one model gradient step: {mcfg.ensemble_size} members, width {mcfg.width}, depth {mcfg.depth}, "
                    f"batch {mcfg.batch_size} per member (timed as a fit of {args.model_steps} steps minus a fit of 0)",
            "seconds": model_s,
            "refit_steps_seconds_estimate": model_s * mcfg.refit_steps,
            "flops_hand": model_hand, "flops_xla": xla["model_step"],
            "gflops_hand": model_hand / model_s / 1e9, "gflops_xla": xla["model_step"] / model_s / 1e9,
            "bare_matmul_ceiling": {**ceiling(hand["model_fit"]),
                                    "matmul_flops": model_hand,
                                    "bare_seconds": ceiling(hand["model_fit"])["bare_seconds"] / args.model_steps},
        },
        "bare_matmuls": {name: {"batch": mm.batch, "m": mm.m, "k": mm.k, "n": mm.n, "seconds": t[name],
                                "gflops": 2 * mm.batch * mm.m * mm.k * mm.n / t[name] / 1e9}
                         for name, mm in matmuls.items()},
    }
    for k in ("sac_update", "model_step"):
        r = result[k]
        print(f"{k}: {r['seconds'] * 1e3:.2f} ms, {r['gflops_hand']:.1f} GFLOP/s (hand, matmuls), "
              f"{r['gflops_xla']:.1f} GFLOP/s (XLA count); bare matmuls of the same shapes: "
              f"{r['bare_matmul_ceiling']['gflops']:.1f} GFLOP/s; flops hand {r['flops_hand'] / 1e9:.3f} G, "
              f"xla {r['flops_xla'] / 1e9:.3f} G")
    print(f"load average per round: {loads}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
