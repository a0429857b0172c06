"""`dynalab bench --seed-counts 1 2 4 8`: how the cost of an env step grows with the number of seeds.

One `bench` per seed count, in one process, on the same config otherwise: seconds per env step
(all seeds together) and per seed-step, split into env, learner (act + update), hooks such as
model refits (amortised), evaluation (amortised) and checkpoints (one interval's write at full
buffers, amortised), plus compile time and peak device memory. Written as one JSON and a PNG of the curve.

On a CPU the learner is compute-bound, so its time per env step grows about linearly with seeds
and the cost per seed-step stays flat; on a GPU one learner call for many seeds costs little more
than for one, so the cost per seed-step falls until the device is full.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from dynalab.bench import bench
from dynalab.config import ConfigError, TrainConfig

# Phases as the curve groups them: everything but env, learner, eval and checkpoint is a hook.
GROUPS = ("env", "learner", "hooks", "eval", "checkpoint")


def grouped_phases(record: dict) -> dict[str, float]:
    """One bench record's seconds per env step (all seeds) by GROUPS; hooks summed, checkpoint the
    amortised cost of one interval's checkpoint at full buffers (0 when checkpointing is off)."""
    per_step = record["seconds_per_env_step"]
    fixed = {"env", "learner", "eval", "total"}
    ckpt = record["checkpoint"].get("amortised_seconds_per_env_step") or 0.0
    return {"env": per_step["env"], "learner": per_step["learner"],
            "hooks": sum(v for k, v in per_step.items() if k not in fixed),
            "eval": per_step["eval"], "checkpoint": ckpt}


def scaling(cfg: TrainConfig, seed_counts: list[int]) -> dict:
    """Bench `cfg` at each of `seed_counts` seeds (in the order given); returns a JSON-able record:
    `runs` (each count's full bench record) and `curve` (per count: seconds per env step by GROUPS
    and in total, seconds per seed-step, compile seconds, peak device bytes).

    Raises ConfigError for an empty list, a count below 1 or a repeated count, or a swept config
    (its members already multiply the seeds).
    """
    if not seed_counts or any(n < 1 for n in seed_counts) or len(set(seed_counts)) != len(seed_counts):
        raise ConfigError(f"--seed-counts needs distinct seed counts of at least 1, e.g. 1 2 4 8; got {seed_counts}.")
    if cfg.sweep_field:
        raise ConfigError("--seed-counts cannot be combined with --sweep-field; bench the sweep at one seed count.")
    runs, curve = [], []
    for n in seed_counts:
        record = bench(dataclasses.replace(cfg, seeds=n))
        phases = grouped_phases(record)
        total = sum(phases.values())
        runs.append(record)
        curve.append({"seeds": n, "seconds_per_env_step": {**phases, "total": total},
                      "seconds_per_seed_step": total / n,
                      "compile_seconds": record.get("compile_seconds"),
                      "peak_device_bytes": record.get("peak_device_bytes")})
    first = runs[0]
    return {key: first[key] for key in ("command", "dynalab", "commit", "date", "device", "jax", "algo", "env",
                                        "replay_ratio", "batch_size", "measured_steps")} | {
        "seed_counts": list(seed_counts), "curve": curve, "runs": runs}


def format_curve(r: dict) -> str:
    """The curve as a table (milliseconds), then where the time goes at the largest seed count."""
    ms = lambda x: f"{1e3 * x:9.2f}"  # noqa: E731
    lines = [f"dynalab bench: {r['algo']} on {r['env']}, replay ratio {r['replay_ratio']}, "
             f"{r['measured_steps']} steps per count, device {r['device']}",
             "ms per env step (all seeds together):",
             f"{'seeds':>6}" + "".join(f"{g:>11}" for g in (*GROUPS, "total")) + f"{'ms/seed-step':>14}"
             + f"{'compile s':>11}"]
    for c in r["curve"]:
        s = c["seconds_per_env_step"]
        compile_s = f"{c['compile_seconds']:11.1f}" if c["compile_seconds"] is not None else f"{'n/a':>11}"
        lines.append(f"{c['seeds']:>6}" + "".join(f"{ms(s[g]):>11}" for g in (*GROUPS, "total"))
                     + f"{ms(c['seconds_per_seed_step']):>14}" + compile_s)
    last = r["curve"][-1]
    s = last["seconds_per_env_step"]
    shares = sorted(((s[g] / s["total"], g) for g in GROUPS), reverse=True)
    lines.append(f"at {last['seeds']} seeds the time goes to: "
                 + ", ".join(f"{g} {100 * share:.0f}%" for share, g in shares if share >= 0.005) + ".")
    if len(r["curve"]) > 1:
        a, b = r["curve"][0], r["curve"][-1]
        lines.append(f"cost per seed-step at {b['seeds']} seeds is {b['seconds_per_seed_step'] / a['seconds_per_seed_step']:.2f}x "
                     f"that at {a['seeds']} seed(s).")
    return "\n".join(lines)


def plot_curve(r: dict, path: Path) -> Path:
    """PNG: ms per seed-step by phase (stacked) and in total against the seed count (log2 axis)."""
    from matplotlib.figure import Figure

    seeds = [c["seeds"] for c in r["curve"]]
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    per_seed, per_step = fig.subplots(1, 2)
    bottom = [0.0] * len(seeds)
    for g in GROUPS:
        values = [1e3 * c["seconds_per_env_step"][g] / c["seeds"] for c in r["curve"]]
        per_seed.fill_between(seeds, bottom, [b + v for b, v in zip(bottom, values)], label=g, alpha=0.8, step=None)
        bottom = [b + v for b, v in zip(bottom, values)]
    per_seed.plot(seeds, bottom, "k.-", label="total")
    per_seed.set(xscale="log", xlabel="seeds in the program", ylabel="ms per seed-step",
                 title="cost per seed-step (stacked by phase)")
    per_step.plot(seeds, [1e3 * c["seconds_per_env_step"]["total"] for c in r["curve"]], "k.-")
    per_step.set(xscale="log", xlabel="seeds in the program", ylabel="ms per env step (all seeds)",
                 title="cost per env step")
    for ax in (per_seed, per_step):
        ax.set_xticks(seeds, [str(n) for n in seeds])
        ax.minorticks_off()
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    per_seed.legend(fontsize=8, loc="lower left")
    fig.suptitle(f"{r['algo']} on {r['env']}, replay ratio {r['replay_ratio']}; {r['device']}", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
