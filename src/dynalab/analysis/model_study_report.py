"""The report of a model study (`dynalab model-study`): figures (PNG + PDF), study.json, summary.md, index.html.

One study (one task): `write_report`. Several (one per task): `write_many`, each study's report in
`out/<task>/` plus `out/index.html` with the model error per task, Gym and DMC side by side (STFL
Figs 6-7 style). The index.html files are self-contained (figures embedded as base64 PNG).

Statistics over model seeds: IQM across seeds (the mean for fewer than 4 seeds, since the 25%
trimmed mean trims nothing then) with a 95% percentile stratified-bootstrap CI (rliable, through
`dynalab.analysis.stats`; one stratum: the seeds). With one seed there is no interval. The seeds
vary the model's initialisation, holdout split and minibatches on the same data, so the CI says how
much a number depends on those, not on the data.
"""

from __future__ import annotations

import base64
import datetime
import html
import math
import re
from pathlib import Path
from typing import Any, Sequence

import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from dynalab.analysis import figures as F
from dynalab.analysis import stats
from dynalab.analysis.report import CSS, Table
from dynalab.analysis.runs import SUITES, env_sort_key, parse_env, task_title

REWARD_POINTS = 1500
"""At most this many held-out transitions drawn in the real vs predicted reward scatter (first model seed)."""
WORST = 5
"""Worst state dimensions listed per variant."""

METRIC_TEXT = {
    "pct_error": "% error on own target",
    "pct_error_delta": "% error on s'-s",
    "pct_error_next_state": "% error on s'",
    "reward_mse": "reward MSE",
    "reward_bias": "reward bias (pred - real)",
    "reward_pred_mean": "mean predicted reward",
    "reward_real_mean": "mean real reward",
    "var_state": "predicted state variance",
    "var_reward": "predicted reward variance",
}

DEFINITIONS = [
    "**Prediction**: the mean over the ensemble's elites of the members' predicted means, in original units "
    "(as training's diagnostics, `model/*` in metrics.csv).",
    "**Percent error** (STFL section 4.1, Figs 6-7): the mean over transitions of 100 ||pred - true|| / ||true|| "
    "(||true|| floored at 1e-6). *On own target*: true = s'-s for residual models, s' for direct ones (training's "
    "`model/pct_error`); *on s'-s*: STFL's quantity, for every model (pred s' - s' = pred (s'-s) - (s'-s), so "
    "comparable across target choices); *on s'*: training's `model/pct_error_next_state`. ||s'|| and ||s'-s|| differ "
    "in scale (by how much depends on the task), so the same prediction has different errors on the two: compare "
    "each across variants, not with each other.",
    "**Reward**: MSE and bias = mean(pred r - r) over transitions; a negative bias means the model underestimates "
    "rewards (FTFL Fig 2a).",
    "**Predicted variance** (FTFL Fig 3b): the mean of the elites' predicted (aleatoric) variance over elites, "
    "transitions and the state dimensions (or the reward), original units. For a residual model the variance of "
    "s'-s given s is that of s', so the numbers compare across targets. Predicted log-variances are soft-bounded "
    "by the model's learned max/min log-variance (MBPO); where channels sit at the upper bound (e.g. velocities "
    "with unnormalised targets), the number shows the bound, not the data, and its CI is narrow for that reason.",
    "**Variance loss** (FTFL Fig 3a): MBPO's `var_loss`, the log-variance term of the Gaussian NLL: the mean predicted "
    "log-variance over members, the fit's holdout transitions and the state target dimensions, in training space "
    "(standardised targets with target normalisation, original units without), after each chunk of gradient steps. "
    "Compare curves of variants with the same target normalisation setting (solid: off, dashed: on).",
    "**Error per state dimension**: RMSE of s'_d (the same as of s'_d - s_d) over the held-out transitions, "
    "divided by the std of s'_d - s_d there: 1 means no better than predicting that channel's mean change.",
    "**Target scale**: std over the training transitions of each state target dimension (s'_d - s_d for residual, "
    "s'_d for direct targets) over the reward's std. In MBPO's joint Gaussian loss in original units, dimensions "
    "far above 1 dominate the reward: the mismatch FTFL's target unit normalisation removes.",
    "**Statistics**: IQM over model seeds (the mean for fewer than 4 seeds) with a 95% percentile stratified-"
    "bootstrap CI (rliable); the seeds change initial weights, holdout split and minibatches, never the data.",
]


# --- statistics ------------------------------------------------------------------------------


def estimate(values: Sequence[float], reps: int) -> tuple[float, float, float]:
    """(IQM, CI low, CI high) over model seeds; NaN-free input; one value gives a zero-width interval."""
    x = np.asarray(values, np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan, math.nan, math.nan
    if x.size == 1:
        return float(x[0]), float(x[0]), float(x[0])
    return stats.iqm_with_ci(x[:, None], reps=reps)


def _fmt(x: float) -> str:
    if not math.isfinite(x):
        return "n/a"
    a = abs(x)
    if a == 0:
        return "0"
    if a >= 1000:
        return f"{x:,.0f}"
    if a >= 100:
        return f"{x:.1f}"
    if a >= 0.01:
        return f"{x:.3g}"
    return f"{x:.2e}"


def _est_text(est: tuple[float, float, float], n: int) -> str:
    point, lo, hi = est
    return _fmt(point) if n < 2 else f"{_fmt(point)} [{_fmt(lo)}, {_fmt(hi)}]"


def summarise(result, reps: int) -> dict[str, Any]:
    """Every number of one study: per variant, per-seed values and IQM with CI, curves, dimensions, reward scatter."""
    from dynalab.model_study import CONSTANT, SCALARS, study_json, target_scale

    heldout = result.heldout_eval
    delta = np.asarray(heldout.next_obs, np.float64) - np.asarray(heldout.obs, np.float64)
    std_delta = delta.std(axis=0)
    std_r = float(np.std(heldout.reward))
    scale = target_scale(result.data.train)
    rng = np.random.default_rng(0)
    n_eval = len(heldout.reward)
    shown = np.sort(rng.choice(n_eval, min(REWARD_POINTS, n_eval), replace=False))
    out = study_json(result)
    out["target_scale"] = scale
    out["variants"] = []
    for r in result.results:
        v = r.variant
        entry: dict[str, Any] = {"name": v.name, "spec": v.spec, "target": v.target,
                                 "model": {k: getattr(v.model, k) for k in v.model.__dataclass_fields__}}
        for split, ev in (("heldout", r.heldout), ("train", r.train)):
            entry[split] = {}
            for m in SCALARS + ("reward_rmse",):
                per_seed = np.sqrt(ev["reward_mse"]) if m == "reward_rmse" else ev[m]
                point, lo, hi = estimate(per_seed, reps)
                entry[split][m] = {"per_seed": per_seed, "iqm": point, "ci": [lo, hi]}
        rmse_dim = np.sqrt(r.heldout["sq_error_dim"].mean(axis=0))
        entry["per_dimension"] = {  # relative to the spread of the truth; NaN for a constant channel
            "rmse_next_state": rmse_dim,
            "relative_rmse": rmse_dim / np.where(std_delta > CONSTANT, std_delta, np.nan),
            "reward_relative_rmse": float(np.sqrt(r.heldout["reward_mse"].mean()) / std_r) if std_r > CONSTANT
            else math.nan,
            "pred_var": r.heldout["var_dim"].mean(axis=0),
        }
        curves = {}
        for name, values in r.curve.items():
            point, lo, hi = stats.iqm_curve_with_ci(values, reps=reps) if values.shape[0] > 1 else (
                values[0], values[0], values[0])
            curves[name] = {"per_seed": values, "iqm": point, "ci_low": lo, "ci_high": hi}
        entry["curve"] = {"steps": r.curve_steps, **curves}
        entry["fit"] = {k.split("/")[-1]: v for k, v in r.fit.items()}
        entry["reward_scatter"] = {"transitions": shown, "real": heldout.reward[shown],
                                   "predicted": r.heldout["reward_pred_n"][0][shown]}
        out["variants"].append(entry)
    out["heldout_std_delta"] = std_delta
    out["heldout_std_reward"] = std_r
    out["data_reward"] = float(np.asarray(result.data.train.reward)[0])
    return out


# --- figures ---------------------------------------------------------------------------------


def _suptitle(fig, text: str, fontsize: float = 11) -> None:
    """A (sub)figure title wrapped to the figure's width (about 10 characters per inch at 11 pt)."""
    import textwrap

    inches = fig.figure.get_figwidth()  # a SubFigure's .figure is its root figure
    fig.suptitle(textwrap.fill(text, width=max(40, int(inches * 10 * 11 / fontsize))), fontsize=fontsize)


def colours(names: Sequence[str]) -> dict[str, Any]:
    return {n: F.HUES[i % len(F.HUES)] for i, n in enumerate(names)}


def _short(name: str, width: int = 16) -> str:
    """A variant name wrapped onto lines of about `width` characters, for tick labels."""
    words, lines, line = name.split(), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    return "\n".join(lines + [line])


def _bars(ax, entries: list[dict], split: str, metric: str, col: dict, n_seeds: int, log: bool = False) -> None:
    """One bar per variant (IQM), its 95% CI, and every seed's value as a dot."""
    values = []
    for i, e in enumerate(entries):
        s = e[split][metric]
        point, (lo, hi) = s["iqm"], s["ci"]
        ax.bar(i, point, width=0.65, color=col[e["name"]], zorder=2)
        if n_seeds > 1 and math.isfinite(lo):
            ax.errorbar(i, point, yerr=[[point - lo], [hi - point]], color="0.15", capsize=4, lw=1.1, zorder=3)
        seeds = np.asarray(s["per_seed"], np.float64)
        ax.scatter(np.full(len(seeds), i) + np.linspace(-0.12, 0.12, len(seeds)), seeds, s=12, color="0.1",
                   zorder=4, alpha=0.7)
        values += [point, lo, hi, *seeds]
        ax.annotate(_fmt(point), (i, max(point, hi) if math.isfinite(hi) else point), xytext=(0, 3),
                    textcoords="offset points", ha="center", va="bottom", fontsize=8, color="0.25")
    v = np.array([x for x in values if math.isfinite(x)])
    if log and v.size and np.all(v > 0) and v.max() / v.min() > 30:
        ax.set_yscale("log")
    else:
        ax.margins(y=0.15)
    # Wrap names to the room each bar has (axes width in inches / bars, about 12 characters per inch at 8 pt).
    room = ax.get_position().width * ax.figure.figure.get_figwidth() / max(len(entries), 1)  # .figure.figure: the root
    ax.set_xticks(range(len(entries)), [_short(e["name"], max(6, int(12 * room))) for e in entries], fontsize=8)
    ax.set_xlim(-0.6, len(entries) - 0.4)
    ax.grid(axis="x", visible=False)


def _variant_legend(fig: Figure, entries: list[dict], col: dict, extra: list | None = None) -> None:
    F._legend(fig, [Patch(color=col[e["name"]], label=f"{e['name']} (target {e['target']})") for e in entries]
              + (extra or []))


def fig_state_error(out: Path, s: dict, col: dict) -> list[Path]:
    entries, n = s["variants"], len(s["model_seeds"])
    with mpl.rc_context(F.STYLE):
        fig = Figure(figsize=(max(9.0, 1.1 * 3 * len(entries) + 2), 4.4), layout="constrained")
        axes = fig.subplots(1, 3)
        for ax, (metric, title) in zip(axes, [("pct_error", "on the model's own target"),
                                              ("pct_error_delta", "on s' - s (STFL's quantity)"),
                                              ("pct_error_next_state", "on s'")]):
            _bars(ax, entries, "heldout", metric, col, n, log=True)
            ax.set_title(f"% error {title}")
        axes[0].set_ylabel("held-out percent error (%)")
        _suptitle(fig, f"{task_title(s['task'])}: held-out state prediction error (IQM over {n} model seed"
                     f"{'s' if n != 1 else ''}{', 95% CI; dots: seeds' if n > 1 else ''})")
        _variant_legend(fig, entries, col)
        return F.save(fig, out, "state_error")


def _reward_groups(real: np.ndarray) -> list[np.ndarray]:
    """Masks of transitions for the line of mean predictions, in order of real reward: each reward
    value held by at least 5% of the transitions (the zeros of a sparse reward, both values of a
    binary one) is a group of its own, and the other transitions are cut into up to 10 quantile bins,
    so that rare rewarded transitions are never averaged into the zeros."""
    values, counts = np.unique(real, return_counts=True)
    heavy = values[counts >= 0.05 * len(real)]
    groups = [real == v for v in heavy]
    rest = ~np.isin(real, heavy)
    if rest.any():
        edges = np.unique(np.quantile(real[rest], np.linspace(0, 1, 11)))
        which = np.clip(np.searchsorted(edges, real, side="right") - 1, 0, max(len(edges) - 2, 0))
        groups += [rest & (which == b) for b in range(max(len(edges) - 1, 1))]
    groups = [g for g in groups if g.any()]
    return sorted(groups, key=lambda g: float(real[g].mean()))


def fig_reward(out: Path, s: dict, col: dict) -> list[Path]:
    """FTFL Fig 2a: real vs predicted reward per variant (first model seed), plus reward RMSE and bias."""
    entries, n = s["variants"], len(s["model_seeds"])
    k = len(entries)
    with mpl.rc_context(F.STYLE):
        cols = min(k, 4)
        rows = math.ceil(k / cols)
        fig = Figure(figsize=(max(8.0, 3.4 * cols), 3.3 * rows + 3.6), layout="constrained")
        top, bottom = fig.subfigures(2, 1, height_ratios=[3.3 * rows, 3.2])
        axes = np.atleast_1d(top.subplots(rows, cols, squeeze=False)).ravel()
        real_all = np.concatenate([np.asarray(e["reward_scatter"]["real"]) for e in entries])
        pred_all = np.concatenate([np.asarray(e["reward_scatter"]["predicted"]) for e in entries])
        lo, hi = float(min(real_all.min(), pred_all.min())), float(max(real_all.max(), pred_all.max()))
        pad = 0.05 * (hi - lo or 1.0)
        for i, ax in enumerate(axes):
            if i >= k:
                ax.set_visible(False)
                continue
            e = entries[i]
            real = np.asarray(e["reward_scatter"]["real"])
            pred = np.asarray(e["reward_scatter"]["predicted"])
            ax.scatter(real, pred, s=5, alpha=0.35, color=col[e["name"]], lw=0, zorder=2)
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.2", ls="--", lw=1, zorder=3)
            centres = [(real[g].mean(), pred[g].mean()) for g in _reward_groups(real)]
            if centres:
                cx, cy = zip(*centres)
                ax.plot(cx, cy, color="0.05", marker="o", ms=3.5, lw=1.4, zorder=4)
            bias = e["heldout"]["reward_bias"]["per_seed"][0]
            ax.set_title(f"{_short(e['name'], 30)}\nbias {_fmt(bias)}, RMSE "
                         f"{_fmt(math.sqrt(e['heldout']['reward_mse']['per_seed'][0]))}", fontsize=9)
            ax.set_xlim(lo - pad, hi + pad)
            ax.set_ylim(lo - pad, hi + pad)
            ax.set_xlabel("real reward")
            if i % cols == 0:
                ax.set_ylabel("predicted reward")
        _suptitle(top, f"{task_title(s['task'])}: real vs predicted reward on held-out transitions (FTFL Fig 2a; "
                  "model seed 0; dashed: perfect prediction; black: mean per real-reward decile; "
                  "a value held by 5% or more is its own point)", 10)
        bx = bottom.subplots(1, 2)
        _bars(bx[0], entries, "heldout", "reward_rmse", col, n)
        bx[0].set_title("reward RMSE")
        _bars(bx[1], entries, "heldout", "reward_bias", col, n)
        bx[1].axhline(0, color="0.2", lw=1)
        bx[1].set_title("reward bias: mean(pred - real)\n(below 0: rewards underestimated)")
        bottom.suptitle(f"over all scored held-out transitions (IQM over {n} model seed{'s' if n != 1 else ''}"
                        f"{', 95% CI' if n > 1 else ''})", fontsize=10)
        return F.save(fig, out, "reward_real_vs_predicted")


def fig_variance(out: Path, s: dict, col: dict) -> list[Path]:
    """FTFL Fig 3b (bars: predicted variance) and 3a (variance loss and holdout MSE during the fit)."""
    entries, n = s["variants"], len(s["model_seeds"])
    with mpl.rc_context(F.STYLE):
        fig = Figure(figsize=(max(11.0, 2.2 * len(entries) + 7), 4.6), layout="constrained")
        axes = fig.subplots(1, 4, width_ratios=[1, 1, 1.3, 1.3])
        for ax, metric, title in ((axes[0], "var_state", "state"), (axes[1], "var_reward", "reward")):
            _bars(ax, entries, "heldout", metric, col, n, log=True)
            ax.set_title(f"predicted {title} variance\n(held out, original units)")
        for ax, key, title in ((axes[2], "var_loss_state", "variance loss (state dims)"),
                               (axes[3], "holdout_mse", "holdout MSE")):
            for e in entries:
                c = e["curve"]
                steps = np.asarray(c["steps"], np.float64)
                ls = "--" if e["model"]["target_norm"] else "-"
                point = np.asarray(c[key]["iqm"], np.float64)
                ax.plot(steps, point, color=col[e["name"]], ls=ls, lw=1.6, marker="o" if len(steps) < 25 else None,
                        ms=3)
                ax.fill_between(steps, np.asarray(c[key]["ci_low"], np.float64),
                                np.asarray(c[key]["ci_high"], np.float64), color=col[e["name"]], alpha=0.15, lw=0)
            ax.set_xlabel("gradient steps")
            ax.set_title(f"{title}\nduring the fit (training space)")
            ax.xaxis.set_major_formatter(mpl.ticker.FuncFormatter(F.format_steps))
            if key == "holdout_mse":
                pts = np.concatenate([np.asarray(e["curve"][key]["iqm"], np.float64) for e in entries])
                pts = pts[np.isfinite(pts)]
                if pts.size and np.all(pts > 0) and pts.max() / pts.min() > 30:
                    ax.set_yscale("log")
        axes[2].set_ylabel("mean predicted log-variance")
        _suptitle(fig, f"{task_title(s['task'])}: predicted variance (FTFL Fig 3b) and variance loss over the fit "
                     f"(FTFL Fig 3a; IQM over {n} model seed{'s' if n != 1 else ''})")
        styles = [Line2D([], [], color="0.3", ls="-", label="curves: no target norm (original units)"),
                  Line2D([], [], color="0.3", ls="--", label="curves: target norm (standardised units)")]
        _variant_legend(fig, entries, col, styles)
        return F.save(fig, out, "predicted_variance")


def fig_dimensions(out: Path, s: dict, col: dict) -> list[Path]:
    entries = s["variants"]
    dims = len(s["heldout_std_delta"])
    with mpl.rc_context(F.STYLE):
        fig = Figure(figsize=(min(16.0, max(8.0, 0.22 * dims + 3)), 4.6), layout="constrained")
        ax = fig.subplots()
        x = np.arange(dims + 1)
        all_values = []
        for e in entries:
            y = np.append(np.asarray(e["per_dimension"]["relative_rmse"], np.float64),
                          e["per_dimension"]["reward_relative_rmse"])
            all_values.append(y)
            ax.plot(x, y, color=col[e["name"]], marker="o", ms=3.5, lw=1.2)
        ax.axhline(1.0, color="0.2", ls="--", lw=1)
        ax.axvline(dims - 0.5, color="0.6", lw=0.8)
        v = np.concatenate(all_values)
        v = v[np.isfinite(v) & (v > 0)]
        if v.size and v.max() / v.min() > 30:
            ax.set_yscale("log")
        step = max(1, math.ceil((dims + 1) / 40))
        ticks = list(range(0, dims, step)) + [dims]
        ax.set_xticks(ticks, [str(t) for t in ticks[:-1]] + ["r"], fontsize=8)
        ax.set_xlabel("state dimension d (r: the reward)")
        ax.set_ylabel("held-out RMSE of s'_d / std(s'_d - s_d)")
        _suptitle(fig, f"{task_title(s['task'])}: held-out prediction error per state dimension, model seeds pooled "
                  "(dashed: no better than predicting the mean change)")
        _variant_legend(fig, entries, col)
        return F.save(fig, out, "error_per_dimension")


def fig_target_scale(out: Path, s: dict) -> list[Path]:
    sc = s["target_scale"]
    dims = len(sc["ratio_delta"])
    with mpl.rc_context(F.STYLE):
        fig = Figure(figsize=(min(16.0, max(8.0, 0.22 * dims + 3)), 4.4), layout="constrained")
        ax = fig.subplots()
        x = np.arange(dims)
        w = 0.4
        if not np.isfinite(np.asarray(sc["ratio_delta"], np.float64)).any():
            ax.text(0.5, 0.5, f"The reward is constant in the training data (std {_fmt(sc['std_reward'])}):\n"
                    "no reward scale to compare the state targets with.", ha="center", va="center",
                    transform=ax.transAxes, fontsize=11)
            ax.set_axis_off()
            _suptitle(fig, f"{task_title(s['task'])}: scale of each state target relative to the reward")
            return F.save(fig, out, "target_scale")
        ax.bar(x - w / 2, sc["ratio_delta"], width=w, color="tab:blue", label="s'_d - s_d (residual targets)", zorder=2)
        ax.bar(x + w / 2, sc["ratio_next"], width=w, color="tab:orange", label="s'_d (direct targets)", zorder=2)
        ax.axhline(1.0, color="0.2", ls="--", lw=1, label="the reward's scale")
        v = np.concatenate([sc["ratio_delta"], sc["ratio_next"]])
        v = v[np.isfinite(v) & (v > 0)]
        if v.size and v.max() / v.min() > 30:
            ax.set_yscale("log")
        step = max(1, math.ceil(dims / 40))
        ax.set_xticks(range(0, dims, step), [str(d) for d in range(0, dims, step)], fontsize=8)
        ax.set_xlabel("state dimension d")
        ax.set_ylabel("std of the target / std of the reward")
        _suptitle(fig, f"{task_title(s['task'])}: scale of each state target relative to the reward (training data; "
                  f"reward std {_fmt(sc['std_reward'])})")
        ax.grid(axis="x", visible=False)
        F._legend(fig, ax.get_legend_handles_labels()[0])
        return F.save(fig, out, "target_scale")


def fig_by_task(out: Path, studies: list[dict], col: dict, names: list[str]) -> list[Path]:
    """STFL Figs 6-7 style: held-out model percent error per task, Gym and DMC side by side."""
    suites: dict[str, list[dict]] = {}
    for s in sorted(studies, key=lambda s: env_sort_key(s["task"])):
        suites.setdefault(parse_env(s["task"])[0], []).append(s)
    rows = [("pct_error_delta", "% error on s' - s\n(STFL Figs 6-7's quantity)"), ("pct_error_next_state",
                                                                                    "% error on s'")]
    widths = [max(len(v), 1.5) for v in suites.values()]
    with mpl.rc_context(F.STYLE):
        fig = Figure(figsize=(max(8.0, 1.0 * sum(widths) * max(1, len(names)) * 0.45 + 2.5), 7.4), layout="constrained")
        axes = fig.subplots(2, len(suites), squeeze=False, width_ratios=widths, sharey="row")
        for r, (metric, label) in enumerate(rows):
            values = []
            for c, (suite, group) in enumerate(suites.items()):
                ax = axes[r, c]
                k = len(names)
                width = 0.8 / max(k, 1)
                for i, s in enumerate(group):
                    by = {e["name"]: e for e in s["variants"]}
                    for j, name in enumerate(names):
                        if name not in by:
                            continue
                        est = by[name]["heldout"][metric]
                        x = i + (j - (k - 1) / 2) * width
                        lo, hi = est["ci"]
                        ax.bar(x, est["iqm"], width=width * 0.92, color=col[name], zorder=2)
                        if len(s["model_seeds"]) > 1 and math.isfinite(lo):
                            ax.errorbar(x, est["iqm"], yerr=[[est["iqm"] - lo], [hi - est["iqm"]]], color="0.15",
                                        capsize=2, lw=0.9, zorder=3)
                        values += [est["iqm"], lo, hi]
                ax.set_xticks(range(len(group)), [parse_env(s["task"])[1] for s in group], rotation=30 if len(group) > 2
                              else 0, ha="right" if len(group) > 2 else "center", rotation_mode="anchor", fontsize=8)
                ax.set_xlim(-0.6, len(group) - 0.4)
                ax.grid(axis="x", visible=False)
                if r == 0:
                    ax.set_title(SUITES.get(suite, suite) or "(no suite)")
                if metric == "pct_error_delta":
                    for level in (25, 100):
                        ax.axhline(level, color="0.35", ls=":", lw=1)
            v = np.array([x for x in values if math.isfinite(x) and x > 0])
            if v.size and v.max() / v.min() > 30:
                axes[r, 0].set_yscale("log")
            axes[r, 0].set_ylabel(f"held-out {label}")
        _suptitle(fig, "Model percent error per task (STFL Figs 6-7 style; IQM over model seeds, 95% CI; dotted: 25% "
                     "and 100%)")
        F._legend(fig, [Patch(color=col[n], label=n) for n in names])
        return F.save(fig, out, "model_error_by_task")


# --- text --------------------------------------------------------------------------------------


def _md_inline(text: str) -> str:
    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", t)
    t = re.sub(r"\*(.+?)\*", r"<em>\1</em>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def _tables(s: dict) -> dict[str, Table]:
    entries, n = s["variants"], len(s["model_seeds"])
    ci = " [95% CI]" if n > 1 else ""
    t: dict[str, Table] = {}
    group_of = {name: i + 1 for i, g in enumerate(s["program_groups"]) for name in g}
    t["variants"] = Table(
        ["variant", "spec", "target", "target norm", "width x depth", "members / elites", "lr", "budget",
         "vmapped group"],
        [[e["name"], e["spec"], e["target"], "on" if e["model"]["target_norm"] else "off",
          f"{e['model']['width']} x {e['model']['depth']}", f"{e['model']['ensemble_size']} / {e['model']['num_elites']}",
          f"{e['model']['lr']:g}",
          (f"early stopping, at most {e['model']['refit_steps']:,} steps" if e["model"]["early_stopping"]
           else f"{e['model']['refit_steps']:,} steps"), str(group_of.get(e["name"], ""))] for e in entries],
        note="Variants in one vmapped group differ only in traced values (learning rate, Adam epsilon); every group is "
             "part of the same compiled program.")
    cols = ["pct_error", "pct_error_delta", "pct_error_next_state", "reward_rmse", "reward_bias", "reward_pred_mean",
            "reward_real_mean"]
    head = {"reward_rmse": "reward RMSE"}
    t["heldout"] = Table(["variant"] + [head.get(c, METRIC_TEXT.get(c, c)) + ci for c in cols],
                         [[e["name"]] + [_est_text((e["heldout"][c]["iqm"], *e["heldout"][c]["ci"]), n) for c in cols]
                          for e in entries])
    t["train"] = Table(["variant"] + [head.get(c, METRIC_TEXT.get(c, c)) + ci for c in cols[:5]],
                       [[e["name"]] + [_est_text((e["train"][c]["iqm"], *e["train"][c]["ci"]), n) for c in cols[:5]]
                        for e in entries],
                       note="On as many training transitions as held-out ones: the gap to the held-out table is "
                            "overfitting (or a shift between episodes).")
    t["variance"] = Table(
        ["variant", "predicted state variance" + ci, "predicted reward variance" + ci,
         "final variance loss (state dims)", "final holdout MSE", "gradient steps"],
        [[e["name"], _est_text((e["heldout"]["var_state"]["iqm"], *e["heldout"]["var_state"]["ci"]), n),
          _est_text((e["heldout"]["var_reward"]["iqm"], *e["heldout"]["var_reward"]["ci"]), n),
          _fmt(_last(e["curve"]["var_loss_state"]["iqm"])), _fmt(_last(e["curve"]["holdout_mse"]["iqm"])),
          _fmt(float(np.mean(e["fit"]["fit_steps"])))] for e in entries],
        note="Variance in original units (held out); the variance loss and holdout MSE are in each variant's training "
             "space (IQM over seeds at the last curve point reached).")
    t["worst"] = Table(
        ["variant", f"worst {WORST} state dimensions: d (RMSE / std of s'_d - s_d)", "reward: RMSE / std(r)"],
        [[e["name"], ", ".join(f"{d} ({_fmt(float(np.asarray(e['per_dimension']['relative_rmse'])[d]))})"
                               for d in np.argsort(-np.nan_to_num(np.asarray(e["per_dimension"]["relative_rmse"],
                                                                             np.float64), nan=-1))[:WORST]
                               if np.isfinite(np.asarray(e["per_dimension"]["relative_rmse"], np.float64)[d])),
          _fmt(e["per_dimension"]["reward_relative_rmse"])] for e in entries])
    sc = s["target_scale"]
    rd, rn = np.asarray(sc["ratio_delta"], np.float64), np.asarray(sc["ratio_next"], np.float64)
    top = lambda r: ", ".join(f"{d} ({_fmt(float(r[d]))})" for d in np.argsort(-np.nan_to_num(r, nan=-1))[:WORST]  # noqa: E731
                              if np.isfinite(r[d])) or "n/a (constant reward)"
    agg = lambda f, r: _fmt(float(f(r))) if np.isfinite(r).any() else "n/a"  # noqa: E731
    t["scale"] = Table(["target", "median over dims", "largest", f"largest {WORST}: d (ratio)"],
                       [["s'_d - s_d (residual)", agg(np.nanmedian, rd), agg(np.nanmax, rd), top(rd)],
                        ["s'_d (direct)", agg(np.nanmedian, rn), agg(np.nanmax, rn), top(rn)]],
                       note=f"Std of each target dimension over the std of the reward ({_fmt(sc['std_reward'])}), "
                            "training data.")
    return t


def _last(values) -> float:
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return float(v[-1]) if v.size else math.nan


def _data_text(s: dict) -> str:
    d = s["data"]
    return (f"Task **{task_title(s['task'])}** (`{s['task']}`). Data: {d['source']}. {d['train_transitions']:,} "
            f"training transitions ({d['train_episodes']} episode(s)), {d['heldout_transitions']:,} held-out ones "
            f"({d['heldout_episodes']} episode(s)); scored: {d['scored_heldout']:,} held-out and {d['scored_train']:,} "
            f"training transitions. Model seeds: {', '.join(map(str, s['model_seeds']))}. One program "
            f"({len(s['program_groups'])} vmapped group(s)) fitted and scored everything in {s['seconds']:.1f} s "
            f"(compile included) on {s['device']}.")


def _findings(s: dict) -> list[str]:
    """Plain statements read off the numbers (no judgement beyond them)."""
    out = []
    entries = s["variants"]
    if not entries:
        return out
    best = min(entries, key=lambda e: e["heldout"]["pct_error_delta"]["iqm"])
    out.append(f"Lowest held-out error on s'-s: {best['name']} ({_fmt(best['heldout']['pct_error_delta']['iqm'])}%).")
    std_r = s["heldout_std_reward"]
    for e in entries:
        b = e["heldout"]["reward_bias"]
        lo, hi = b["ci"]
        real = e["heldout"]["reward_real_mean"]["iqm"]
        if len(s["model_seeds"]) > 1 and (hi < 0 or lo > 0):  # the whole CI on one side of 0
            share = (f", {_fmt(100 * abs(b['iqm']) / std_r)}% of the reward's std" if std_r > 1e-8 else
                     ", while the real reward is constant")
            out.append(f"{e['name']} {'under' if hi < 0 else 'over'}estimates the reward: bias {_fmt(b['iqm'])} "
                       f"[{_fmt(lo)}, {_fmt(hi)}]{share} (mean real reward {_fmt(real)}).")
    sc = s["target_scale"]
    if np.isfinite(np.asarray(sc["ratio_delta"], np.float64)).any():
        out.append(f"The largest residual target dimension has {_fmt(float(np.nanmax(sc['ratio_delta'])))}x the reward's "
                   f"std, the largest direct one {_fmt(float(np.nanmax(sc['ratio_next'])))}x.")
    else:
        out.append(f"The reward is constant in the training data ({_fmt(float(np.asarray(s['data_reward'])))} on every "
                   "transition), so there is no reward scale to compare the targets with; data from a better policy "
                   "(--from a trained run, --policy) shows rewards.")
    return out


def _html_page(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>\n" + "\n".join(body)
            + "\n</body></html>\n")


def _figure_html(caption: str, png: Path) -> str:
    b64 = base64.b64encode(png.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{b64}">'
            f"<figcaption>{_md_inline(caption)}</figcaption></figure>")


CAPTIONS = {
    "state_error": "Held-out state prediction error of each variant: on its own target, on s'-s (STFL Figs 6-7's "
                   "quantity, comparable across targets) and on s'. Bars: IQM over model seeds; whiskers: 95% CI; "
                   "dots: seeds. A log axis when the values span more than 30x.",
    "reward_real_vs_predicted": "FTFL Fig 2a: real vs predicted reward on held-out transitions, one panel per variant "
                                "(model seed 0; points below the dashed line are underestimated rewards), and the "
                                "reward RMSE and bias over all scored transitions (every seed).",
    "predicted_variance": "FTFL Fig 3: the mean predicted variance of the state and of the reward (original units, "
                          "held out), and the variance loss and holdout MSE over the fit (training space; dashed "
                          "curves: target-normalised variants, whose units differ).",
    "error_per_dimension": "Held-out RMSE of every state dimension over the std of its change (1 = no better than the "
                           "mean change), and of the reward over its std (r): the worst channels stand out.",
    "target_scale": "Scale of each state target dimension relative to the reward (training data), for residual "
                    "(s'-s) and direct (s') targets: in MBPO's joint loss the reward's share shrinks with these ratios.",
    "model_error_by_task": "STFL Figs 6-7 style: held-out model percent error per task, Gym and DMC side by side, per "
                           "variant (IQM over model seeds, 95% CI). Top: on s'-s (dotted lines at 25% and 100%, "
                           "STFL's reference levels); bottom: on s'.",
}


def write_report(result, out: Path, reps: int = 2000, context: dict | None = None) -> list[Path]:
    """Figures, study.json, summary.md and a self-contained index.html for one study into `out`; returns the files."""
    return _write_one(result, out, reps, context)[0]


def _write_one(result, out: Path, reps: int, context: dict | None) -> tuple[list[Path], dict]:
    from dynalab.model_study import dump_json

    out = Path(out)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    s = summarise(result, reps)
    s.update(_provenance(context))
    col = colours([e["name"] for e in s["variants"]])
    figures = [("state_error", fig_state_error(fig_dir, s, col)),
               ("reward_real_vs_predicted", fig_reward(fig_dir, s, col)),
               ("predicted_variance", fig_variance(fig_dir, s, col)),
               ("error_per_dimension", fig_dimensions(fig_dir, s, col)),
               ("target_scale", fig_target_scale(fig_dir, s))]
    tables = _tables(s)
    files = [p for _, paths in figures for p in paths]
    files.append(dump_json(s, out / "study.json"))
    sections = [
        ("Held-out prediction error", "IQM over model seeds" + (" [95% CI]" if len(s["model_seeds"]) > 1 else "")
         + "; percent errors in %.", tables["heldout"]),
        ("On the training data", "", tables["train"]),
        ("Predicted variance and the fit", "", tables["variance"]),
        ("Worst state dimensions", "", tables["worst"]),
        ("Scale of the targets relative to the reward", "", tables["scale"]),
        ("Variants", "", tables["variants"]),
    ]
    title = f"dynalab model study: {task_title(s['task'])}"
    md = [f"# {title}", "", _data_text(s), "", "## Findings", ""] + [f"- {f}" for f in _findings(s)] + [""]
    for heading, text, table in sections:
        md += [f"## {heading}", ""] + ([text, ""] if text else []) + [table.markdown(), ""]
    md += ["## Figures", ""]
    for name, paths in figures:
        md += [f"![{name}]({paths[0].relative_to(out).as_posix()})", "",
               f"*{CAPTIONS[name]}* ([PDF]({paths[1].relative_to(out).as_posix()}))", ""]
    md += ["## Definitions", ""] + [f"- {d}" for d in DEFINITIONS] + ["", f"All numbers: `study.json`. {_command(s)}", ""]
    (out / "summary.md").write_text("\n".join(md))
    files.append(out / "summary.md")
    body = [f"<h1>{html.escape(title)}</h1><p>{_md_inline(_data_text(s))}</p>", "<h2>Findings</h2><ul>"
            + "".join(f"<li>{_md_inline(f)}</li>" for f in _findings(s)) + "</ul>"]
    for heading, text, table in sections:
        body.append(f"<h2>{html.escape(heading)}</h2>" + (f"<p>{_md_inline(text)}</p>" if text else "") + table.html())
    body.append("<h2>Figures</h2>")
    body += [_figure_html(CAPTIONS[name], paths[0]) for name, paths in figures]
    body.append("<h2>Definitions</h2><ul>" + "".join(f"<li>{_md_inline(d)}</li>" for d in DEFINITIONS) + "</ul>")
    body.append(f"<p class=\"note\">All numbers: study.json. {_md_inline(_command(s))}</p>")
    (out / "index.html").write_text(_html_page(title, body))
    files.append(out / "index.html")
    return files, s


def _provenance(context: dict | None) -> dict:
    import sys

    from dynalab import __version__

    return {"dynalab_version": __version__, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(["dynalab", *sys.argv[1:]]) if sys.argv and "dynalab" in sys.argv[0] else None,
            "settings": context or {}}


def _command(s: dict) -> str:
    return f"Command: `{s['command']}`." if s.get("command") else ""


def _slug(env: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", env).strip("-")


def write_many(results: list, out: Path, reps: int = 2000, context: dict | None = None) -> list[Path]:
    """One report per study in `out/<task>/`, plus `out/index.html`, `out/summary.md` and `out/study.json` with the
    model error per task (STFL Figs 6-7 style). Returns the files written."""
    from dynalab.model_study import dump_json

    out = Path(out)
    files: list[Path] = []
    summaries, folders = [], []
    used: set[str] = set()
    for r in results:
        slug = _slug(r.data.env)
        while slug in used:  # two runs of one task
            slug += "_"
        used.add(slug)
        folders.append(slug)
        written, summary = _write_one(r, out / slug, reps, context)
        files += written
        summaries.append(summary)
    names: list[str] = []
    for s in summaries:
        names += [e["name"] for e in s["variants"] if e["name"] not in names]
    col = colours(names)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    paths = fig_by_task(fig_dir, summaries, col, names)
    files += paths
    combined = {**_provenance(context), "studies": [{"folder": f, **s} for f, s in zip(folders, summaries)]}
    files.append(dump_json(combined, out / "study.json"))
    cols = ["pct_error_delta", "pct_error_next_state", "reward_rmse", "reward_bias"]
    rows = []
    for f, s in sorted(zip(folders, summaries), key=lambda p: env_sort_key(p[1]["task"])):
        for e in s["variants"]:
            n = len(s["model_seeds"])
            rows.append([task_title(s["task"]), e["name"]] + [_est_text((e["heldout"][c]["iqm"], *e["heldout"][c]["ci"]),
                                                                        n) for c in cols] + [f"{f}/index.html"])
    table = Table(["task", "variant", "% error on s'-s", "% error on s'", "reward RMSE", "reward bias", "report"], rows,
                  note="IQM over model seeds [95% CI] on held-out transitions; each task's report has every figure.")
    title = f"dynalab model study: {len(summaries)} tasks"
    data_lines = [f"{task_title(s['task'])}: {s['data']['source']} ({s['data']['train_transitions']:,} training, "
                  f"{s['data']['heldout_transitions']:,} held-out transitions)" for s in summaries]
    md = [f"# {title}", "", "## Model error per task", "", table.markdown(), "", f"![model error by task]"
          f"({paths[0].relative_to(out).as_posix()})", "", f"*{CAPTIONS['model_error_by_task']}*", "", "## Data", ""]
    md += [f"- {line}" for line in data_lines] + ["", "## Definitions", ""] + [f"- {d}" for d in DEFINITIONS] + [""]
    (out / "summary.md").write_text("\n".join(md))
    body = [f"<h1>{html.escape(title)}</h1>", "<h2>Model error per task</h2>",
            _figure_html(CAPTIONS["model_error_by_task"], paths[0]), table.html()]
    body.append("<h2>Per-task reports</h2><ul>" + "".join(
        f'<li><a href="{html.escape(f)}/index.html">{html.escape(task_title(s["task"]))}</a></li>'
        for f, s in zip(folders, summaries)) + "</ul>")
    body.append("<h2>Data</h2><ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in data_lines) + "</ul>")
    body.append("<h2>Definitions</h2><ul>" + "".join(f"<li>{_md_inline(d)}</li>" for d in DEFINITIONS) + "</ul>")
    (out / "index.html").write_text(_html_page(title, body))
    files += [out / "summary.md", out / "index.html"]
    return files
