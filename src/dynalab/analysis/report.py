"""`make_report`: figures, summary.md and a self-contained index.html from run folders.

Definitions used throughout (also written into summary.md's "Method" section):

- Final return of a seed: its `eval/return` (the mean return of the deterministic policy over the
  evaluation episodes) at its last evaluation. For a finished run that is the evaluation at the
  configured `steps`; for a run still going, its latest evaluation (the "Runs" table says which).
- Per task and variant: IQM over seeds, with a 95% percentile stratified-bootstrap CI (rliable).
- Normalised score of a seed: its final return divided by its baseline variant's final-return IQM on
  the same task (held fixed in the bootstrap). The baseline is the variant the runs name in their
  `baseline` setting, else the SAC reference ("SAC-normalised", the rule when every baseline is SAC;
  see runs.py). Tasks where the baseline's IQM is not positive, or the baseline has no runs, are left
  out for the variants normalised to it (with a note). The aggregate per variant is the IQM of the
  normalised seeds of the tasks it shares with its baseline in which every task weighs the same,
  whatever its seed count (`stats.task_weighted_iqm`: rliable's runs x tasks matrix, each task's
  seeds repeated to a common count; no seed is dropped), with a stratified bootstrap (seeds
  resampled within each task, keeping its count).
- Dyna vs its base (STFL Figure 1): the same aggregate per suite (Gym, DMC) for every variant
  normalised to another variant (MBPO to SAC, ALM to ALM without Dyna); 1.0 means as good as its
  base without Dyna.
- Model error across variants: `model/pct_error_next_state` (error on s', the same quantity whatever
  the model's target). `model/pct_error` (error on the state part of the model's own target) is
  drawn only for residual-target models (target s'-s, as in STFL Figs 6-7), where it means the
  same thing for every variant drawn.
- Missing diagnostics (a metric not logged at a step, e.g. `q/mean_synthetic` before the synthetic
  buffer holds data, or a NaN) are gaps: each step uses the seeds that have a value there, and a
  step with none is not drawn.
- Seconds per env step: a run's logged wall-clock time over the env steps it covers (1 /
  `time/env_steps_per_sec`, weighted by interval length), averaged over the variant's run folders
  on the task. One env step steps all seeds of a run folder at once.
- Policy videos: where run folders hold videos made by `dynalab video` (videos/*.mp4 with their
  .json), one frame strip per task and variant (`video_strips`): frames evenly spaced over the
  episode of the newest policy (lowest seed and episode among those), a PNG in figures/, shown in
  summary.md and embedded in index.html. Runs without videos add nothing.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd

from dynalab.analysis import figures as F
from dynalab.analysis import stats
from dynalab.analysis.runs import (SHORT_NAMES, SUITE_ORDER, SUITES, ReportError, RunData, env_sort_key, load_runs,
                                   parse_env, task_title, variant_sort_key)

__all__ = ["make_report", "ReportError"]

EVAL = "eval/return"
SPS = "time/env_steps_per_sec"
# (file name, title, y label, [(metric, line style, style legend)], log y if the data span this many decades,
#  only runs whose model predicts this state target (runs.state_target; None: every run))
DIAGNOSTICS = [
    ("diag_model_error", "Model error on the next state s' (100 ||pred s' - s'|| / ||s'||, same for every target)",
     "next-state error (% of ||s'||)", [("model/pct_error_next_state", "-", None)], 2.0, None),
    ("diag_model_error_residual",
     "Model error on its own target s'-s (residual-target models only, as in STFL Figs 6-7)",
     "state-change error (% of ||s'-s||)", [("model/pct_error", "-", None)], 2.0, "s'-s"),
    ("diag_q_values", "Critic on real vs synthetic (MBPO) or imagined (ALM) data", "mean Q-value",
     [("q/mean_real", "-", "real data"), ("q/mean_synthetic", "--", "synthetic data"),
      ("q/mean_imagined", ":", "imagined latents")], None, None),
    ("diag_rewards", "Rewards of real vs synthetic (MBPO) or imagined (ALM) data", "mean reward per transition",
     [("reward/mean_real", "-", "real data"), ("reward/mean_synthetic", "--", "synthetic data"),
      ("reward/mean_imagined", ":", "imagined (reward net + classifier term)")], None, None),
    ("diag_model_variance", "Model's predicted variance of the state target", "predicted state variance",
     [("model/var_state", "-", None)], 2.0, None),
]


FIGURE_NAMES = ["curves_eval_return", "sac_normalised", "dyna_vs_base", "synthetic_ratio"] + [
    d[0] for d in DIAGNOSTICS] + ["seconds_per_step"]


@dataclass
class Table:
    """A table rendered both to markdown and to HTML."""

    headers: list[str]
    rows: list[list[str]]
    note: str = ""
    """A footnote printed under the table (empty: none)."""

    def markdown(self) -> str:
        esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
        lines = ["| " + " | ".join(map(esc, self.headers)) + " |", "|" + "|".join(["---"] * len(self.headers)) + "|"]
        lines += ["| " + " | ".join(map(esc, r)) + " |" for r in self.rows]
        return "\n".join(lines) + (f"\n\n{self.note}" if self.note else "")

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.headers)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in self.rows)
        note = f'<p class="note">{html.escape(self.note)}</p>' if self.note else ""
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{note}"


def make_report(dirs: list[Path], out: Path, reps: int = 2000) -> list[Path]:
    """Write figures (PNG + PDF), summary.md and index.html for every run under `dirs` into `out`.

    Returns the files written. Raises ReportError (one sentence) when the inputs cannot be reported.
    """
    if reps < 1:
        raise ReportError(f"reps must be a positive integer, got {reps}.")
    wanted = {EVAL, SPS} | {metric for _, _, _, series, _, _ in DIAGNOSTICS for metric, _, _ in series}
    data = load_runs([Path(d) for d in dirs], metrics=wanted)
    out = Path(out)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    runs, m = data.runs, data.metrics

    envs = sorted(runs["env"].unique(), key=env_sort_key)
    variants = sorted(runs["variant"].unique(), key=variant_sort_key)
    families = sorted(runs["ratio_group"].unique(), key=variant_sort_key)
    ratio_of = dict(zip(runs["variant"], runs["synthetic_ratio"]))
    family_of = dict(zip(runs["variant"], runs["ratio_group"]))
    colours = F.palette([(v, family_of[v], ratio_of[v]) for v in variants])

    final = final_scores(m)
    final_est = _final_estimates(final, reps)
    written: list[tuple[str, list[Path]]] = []

    # Training curves.
    panels = {env: _curves(m, env, EVAL, "-", reps) for env in envs}
    written.append(("Evaluation return during training: IQM across seeds with 95% bootstrap CIs.",
                    F.curve_grid(fig_dir, "curves_eval_return", "Evaluation return (IQM over seeds, 95% CI)",
                                 "evaluation return", panels, colours, variants)))

    # Normalised to each variant's baseline (SAC unless the runs name another).
    norm = normalise_to_baselines(final, final_est, data.baselines, data.sac_variant, reps)
    data.notes.extend(norm.notes + _budget_notes(runs, data.baselines, norm.per_task))
    per_task_norm, aggregate = norm.per_task, norm.aggregate
    only_sac = _only_sac(data)
    if per_task_norm:
        relative_to = (f"relative to {data.sac_variant}" if only_sac else
                       "relative to each variant's baseline (named in the figure)")
        scores = "SAC-normalised scores" if only_sac else "normalised scores"
        written.append((f"Final return {relative_to} per task (grouped by suite) and aggregated over tasks (IQM of "
                        f"{scores}, every task weighing the same; stratified-bootstrap 95% CI).",
                        F.sac_normalised(fig_dir, per_task_norm, aggregate, colours, variants, data.baselines,
                                         data.sac_variant)))
    by_suite = suite_aggregates(norm.scores, data.baselines, reps)
    if by_suite:
        pairs = [f"{v} over {data.baselines[v]}" for v in variants if any(v in per for per in by_suite.values())]
        written.append((f"STFL Figure 1 style: each variant's final return over its own base without Dyna ("
                        f"{', '.join(pairs)}: each seed divided by its base's IQM on the same task, same tasks and "
                        "budgets), aggregated per suite (IQM of the normalised seeds, every task weighing the same; "
                        "stratified-bootstrap 95% CI). The dashed line at 1.0 is as good as its base without Dyna.",
                        F.dyna_vs_base(fig_dir, by_suite, data.baselines, colours, variants)))

    # Synthetic-ratio curve.
    ratio_panels = synthetic_ratio_points(final, runs, reps)
    sac_ref = {env: final_est[(env, data.sac_variant)] for env in envs if (env, data.sac_variant) in final_est}
    sac_caption = f"; the dashed line and band are {data.sac_variant}'s" if sac_ref else ""
    written.append((f"Final return vs synthetic ratio S (IQM, 95% CI){sac_caption}.",
                    F.synthetic_ratio(fig_dir, ratio_panels, sac_ref, colours, families, data.sac_variant)))

    # Diagnostics. A metric a run did not log at a step (or logged as NaN) has no row there: a gap, never a 0.
    data.notes.extend(_model_error_notes(runs, m))
    for name, title, ylabel, series, log_decades, target in DIAGNOSTICS:
        dm = m if target is None else m[m["run"].isin(runs.loc[runs["state_target"] == target, "run"])]
        present = set(dm["metric"].unique())
        if not any(metric in present for metric, _, _ in series):
            continue
        panels = {env: [c for metric, ls, _ in series if metric in present for c in _curves(dm, env, metric, ls, reps)]
                  for env in envs}
        styles = [(ls, label) for metric, ls, label in series if label and metric in present]
        written.append((f"{title}: IQM across seeds with 95% bootstrap CIs.",
                        F.curve_grid(fig_dir, name, title, ylabel, panels, colours, variants,
                                     styles if len(styles) > 1 else None, log_decades)))

    # Seconds per env step.
    secs = seconds_per_step(m, runs)
    sec_panels: dict[str, dict[str, float]] = {}
    for (env, variant), (value, _) in secs.items():
        sec_panels.setdefault(env, {})[variant] = value
    written.append(("Wall-clock seconds per environment step (all seeds of a run folder step together).",
                    F.seconds_per_step(fig_dir, {e: sec_panels[e] for e in envs if e in sec_panels}, colours,
                                       variants)))

    figures = [(caption, paths) for caption, paths in written if paths]
    made = {p.name for _, paths in figures for p in paths}
    for name in FIGURE_NAMES:  # a figure this report does not draw must not linger from an earlier report
        for path in (fig_dir / f"{name}.png", fig_dir / f"{name}.pdf"):
            if path.name not in made:
                path.unlink(missing_ok=True)
    strips = video_strips(runs, fig_dir, data.notes)
    for path in fig_dir.glob("video_*.png"):  # strips of videos no longer there
        if path not in {st.png for st in strips}:
            path.unlink()
    tables = _tables(runs, final, final_est, per_task_norm, aggregate, by_suite, secs, envs, variants, data)
    summary = out / "summary.md"
    summary.write_text(_summary_md(dirs, runs, tables, figures, reps, data, out, strips))
    index = out / "index.html"
    index.write_text(_index_html(dirs, runs, tables, figures, reps, data, strips))
    return [p for _, paths in figures for p in paths] + [st.png for st in strips] + [summary, index]


# --- statistics -------------------------------------------------------------------------


def final_scores(m: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, seed): the seed's eval/return at its last evaluation (column `step`)."""
    ev = m[m["metric"] == EVAL]
    cols = ["env", "variant", "ratio_group", "synthetic_ratio", "run", "seed", "step", "value"]
    if ev.empty:
        return pd.DataFrame(columns=cols)
    idx = ev.groupby(["run", "seed"], observed=True)["step"].idxmax()
    out = ev.loc[idx, cols].copy()
    for c in ("env", "variant", "ratio_group", "run"):
        out[c] = out[c].astype(str)
    return out.reset_index(drop=True)


def _final_estimates(final: pd.DataFrame, reps: int) -> dict[tuple[str, str], F.Estimate]:
    return {(env, variant): F.Estimate(*stats.iqm_with_ci(g["value"].to_numpy()[:, None], reps))
            for (env, variant), g in final.groupby(["env", "variant"])}


@dataclass
class Normalised:
    """Final returns divided by each variant's baseline IQM on the same task (1.0 = as good as the baseline)."""

    per_task: dict[str, dict[str, F.Estimate]]
    """{env: {variant: its final-return IQM [CI] / its baseline's IQM}}; envs with no normalised variant are absent."""
    scores: dict[str, dict[str, np.ndarray]]
    """{variant: {env: the normalised final return of each seed, shape (seeds,)}}."""
    aggregate: dict[str, F.Estimate]
    """{variant: task-weighted IQM [95% stratified-bootstrap CI] of `scores[variant]` over its tasks}."""
    notes: list[str]
    """Tasks left out for some variants (baseline missing there, or its IQM not positive)."""


def normalise_to_baselines(final: pd.DataFrame, final_est: dict[tuple[str, str], F.Estimate],
                           baselines: dict[str, str], sac_variant: str | None, reps: int) -> Normalised:
    """Normalise every variant in `baselines` ({variant: baseline variant}, see RunData) to its baseline, per task.

    `final` is `final_scores` (one row per seed), `final_est` the per-(env, variant) IQM estimates. A seed's score
    is its final return over the baseline's IQM on that task, held fixed in the bootstrap. A variant whose
    baseline has no runs on a task, or a non-positive IQM there, is left out on that task with a note.
    """
    per_task: dict[str, dict[str, F.Estimate]] = {}
    scores: dict[str, dict[str, np.ndarray]] = {}
    missing: dict[tuple[str, str], list[str]] = {}  # (env, baseline) -> variants left out
    for env, g in final.groupby("env"):
        for variant, gv in g.groupby("variant"):
            base = baselines.get(variant)
            if base is None:
                continue
            ref = final_est.get((env, base))
            if ref is None or not ref.point > 0:
                missing.setdefault((env, base), []).append(variant)
                continue
            est = final_est[(env, variant)]
            per_task.setdefault(env, {})[variant] = F.Estimate(est.point / ref.point, est.lo / ref.point,
                                                               est.hi / ref.point)
            scores.setdefault(variant, {})[env] = stats.normalise_to_reference(gv["value"].to_numpy(), ref.point)
    aggregate = {v: F.Estimate(*stats.iqm_with_ci(list(per_env.values()), reps)) for v, per_env in scores.items()}
    notes = [_left_out_note(env, base, variants, final_est.get((env, base)), base == sac_variant)
             for (env, base), variants in sorted(missing.items(), key=lambda kv: (env_sort_key(kv[0][0]), kv[0][1]))]
    return Normalised(per_task, scores, aggregate, notes)


def sac_normalised(
    final: pd.DataFrame, final_est: dict[tuple[str, str], F.Estimate], sac_variant: str | None, reps: int
) -> tuple[dict[str, dict[str, F.Estimate]], dict[str, F.Estimate], list[str]]:
    """Every variant normalised to `sac_variant` (all baselines SAC): (per_task, aggregate, notes) as in
    `normalise_to_baselines`. Returns ({}, {}, []) when there is no SAC reference."""
    if sac_variant is None:
        return {}, {}, []
    norm = normalise_to_baselines(final, final_est, {v: sac_variant for v in final["variant"].unique()},
                                  sac_variant, reps)
    return norm.per_task, norm.aggregate, norm.notes


def _left_out_note(env: str, base: str, variants: list[str], ref: F.Estimate | None, is_sac: bool) -> str:
    """Why `variants` are not normalised on `env`: their baseline `base` has no runs there, or no positive IQM."""
    variants = sorted(variants, key=variant_sort_key)
    them = f"{', '.join(variants)} (normalised to it) {'is' if len(variants) == 1 else 'are'}"
    if ref is None:
        return f"{task_title(env)}: no {base} runs, so {them} left out of the normalised results on this task."
    if is_sac:  # today's wording when SAC is the baseline
        return (f"{task_title(env)}: SAC's final-return IQM is {ref.point:.4g} (not positive), so the task is left "
                "out of the SAC-normalised results.")
    return (f"{task_title(env)}: {base}'s final-return IQM is {ref.point:.4g} (not positive), so {them} left out of "
            "the normalised results on this task.")


def suite_aggregates(scores: dict[str, dict[str, np.ndarray]], baselines: dict[str, str], reps: int
                     ) -> dict[str, dict[str, tuple[F.Estimate, int, int]]]:
    """STFL Figure 1's numbers: {suite: {variant: (aggregate [CI], tasks, seeds)}} over each suite's tasks.

    Only variants normalised to another variant (not references, normalised to themselves). The aggregate is
    the same task-weighted IQM with a stratified-bootstrap CI as the all-task one, over the suite's tasks.
    Suites come in runs.SUITE_ORDER (Gym, DMC), then any others.
    """
    out: dict[str, dict[str, tuple[F.Estimate, int, int]]] = {}
    for variant, per_env in scores.items():
        if baselines.get(variant, variant) == variant:
            continue
        by_suite: dict[str, list[np.ndarray]] = {}
        for env, s in per_env.items():
            by_suite.setdefault(parse_env(env)[0], []).append(s)
        for suite, tasks in by_suite.items():
            est = F.Estimate(*stats.iqm_with_ci(tasks, reps))
            out.setdefault(suite, {})[variant] = (est, len(tasks), sum(len(t) for t in tasks))
    def order(suite: str) -> tuple:
        return (SUITE_ORDER.index(suite) if suite in SUITE_ORDER else len(SUITE_ORDER), suite)

    return {suite: dict(sorted(out[suite].items(), key=lambda kv: variant_sort_key(kv[0])))
            for suite in sorted(out, key=order)}


def _budget_notes(runs: pd.DataFrame, baselines: dict[str, str], per_task: dict[str, dict[str, F.Estimate]]
                  ) -> list[str]:
    """A note per task where a variant and its baseline were configured for different numbers of env steps."""
    steps = runs.groupby(["env", "variant"])["configured_steps"].agg(lambda x: sorted(set(x))).to_dict()
    notes = []
    for env in sorted(per_task, key=env_sort_key):
        for variant in sorted(per_task[env], key=variant_sort_key):
            base = baselines[variant]
            if base != variant and steps[(env, variant)] != steps[(env, base)]:
                fmt = lambda s: "/".join(map(F.format_steps, s))  # noqa: E731
                notes.append(f"{task_title(env)}: {variant} ran {fmt(steps[(env, variant)])} env steps but its "
                             f"baseline {base} ran {fmt(steps[(env, base)])}, so their ratio compares different "
                             "budgets.")
    return notes


def _only_sac(data: RunData) -> bool:
    """Whether every normalised variant is divided by the SAC reference (today's SAC-normalised wording applies)."""
    return all(b in (v, data.sac_variant) for v, b in data.baselines.items())


def synthetic_ratio_points(final: pd.DataFrame, runs: pd.DataFrame, reps: int) -> dict[str, dict[str, list]]:
    """{env: {family: [(S, Estimate, variant), ...]}} for tasks whose model-based runs use more than one S."""
    mb = final[final["synthetic_ratio"].notna()]
    out: dict[str, dict[str, list]] = {}
    for env in sorted(mb["env"].unique(), key=env_sort_key):
        g = mb[mb["env"] == env]
        if g["synthetic_ratio"].nunique() < 2:
            continue
        fams: dict[str, list] = {}
        for (family, s, variant), gs in g.groupby(["ratio_group", "synthetic_ratio", "variant"]):
            est = F.Estimate(*stats.iqm_with_ci(gs["value"].to_numpy()[:, None], reps))
            fams.setdefault(family, []).append((float(s), est, variant))
        out[env] = fams
    return out


def seconds_per_step(m: pd.DataFrame, runs: pd.DataFrame) -> dict[tuple[str, str], tuple[float, list[int]]]:
    """{(env, variant): (mean over run folders of seconds per env step, [seeds per run folder])}."""
    t = m[m["metric"] == SPS]
    per_run = {}
    for run, g in t.groupby("run", observed=True):
        rate = g.groupby("step")["value"].mean().sort_index()
        rate = rate[rate > 0]
        if rate.empty:
            continue
        steps = rate.index.to_numpy(dtype=np.float64)
        n = np.diff(np.concatenate([[0.0], steps]))
        per_run[str(run)] = float(np.sum(n / rate.to_numpy()) / np.sum(n))
    out: dict[tuple[str, str], tuple[float, list[int]]] = {}
    for (env, variant), g in runs.groupby(["env", "variant"]):
        vals = [(per_run[r], s) for r, s in zip(g["run"], g["program_seeds"]) if r in per_run]
        if vals:
            out[(env, variant)] = (float(np.mean([v for v, _ in vals])), [s for _, s in vals])
    return out


def _model_error_notes(runs: pd.DataFrame, m: pd.DataFrame) -> list[str]:
    """A note for learned-model runs that logged only the own-target error (older runs)."""
    err = m[m["metric"].isin(["model/pct_error", "model/pct_error_next_state"])]
    logged = err.groupby("run", observed=True)["metric"].agg(lambda x: set(x.astype(str))).to_dict()
    old = [r for r in runs.loc[runs["state_target"] != "", "run"]
           if logged.get(r) == {"model/pct_error"}]
    if not old:
        return []
    return [f"{len(old)} run(s) ({', '.join(f'`{r}`' for r in old[:5])}{', ...' if len(old) > 5 else ''}) logged "
            "`model/pct_error` but not `model/pct_error_next_state` (written by an older dynalab), so they are "
            "missing from the next-state model-error figure."]


def _curves(m: pd.DataFrame, env: str, metric: str, linestyle: str, reps: int) -> list[F.Curve]:
    g = m[(m["env"] == env) & (m["metric"] == metric)]
    g = g[np.isfinite(g["value"].to_numpy(dtype=np.float64))]  # NaN = not measured: a gap, not a point
    curves = []
    for variant, gv in g.groupby("variant", observed=True):
        wide = gv.pivot_table(index=["run", "seed"], columns="step", values="value", aggfunc="mean", observed=True)
        if wide.empty:
            continue
        point, lo, hi = stats.iqm_curve_with_ci(wide.to_numpy(), reps)
        steps = wide.columns.to_numpy()
        ok = np.isfinite(point)
        curves.append(F.Curve(str(variant), steps[ok], point[ok], lo[ok], hi[ok], linestyle))
    return curves


# --- text -------------------------------------------------------------------------------


def _num(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    a = abs(x)
    if a >= 1000:
        return f"{x:,.0f}"
    if a >= 100:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%" if abs(x) >= 0.1 else f"{100 * x:.1f}%"


def _ratio(x: float) -> str:
    """A normalised return as a ratio (1.00 = as good as the baseline), as STFL Figure 1's axis."""
    return f"{x:.2f}" if abs(x) >= 0.1 else f"{x:.2g}"


def _over(variant: str, data: RunData) -> str:
    """'ALM / ALM without Dyna': a variant over its baseline; a reference (normalised to itself) alone."""
    base = data.baselines[variant]
    return variant if base == variant else f"{variant} / {base}"


def _counted(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def _tables(runs, final, final_est, per_task_norm, aggregate, by_suite, secs, envs, variants, data
            ) -> dict[str, Table]:
    tables: dict[str, Table] = {}
    n_seeds = final.groupby(["env", "variant"]).size().to_dict()
    mixed = (final.groupby(["env", "variant"])["step"].nunique() > 1).to_dict()
    rows = []
    for env in envs:
        row = [task_title(env)]
        for v in variants:
            est = final_est.get((env, v))
            row.append("-" if est is None else f"{_num(est.point)} [{_num(est.lo)}, {_num(est.hi)}] "
                       f"(n={n_seeds[(env, v)]}){' †' if mixed[(env, v)] else ''}")
        rows.append(row)
    note = ("† The seeds' final evaluations are at different env steps (a run not finished yet, or runs of different "
            "lengths); see the Runs table." if any(mixed.values()) else "")
    tables["final"] = Table(["Task"] + variants, rows, note)

    only_sac = _only_sac(data)
    if per_task_norm:
        norm_variants = [v for v in variants if any(v in per_task_norm[e] for e in per_task_norm)]
        rows = []
        for env in [e for e in envs if e in per_task_norm]:
            cells = []
            for v in norm_variants:
                est = per_task_norm[env].get(v)
                cells.append("-" if est is None else f"{_pct(est.point)} [{_pct(est.lo)}, {_pct(est.hi)}]")
            rows.append([task_title(env)] + cells)
        # With baselines other than SAC each column says what it was divided by ("ALM / ALM without Dyna").
        headers = norm_variants if only_sac else [_over(v, data) for v in norm_variants]
        tables["normalised"] = Table(["Task"] + headers, rows)
        rows, equal, unequal = [], [], []
        for v in norm_variants:
            est = aggregate[v]
            tasks = [e for e in envs if e in per_task_norm and v in per_task_norm[e]]
            counts = [n_seeds[(e, v)] for e in tasks]
            if len(set(counts)) == 1:
                per = str(counts[0])
                equal.append(f"{v} {counts[0]} x {len(tasks)}")
            else:
                per = f"{min(counts)}-{max(counts)} ‡"
                unequal.append(f"{v} (" + ", ".join(f"{task_title(e)} {n}" for e, n in zip(tasks, counts))
                               + f"; repeated to {math.lcm(*counts)} per task)")
            base = [] if only_sac else ["itself (reference)" if data.baselines[v] == v else data.baselines[v]]
            rows.append([v] + base + [_pct(est.point), f"[{_pct(est.lo)}, {_pct(est.hi)}]", str(len(tasks)),
                                      str(sum(counts)), per])
        note = "Every task weighs the same in the aggregate, whatever its seed count."
        if equal:
            note += (" Equal counts (seeds x tasks): " + "; ".join(equal) + ": rliable's IQM of that runs x tasks "
                     "matrix.")
        if unequal:
            note += (" ‡ Unequal counts: " + "; ".join(unequal) + ": each seed of a task with n seeds counts 1/n of "
                     "that task, i.e. rliable's IQM of the runs x tasks matrix with each task's seeds repeated to the "
                     "least common multiple of the counts. No seed is dropped.")
        value = (["IQM of SAC-normalised final return"] if only_sac else
                 ["Baseline (divided by)", "IQM of final return normalised to its baseline"])
        tables["aggregate"] = Table(["Variant"] + value + ["95% CI", "Tasks", "Seeds", "Seeds per task"], rows, note)

    if by_suite:
        rows = []
        for suite, per_variant in by_suite.items():
            for v, (est, n_tasks, n_seeds) in per_variant.items():
                rows.append([SUITES.get(suite, suite) or "(no suite)", v, data.baselines[v], _ratio(est.point),
                             f"[{_ratio(est.lo)}, {_ratio(est.hi)}]", str(n_tasks), str(n_seeds)])
        tables["dyna_vs_base"] = Table(
            ["Suite", "Variant", "Base (divided by)", "IQM of final return / base's IQM", "95% CI", "Tasks", "Seeds"],
            rows, "1.00 means as good as its base without Dyna; every task of the suite weighs the same.")

    if secs:
        rows = []
        for env in envs:
            row = [task_title(env)]
            for v in variants:
                if (env, v) not in secs:
                    row.append("-")
                    continue
                value, seeds = secs[(env, v)]
                per = "/".join(str(s) for s in sorted(set(seeds)))
                row.append(f"{value:.3g} s ({len(seeds)} run{'s' if len(seeds) > 1 else ''}, {per} seeds/run)")
            rows.append(row)
        tables["seconds"] = Table(["Task"] + variants, rows)

    rows = []
    last_eval = final.groupby("run")["step"].agg(["min", "max"]).to_dict("index")
    ordered = sorted(runs.itertuples(), key=lambda r: (env_sort_key(r.env), variant_sort_key(r.variant), r.run))
    for r in ordered:
        ev = last_eval.get(r.run)
        ev_text = "none yet" if ev is None else (F.format_steps(ev["max"]) if ev["min"] == ev["max"]
                                                 else f"{F.format_steps(ev['min'])}-{F.format_steps(ev['max'])}")
        status = "finished" if r.finished else f"running/stopped at {F.format_steps(r.last_step)}"
        rows.append([r.run, task_title(r.env), r.variant, ", ".join(map(str, r.seeds)),
                     F.format_steps(r.configured_steps), ev_text, status])
    tables["runs"] = Table(["Run folder", "Task", "Variant", "Seeds", "Steps", "Final eval at", "Status"], rows)
    return tables


def _method(reps: int, data: RunData) -> str:
    sac = data.sac_variant or "SAC"
    return (
        "Scores are aggregated with the interquartile mean (IQM: the mean of the middle 50% of the scores, "
        "a 25% trimmed mean, as rliable's `aggregate_iqm`). Confidence intervals are 95% percentile "
        f"stratified-bootstrap intervals from rliable (`get_interval_estimates`) with {reps} bootstrap "
        "replications: seeds are resampled with replacement within each task; the bootstrap RNG is seeded (seed "
        f"{stats.BOOTSTRAP_SEED}) for every estimate, so the report is reproducible. "
        "**Final return** of a seed: its `eval/return` (mean return of the deterministic policy over the "
        "evaluation episodes) at its last evaluation, i.e. at the configured number of steps for a finished run and "
        "the latest evaluation for a run that is still going (see the Runs table). Seeds of the same task and "
        "variant pool across run folders; n is the number of seeds. "
        + _normalised_method(data) +
        "the same whatever its seed count (rliable's runs x "
        "tasks convention): with n seeds on every task it is rliable's `aggregate_iqm` of the (n runs x tasks) "
        "matrix; when tasks have unequal counts, each seed of a task with n seeds counts 1/n of that task, i.e. the "
        "IQM of the runs x tasks matrix in which each task's seeds are repeated to the least common multiple of the "
        "counts (no seed is dropped; the aggregate table lists the counts). Its CI uses the same stratified "
        "bootstrap (seeds resampled within each task, keeping the task's count). "
        "**Dyna vs its base** (STFL Figure 1 style): the same aggregate over the tasks of each suite (Gym, DMC) "
        "separately, for every variant normalised to another variant (e.g. MBPO to SAC, ALM to ALM without Dyna); 1.0 "
        "means as good as its base without Dyna. "
        "**Training curves** show the IQM across seeds at each evaluation (or logging) step with a 95% bootstrap "
        "band (whole seeds resampled); a metric not logged at a step (e.g. `q/mean_synthetic` before the synthetic "
        "buffer holds data) is a gap there, never a zero. "
        "**Model error** across variants is `model/pct_error_next_state`, 100 ||predicted s' - s'|| / ||s'|| on real "
        "data: the same quantity whatever the model's target. The error on the model's own target "
        "(`model/pct_error`: on s'-s for residual models such as MBPO, on s' for direct ones such as FTFL, so not "
        "comparable between them) is drawn only for residual-target variants, as in STFL Figs 6-7. "
        "**Seconds per env step**: wall-clock time of a run's logged intervals divided by the environment steps they "
        "cover (1/`time/env_steps_per_sec` weighted by interval length, so it includes warm-up, evaluation and "
        "checkpoints), averaged over the variant's run folders; one env step advances all seeds of a run folder "
        "together, so compare runs with the same seeds per run on the same hardware. "
        "**Variants** are named by the run's label, else its algorithm; settings that differ between runs of the "
        "same name on a task are appended, e.g. `MBPO (S=0.5)`; settings an algorithm ignores (e.g. `sac.*` and "
        "`model.*` for ALM, `alm.*` for the others) never split variants."
    )


def _normalised_method(data: RunData) -> str:
    """The method text on normalised scores, ending before "the same whatever its seed count"."""
    sac = data.sac_variant or "SAC"
    if _only_sac(data):
        return (
            f"**SAC-normalised** score: a seed's final return divided by {sac}'s final-return IQM on the same task "
            "(a fixed divisor in the bootstrap; tasks where it is not positive are left out); per task this is the "
            f"variant's IQM [CI] divided by {sac}'s IQM. The **aggregate** is the IQM of the normalised seeds of the "
            "tasks the variant shares with SAC, in which every task weighs ")
    return (
        "**Normalised** score: a seed's final return divided by its baseline's final-return IQM on the same task "
        "(a fixed divisor in the bootstrap). A variant's baseline is the variant its runs name in their `baseline` "
        f"setting (e.g. ALM without Dyna for ALM), else {sac}; a baseline that names no baseline of its own is a "
        "reference, normalised to itself as SAC is. Tasks where the baseline has no runs or a non-positive IQM are "
        "left out for the variants normalised to it (see the notes); per task this is the variant's IQM [CI] divided "
        "by its baseline's IQM. The **aggregate** is the IQM of the normalised seeds of the tasks the variant shares "
        "with its baseline, in which every task weighs ")


def _normalised_text(data: RunData) -> tuple[str, str, str]:
    """(heading, per-task sentence, aggregate sentence) of the normalised section, in markdown."""
    if _only_sac(data):
        return ("Relative to SAC",
                f"Per task: the variant's final-return IQM [95% CI] as a percentage of {data.sac_variant}'s IQM.",
                "Aggregate over tasks: IQM of the SAC-normalised final returns, every task weighing the same "
                "whatever its seed count; stratified bootstrap.")
    return ("Relative to each variant's baseline",
            "Per task: the variant's final-return IQM [95% CI] as a percentage of its baseline's IQM on the same "
            "task; each column is `variant / baseline` (a reference, normalised to itself, stands alone).",
            "Aggregate over tasks: IQM of the final returns normalised to each variant's baseline, every task "
            "weighing the same whatever its seed count; stratified bootstrap.")


DYNA_VS_BASE_TEXT = ("STFL Figure 1 style: each variant's final return over its own base without Dyna (the baseline it "
                     "is normalised to, e.g. MBPO over SAC, ALM over ALM without Dyna) on the same tasks, aggregated "
                     "per suite: IQM of the normalised seeds [95% stratified-bootstrap CI], every task weighing the "
                     "same.")


def _no_normalisation(data: RunData) -> str:
    if not _only_sac(data):
        return ("No normalised results: no variant shares a task with a baseline that has a positive final return "
                "there yet.")
    if data.sac_variant is None:
        return ("No SAC reference runs (algo sac with an empty label or the label SAC), so no SAC-normalised "
                "results.")
    return f"No SAC-normalised results: {data.sac_variant} has no positive final return on any task yet."


# --- policy videos ------------------------------------------------------------------------

STRIP_FRAMES = 6
STRIP_FRAME_INCHES = 1.5  # height of one frame; at STRIP_DPI a frame is 150 px tall
STRIP_DPI = 100
VIDEOS_TEXT = ("One episode of the deterministic policy (the action evaluation takes) per task and variant, from the "
               "run folders' videos (`dynalab video`): the newest checkpoint's policy, the lowest seed and episode "
               "rendered for it, frames evenly spaced over the episode. The MP4s play it in real time.")


@dataclass
class VideoStrip:
    """A frame strip of one rendered episode, standing for one (task, variant) in the report."""

    env: str
    variant: str
    png: Path
    caption: str
    """Markdown: which episode (seed, policy step, return, length), and the video's path."""


def _videos_of(run) -> list[tuple[dict, Path]]:
    """(description, MP4 path) of every video `dynalab video` wrote for this run (a row of the runs table)."""
    folder = Path(run.path) / "videos"
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("*.json")):
        try:
            info = json.loads(path.read_text())
            mp4 = next((folder / f for f in info["files"] if f.endswith(".mp4")), None)
            value = info["sweep_value"]
            if value is None:
                matches = True
            else:  # a swept program: its runs are named "<folder> [<field>=<value>]" (runs.load_runs)
                short = SHORT_NAMES.get(info["sweep_field"], info["sweep_field"])
                matches = run.run.endswith(f" [{short}={float(value):g}]")
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a description written by dynalab video
        if matches and mp4 is not None and mp4.is_file():
            found.append((info, mp4))
    return found


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def video_strips(runs: pd.DataFrame, fig_dir: Path, notes: list[str]) -> list[VideoStrip]:
    """Draw one frame strip per (task, variant) that has videos; returns them in report order.

    The episode shown: the newest checkpoint's policy, then the lowest seed and episode, over the run
    folders of that task and variant. STRIP_FRAMES frames evenly spaced from the first to the last
    frame, each STRIP_FRAME_INCHES x STRIP_DPI pixels tall, into fig_dir/video_<task>_<variant>_<hash>.png
    (the hash keeps names unique). A video that cannot be decoded is left out with a note in `notes`.
    """
    from matplotlib.figure import Figure

    from dynalab.video import read_frames

    strips = []
    groups = sorted(runs.groupby(["env", "variant"]),
                    key=lambda kv: (env_sort_key(kv[0][0]), variant_sort_key(kv[0][1])))
    for (env, variant), group in groups:
        found = [v for r in group.itertuples() for v in _videos_of(r)]
        if not found:
            continue
        info, mp4 = min(found, key=lambda v: (-v[0]["step"], v[0]["seed"], v[0]["episode"], str(v[1])))
        n = int(info["length"])
        try:
            frames = read_frames(mp4, np.unique(np.linspace(0, n - 1, STRIP_FRAMES).round().astype(int)))
        except Exception as e:  # whatever the decoder raises for a damaged file
            notes.append(f"The video `{mp4}` could not be read ({type(e).__name__}), so {task_title(env)}, {variant} "
                         "has no frame strip.")
            continue
        if not frames:
            continue
        h, w = frames[0][1].shape[:2]
        decimals = 2 if (n - 1) / info["fps"] < 5 else 1  # short episodes: frames 0.1 s apart or less
        with mpl.rc_context(F.STYLE):
            fig = Figure(figsize=(len(frames) * STRIP_FRAME_INCHES * w / h, STRIP_FRAME_INCHES + 0.3), dpi=STRIP_DPI)
            axes = fig.subplots(1, len(frames), squeeze=False)[0]
            for ax, (i, frame) in zip(axes, frames):
                ax.imshow(frame, interpolation="antialiased")
                ax.set_title(f"t = {i / info['fps']:.{decimals}f} s", fontsize=8, pad=2)
                ax.set_axis_off()
            fig.subplots_adjust(left=0.005, right=0.995, bottom=0.01, top=1 - 0.3 / (STRIP_FRAME_INCHES + 0.3),
                                wspace=0.03)
            key = hashlib.sha1(f"{env}\0{variant}".encode()).hexdigest()[:6]
            png = fig_dir / f"video_{_slug(env)}_{_slug(variant)}_{key}.png"
            fig.savefig(png, dpi=STRIP_DPI)
        member = f"seed {info['seed']}" + (f" ({info['sweep_field']}={float(info['sweep_value']):g})"
                                           if info["sweep_value"] is not None else "")
        cut = " (cut short by --max-steps)" if info["ended"] == "max steps" else f", {info['ended']}"
        caption = (f"{task_title(env)}, {variant}: {member}, evaluation episode {info['episode']}, policy of env step "
                   f"{info['step']:,}; return {info['episode_return']:.1f} over {n} steps{cut}. Video: `{mp4}`.")
        strips.append(VideoStrip(env, variant, png, caption))
    return strips


def _summary_md(dirs, runs, tables, figures, reps, data, out: Path, strips: list[VideoStrip]) -> str:
    parts = [
        "# dynalab report",
        "",
        f"{len(runs)} run folder(s) from {', '.join(f'`{d}`' for d in dirs)}; "
        f"{runs['env'].nunique()} task(s), {runs['variant'].nunique()} variant(s).",
        "",
        "## Final evaluation return",
        "",
        "IQM over seeds [95% stratified-bootstrap CI] of the final return; n = seeds.",
        "",
        tables["final"].markdown(),
        "",
    ]
    heading, per_task, aggregate = _normalised_text(data)
    if "normalised" in tables:
        parts += [f"## {heading}", "", per_task, "", tables["normalised"].markdown(), "", aggregate, "",
                  tables["aggregate"].markdown(), ""]
    else:
        parts += [f"## {heading}", "", _no_normalisation(data), ""]
    if "dyna_vs_base" in tables:
        parts += ["## Dyna vs its base (STFL Figure 1)", "", DYNA_VS_BASE_TEXT, "", tables["dyna_vs_base"].markdown(),
                  ""]
    if "seconds" in tables:
        parts += ["## Seconds per environment step", "", tables["seconds"].markdown(), ""]
    parts += ["## Runs", "", tables["runs"].markdown(), "", "## Method", "", _method(reps, data), ""]
    if data.notes:
        parts += ["## Notes", ""] + [f"- {n}" for n in data.notes] + [""]
    parts += ["## Figures", ""]
    for caption, paths in figures:
        png = paths[0].relative_to(out)
        parts += [f"![{caption}]({png.as_posix()})", "", f"*{caption}* ([PDF]({paths[1].relative_to(out).as_posix()}))",
                  ""]
    if strips:
        parts += ["## Policy videos", "", VIDEOS_TEXT, ""]
        for st in strips:
            parts += [f"![{task_title(st.env)}, {st.variant}]({st.png.relative_to(out).as_posix()})", "",
                      f"*{st.caption}*", ""]
    return "\n".join(parts)


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em;display:block;overflow-x:auto}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;white-space:nowrap}
th{background:#f3f3f3}tr:nth-child(even) td{background:#fafafa}
figure{margin:1.5em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9em;color:#555}p.note{font-size:.85em;color:#555}p.method{font-size:.92em}
code{background:#f3f3f3;padding:0 .2em}
"""


def _md_inline(text: str) -> str:
    """The few inline markdown marks the method text uses (**bold**, `code`) as HTML."""
    import re

    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def _index_html(dirs, runs, tables, figures, reps, data, strips: list[VideoStrip]) -> str:
    body = [f"<h1>dynalab report</h1><p>{len(runs)} run folder(s) from "
            f"{html.escape(', '.join(map(str, dirs)))}; {runs['env'].nunique()} task(s), "
            f"{runs['variant'].nunique()} variant(s).</p>"]
    body.append("<h2>Final evaluation return</h2><p>IQM over seeds [95% stratified-bootstrap CI]; n = seeds.</p>")
    body.append(tables["final"].html())
    heading, per_task, aggregate = _normalised_text(data)
    if "normalised" in tables and _only_sac(data):  # today's wording
        body.append(f"<h2>Relative to SAC</h2><p>Per task: final-return IQM [95% CI] as a percentage of "
                    f"{html.escape(data.sac_variant)}'s IQM.</p>")
    elif "normalised" in tables:
        body.append(f"<h2>{html.escape(heading)}</h2><p>{_md_inline(per_task)}</p>")
    else:
        body.append(f"<h2>{html.escape(heading)}</h2><p>{html.escape(_no_normalisation(data))}</p>")
    if "normalised" in tables:
        body.append(tables["normalised"].html())
        body.append(f"<p>{_md_inline(aggregate)}</p>")
        body.append(tables["aggregate"].html())
    if "dyna_vs_base" in tables:
        body.append(f"<h2>Dyna vs its base (STFL Figure 1)</h2><p>{html.escape(DYNA_VS_BASE_TEXT)}</p>")
        body.append(tables["dyna_vs_base"].html())
    if "seconds" in tables:
        body.append("<h2>Seconds per environment step</h2>" + tables["seconds"].html())
    body.append("<h2>Figures</h2>")
    for caption, paths in figures:
        b64 = base64.b64encode(paths[0].read_bytes()).decode("ascii")
        body.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{b64}">'
                    f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    if strips:
        body.append(f"<h2>Policy videos</h2><p>{_md_inline(VIDEOS_TEXT)}</p>")
        for st in strips:
            b64 = base64.b64encode(st.png.read_bytes()).decode("ascii")
            alt = html.escape(f"{task_title(st.env)}, {st.variant}")
            body.append(f'<figure><img alt="{alt}" src="data:image/png;base64,{b64}">'
                        f"<figcaption>{_md_inline(st.caption)}</figcaption></figure>")
    body.append("<h2>Runs</h2>" + tables["runs"].html())
    body.append(f'<h2>Method</h2><p class="method">{_md_inline(_method(reps, data))}</p>')
    if data.notes:
        body.append("<h2>Notes</h2><ul>" + "".join(f"<li>{_md_inline(n)}</li>" for n in data.notes) + "</ul>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>dynalab report</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
