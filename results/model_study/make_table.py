"""Build the findings table from /tmp/mstudy/studies/*/study.json (read-only)."""
import csv, json, sys
from pathlib import Path
import numpy as np

ROOT = Path("/tmp/mstudy")
TASKS = [("walker2d", "gym:Walker2d-v5"), ("walker-walk", "dmc:walker-walk"), ("hopper-stand", "dmc:hopper-stand"),
         ("humanoid-stand", "dmc:humanoid-stand"), ("hopper-gym", "gym:Hopper-v5")]
KINDS = ["random", "sac"]


def fmt(x):
    if x is None or not np.isfinite(x):
        return "n/a"
    a = abs(x)
    if a >= 100: return f"{x:.0f}"
    if a >= 10: return f"{x:.1f}"
    if a >= 0.01: return f"{x:.3g}"
    return f"{x:.2e}"


def est(m):
    return f"{fmt(m['iqm'])} [{fmt(m['ci'][0])}, {fmt(m['ci'][1])}]"


def eval_return(run):
    p = ROOT / "runs" / run / "metrics.csv"
    rows = [r for r in csv.DictReader(open(p)) if r["metric"] == "eval/return"]
    return {int(r["step"]): float(r["value"]) for r in rows}


def load(task, kind):
    p = ROOT / "studies" / f"{task}-{kind}" / "study.json"
    return json.load(open(p)) if p.is_file() else None


def variants(s):
    return {v["spec"]: v for v in s["variants"]}


def top_decile_bias(v):
    real = np.asarray(v["reward_scatter"]["real"], float)
    pred = np.asarray(v["reward_scatter"]["predicted"], float)
    sel = np.argsort(real, kind="stable")[-max(1, len(real) // 10):]  # top 10% by rank (ties: sparse rewards)
    slope = np.polyfit(real, pred, 1)[0] if real.std() > 1e-8 else float("nan")
    return float((pred[sel] - real[sel]).mean()), float(slope)


out = {}
lines = []
for task, env in TASKS:
    for kind in KINDS:
        s = load(task, kind)
        if s is None:
            continue
        V = variants(s)
        d = s["data"]
        ret = "n/a (uniform random)"
        if kind == "sac":
            er = eval_return(task)
            ret = f"{er[max(er)]:.1f} (final, step {max(er)}); best {max(er.values()):.1f}"
        row = {"task": env, "kind": kind, "eval_return": ret, "train": d["train_transitions"],
               "heldout": d["heldout_transitions"], "heldout_episodes": d["heldout_episodes"],
               "seconds": s["seconds"], "reward_std_heldout": s["heldout_std_reward"],
               "reward_mean_real": V["mbpo"]["heldout"]["reward_real_mean"]["iqm"]}
        for spec, v in V.items():
            h = v["heldout"]
            row[spec] = {m: {"iqm": h[m]["iqm"], "ci": h[m]["ci"], "per_seed": h[m]["per_seed"]}
                         for m in ("reward_bias", "var_state", "pct_error_delta", "pct_error", "pct_error_next_state",
                                   "reward_rmse")}
            row[spec]["top_decile_bias_seed0"], row[spec]["slope_seed0"] = top_decile_bias(v)
            row[spec]["var_loss_final"] = float(np.asarray(v["curve"]["var_loss_state"]["iqm"], float)[-1])
        # paired per-seed contrasts
        ps = lambda spec, m: np.asarray(V[spec]["heldout"][m]["per_seed"], float)
        row["paired"] = {
            "bias_targetnorm_minus_mbpo": (ps("target-norm", "reward_bias") - ps("mbpo", "reward_bias")).tolist(),
            "bias_ftfl_minus_mbpo": (ps("ftfl", "reward_bias") - ps("mbpo", "reward_bias")).tolist(),
            "var_ratio_mbpo_over_direct": (ps("mbpo", "var_state") / ps("direct", "var_state")).tolist(),
            "var_ratio_targetnorm_over_ftfl": (ps("target-norm", "var_state") / ps("ftfl", "var_state")).tolist(),
        }
        out[f"{task}-{kind}"] = row
json.dump(out, open(sys.argv[1] if len(sys.argv) > 1 else "/tmp/mstudy/table.json", "w"), indent=1)

# Markdown tables
def md():
    L = []
    L.append("| task | data (policy eval return) | reward bias MBPO | target norm only | FTFL | mean real reward (std) |")
    L.append("|---|---|---|---|---|---|")
    for k, r in out.items():
        L.append(f"| `{r['task']}` | {r['kind']} ({r['eval_return']}) | {est(r['mbpo']['reward_bias'])} | "
                 f"{est(r['target-norm']['reward_bias'])} | {est(r['ftfl']['reward_bias'])} | "
                 f"{fmt(r['reward_mean_real'])} ({fmt(r['reward_std_heldout'])}) |")
    L.append("")
    L.append("| task | data | pred. state var MBPO (residual) | direct only | target norm only (residual) | FTFL (direct) | ratio MBPO/direct per seed | ratio TN/FTFL per seed |")
    L.append("|---|---|---|---|---|---|---|---|")
    for k, r in out.items():
        p = r["paired"]
        L.append(f"| `{r['task']}` | {r['kind']} | {est(r['mbpo']['var_state'])} | {est(r['direct']['var_state'])} | "
                 f"{est(r['target-norm']['var_state'])} | {est(r['ftfl']['var_state'])} | "
                 f"{', '.join(f'{x:.2f}' for x in p['var_ratio_mbpo_over_direct'])} | "
                 f"{', '.join(f'{x:.2f}' for x in p['var_ratio_targetnorm_over_ftfl'])} |")
    L.append("")
    L.append("| task | data | % error on s'-s: MBPO | target norm only | direct only | FTFL |")
    L.append("|---|---|---|---|---|---|")
    for k, r in out.items():
        L.append(f"| `{r['task']}` | {r['kind']} | " + " | ".join(est(r[v]['pct_error_delta'])
                 for v in ("mbpo", "target-norm", "direct", "ftfl")) + " |")
    L.append("")
    L.append("| task | data | top-decile reward bias (seed 0): MBPO | target norm | direct | FTFL | pred-vs-real slope (seed 0): MBPO | TN | direct | FTFL |")
    L.append("|---|---|---|---|---|---|---|---|---|---|")
    for k, r in out.items():
        L.append(f"| `{r['task']}` | {r['kind']} | " + " | ".join(fmt(r[v]['top_decile_bias_seed0'])
                 for v in ("mbpo", "target-norm", "direct", "ftfl")) + " | " + " | ".join(
                 fmt(r[v]['slope_seed0']) for v in ("mbpo", "target-norm", "direct", "ftfl")) + " |")
    L.append("")
    L.append("| task | data | paired bias diff TN-MBPO per seed | FTFL-MBPO per seed | study seconds |")
    L.append("|---|---|---|---|---|")
    for k, r in out.items():
        p = r["paired"]
        L.append(f"| `{r['task']}` | {r['kind']} | {', '.join(fmt(x) for x in p['bias_targetnorm_minus_mbpo'])} | "
                 f"{', '.join(fmt(x) for x in p['bias_ftfl_minus_mbpo'])} | {r['seconds']:.0f} |")
    return "\n".join(L)

print(md())
