"""Simulators stepped in parallel: sequential vs threads vs worker processes, measured in one run.

Env phase: BatchEnv.step of an 8-seed task (default dmc:humanoid-stand). Perfect model:
Simulator.host_step on seeds x rollouts restored states (default 6 x 400 = 2,400 rows, the
callback of one env step). Variants, interleaved (each repetition runs every variant, in a rotated
order) and reported as medians:

  sequential        1 worker: one loop in this process
  threads-2         2 threads of this process
  processes-2       2 workers: this process steps the first chunk, one worker process the other
                    (what BatchEnv and Simulator do with parallel="processes")
  processes-2-idle  2 worker processes, this process idle (the alternative design)
  processes-1-idle  1 worker process holding every row, this process idle (the pipe's overhead)

Also the transfer cost of the perfect model's rows (one worker's chunk of states and actions sent
and its outputs' size returned, through the pipe, without stepping), to decide whether shared
memory would pay. And `cpu_parallelism`: how much of two cores two busy processes get, before and
after (other processes on the machine take the rest). Every variant steps the same actions from the same states, and the script checks
that all end in the same simulator states, bit for bit. Prints one JSON object (with `uptime`'s load
averages before and after: other processes on the machine change the ratios).

usage: .venv/bin/python scripts/bench_parallel_envs.py [ENV] [--blocks 8] [--block 50] [--rows 2400] [--calls 5]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from dynalab.envs import BatchEnv, env_spec
from dynalab.envs import workers as W
from dynalab.models.perfect import Simulator
from dynalab.types import state_bits

VARIANTS = ("sequential", "threads-2", "processes-2", "processes-2-idle", "processes-1-idle")


def make_batch(variant: str, env_id: str, seeds: list[int]) -> BatchEnv:
    if variant == "sequential":
        return BatchEnv(env_id, seeds, workers=1)
    if variant == "threads-2":
        return BatchEnv(env_id, seeds, workers=2, parallel="threads")
    if variant == "processes-2":
        return BatchEnv(env_id, seeds, workers=2, parallel="processes")
    # The alternative designs: every chunk in a worker process, this one idle.
    batch = BatchEnv(env_id, seeds, workers=1)
    batch._rows.close()
    batch._rows = W.ProcessEnvRows(env_id, seeds, 2 if variant == "processes-2-idle" else 1, main_steps=False)
    batch.workers, batch.parallel = (2 if variant == "processes-2-idle" else 1), "processes"
    return batch


def make_sim(variant: str, env_id: str) -> Simulator:
    spec = env_spec(env_id)
    if variant == "sequential":
        return Simulator(spec, workers=1)
    if variant == "threads-2":
        return Simulator(spec, workers=2, parallel="threads")
    if variant == "processes-2":
        return Simulator(spec, workers=2, parallel="processes")
    sim = Simulator(spec, workers=1)
    sim._procs = W.ProcessSimRows(env_id, 2 if variant == "processes-2-idle" else 1, main_steps=False)
    return sim


def _burn(n: int = 1_500_000) -> float:
    t0 = time.perf_counter()
    sum(i * i for i in range(n))
    return time.perf_counter() - t0


def _burner(conn) -> None:
    while conn.recv():
        conn.send(_burn())


def cpu_parallelism(repeats: int = 5) -> list[float]:
    """What two busy processes get right now: (2 x one burn alone) / (the same burn in two processes
    at once), per repetition; 2.0 means two free cores, 1.0 one (others' load takes the rest)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    ours, theirs = ctx.Pipe()
    partner = ctx.Process(target=_burner, args=(theirs,), daemon=True)
    partner.start()
    ratios = []
    for _ in range(repeats):
        alone = _burn()
        t0 = time.perf_counter()
        ours.send(True)
        _burn()
        ours.recv()
        ratios.append(round(2 * alone / (time.perf_counter() - t0), 2))
    ours.send(False)
    partner.join()
    return ratios


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("env", nargs="?", default="dmc:humanoid-stand")
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--blocks", type=int, default=8)
    p.add_argument("--block", type=int, default=50)
    p.add_argument("--rows", type=int, default=2400, help="perfect-model rows per call (seeds x rollouts)")
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    args = p.parse_args()
    env_id, seeds, variants = args.env, list(range(args.seeds)), args.variants
    out: dict = {"env": env_id, "cores": W.available_cores(), "load_average_1_5_15_before": load(),
                 "cpu_parallelism_before": cpu_parallelism()}

    # Env phase.
    batches = {v: make_batch(v, env_id, seeds) for v in variants}
    first = [b.reset() for b in batches.values()]  # waits for the worker processes to boot
    assert all(np.array_equal(first[0], f) for f in first)
    rng = np.random.default_rng(0)
    dim = batches[variants[0]].spec.action_dim
    times: dict[str, list[float]] = {v: [] for v in variants}
    for k in range(args.blocks):
        acts = rng.uniform(-1, 1, (args.block, len(seeds), dim))
        for v in variants[k % len(variants):] + variants[: k % len(variants)]:  # rotate who goes first
            t0 = time.perf_counter()
            for a in acts:
                batches[v].step(a)
            times[v].append((time.perf_counter() - t0) / args.block)
    states = {v: b.get_states() for v, b in batches.items()}
    assert all(np.array_equal(states[variants[0]], s) for s in states.values()), "variants differ"
    med = {v: float(np.median(t)) for v, t in times.items()}
    out["env_phase"] = {
        "seeds": len(seeds), "steps_per_variant": args.blocks * args.block,
        "seconds_per_env_step_median": med,
        "seconds_per_seed_step_median": {v: t / len(seeds) for v, t in med.items()},
        "seconds_per_env_step_blocks": times,
        "speedup_vs_sequential": {v: med["sequential"] / t for v, t in med.items()} if "sequential" in med else {},
        "bit_identical_states_after": True,
    }
    real_states = states[variants[0]]
    for b in batches.values():
        b.close()

    # Perfect model: one callback of `rows` restored states (the real states, repeated).
    rows = np.resize(real_states, (args.rows, real_states.shape[1]))
    bits = state_bits(rows)
    acts = rng.uniform(-1, 1, (args.rows, dim))
    sims = {v: make_sim(v, env_id) for v in variants}
    for s in sims.values():
        s.host_step(bits[:8], acts[:8])  # builds the simulators (and boots workers) outside the timing
    ptimes: dict[str, list[float]] = {v: [] for v in variants}
    results = {}
    for k in range(args.calls):
        for v in variants[k % len(variants):] + variants[: k % len(variants)]:
            t0 = time.perf_counter()
            results[v] = sims[v].host_step(bits, acts)
            ptimes[v].append(time.perf_counter() - t0)
    ref = results[variants[0]]
    assert all(all(np.array_equal(a, b) for a, b in zip(ref, r)) for r in results.values()), "variants differ"
    pmed = {v: float(np.median(t)) for v, t in ptimes.items()}
    # Transfer alone: one worker's half of the rows sent there and back, no physics.
    pool, procs = W.acquire(1)
    try:
        W.echo(procs, "warm")
        half = args.rows // 2
        payload = (rows[:half].copy(), acts[:half].copy())
        tiny = []
        full = []
        for _ in range(20):
            t0 = time.perf_counter()
            W.echo(procs, 0)
            tiny.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            W.echo(procs, payload)
            full.append(time.perf_counter() - t0)
    finally:
        W.release(pool)
    for s in sims.values():
        s.close()
    out["perfect_model"] = {
        "rows_per_call": args.rows, "calls_per_variant": args.calls,
        "seconds_per_call_median": pmed, "seconds_per_call": ptimes,
        "speedup_vs_sequential": {v: pmed["sequential"] / t for v, t in pmed.items()} if "sequential" in pmed else {},
        "bit_identical": True,
        "pipe_round_trip_seconds_median": float(np.median(tiny)),
        # Half the rows' states and actions sent to a worker and back (about a chunk's inputs and outputs).
        "pipe_transfer_half_rows_seconds_median": float(np.median(full)) - float(np.median(tiny)),
        "state_dim": int(rows.shape[1]),
    }
    out["load_average_1_5_15_after"] = load()
    out["cpu_parallelism_after"] = cpu_parallelism()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
