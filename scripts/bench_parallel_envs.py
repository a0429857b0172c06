"""Env phase of an 8-seed dmc:humanoid-stand step (BatchEnv.step) with 1 vs 2 worker threads,
alternating blocks in one process; and the perfect model's host callback (Simulator.host_step)
on 400 restored states, 1 vs 2 workers. Prints one JSON object."""
import json, sys, time
import numpy as np
from dynalab.envs import BatchEnv, env_spec
from dynalab.models.perfect import Simulator
from dynalab.types import state_bits

env_id = sys.argv[1] if len(sys.argv) > 1 else "dmc:humanoid-stand"
seeds, blocks, block = list(range(8)), 8, 50
envs = {w: BatchEnv(env_id, seeds, workers=w) for w in (1, 2)}
for b in envs.values():
    b.reset()
rng = np.random.default_rng(0)
dim = envs[1].spec.action_dim
times = {1: [], 2: []}
for k in range(blocks):
    acts = rng.uniform(-1, 1, (block, len(seeds), dim))
    for w in ((1, 2) if k % 2 == 0 else (2, 1)):  # alternate which goes first
        t0 = time.perf_counter()
        for a in acts:
            envs[w].step(a)
        times[w].append((time.perf_counter() - t0) / block)
states = envs[1].get_states()
for b in envs.values():
    b.close()
med = {w: float(np.median(v)) for w, v in times.items()}
# Perfect model: 400 sampled states (the 8 current ones, repeated), one callback.
spec = env_spec(env_id)
bits = state_bits(np.repeat(states, 50, axis=0))
acts = rng.uniform(-1, 1, (len(bits), dim))
sims = {w: Simulator(spec, workers=w) for w in (1, 2)}
for s in sims.values():
    s.host_step(bits[:8], acts[:8])  # build the simulators outside the timing
ptimes = {1: [], 2: []}
for k in range(6):
    for w in ((1, 2) if k % 2 == 0 else (2, 1)):
        t0 = time.perf_counter()
        s = sims[w].host_step(bits, acts)
        ptimes[w].append(time.perf_counter() - t0)
pmed = {w: float(np.median(v)) for w, v in ptimes.items()}
print(json.dumps({
    "env": env_id, "seeds": len(seeds), "steps_per_worker_count": blocks * block,
    "env_step_seconds_median_of_blocks": {str(w): med[w] for w in med},
    "env_step_seconds_blocks": {str(w): times[w] for w in times},
    "env_speedup_2_vs_1": med[1] / med[2],
    "seconds_per_seed_step": {str(w): med[w] / len(seeds) for w in med},
    "perfect_model_callback_400_rows_seconds_median": {str(w): pmed[w] for w in pmed},
    "perfect_model_speedup_2_vs_1": pmed[1] / pmed[2],
}, indent=1))
