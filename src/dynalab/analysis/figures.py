"""Report figures (matplotlib, no pyplot: figures are drawn off-screen and never touch the global backend).

Every figure is saved as PNG (150 dpi) and PDF. Colours are fixed per variant for the whole report:
each variant family (same name apart from the synthetic ratio) gets one hue, and the members of a
synthetic-ratio sweep get lighter (small S) to darker (large S) shades of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import matplotlib as mpl
import numpy as np
from matplotlib import colors as mcolors
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter, PercentFormatter

from dynalab.analysis.runs import SUITES, env_sort_key, parse_env, task_title

DPI = 150
STYLE = {
    "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "xtick.labelsize": 9, "ytick.labelsize": 9,
    "legend.fontsize": 9, "figure.titlesize": 12, "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.alpha": 0.25, "grid.linewidth": 0.6, "pdf.fonttype": 42,
}
HUES = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
        "tab:cyan", "tab:gray"]


@dataclass
class Curve:
    """One line of a panel: IQM across seeds with its 95% CI band, vs env steps."""

    variant: str
    steps: np.ndarray
    point: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    linestyle: str = "-"


@dataclass
class Estimate:
    """A point estimate with its 95% CI."""

    point: float
    lo: float
    hi: float


def palette(variants: Sequence[tuple[str, str, float]]) -> dict[str, tuple]:
    """Colour per name, from (variant, family, synthetic_ratio) triples given in display order.

    Families (and variants that are their own family) get a hue each; a family with several
    synthetic ratios gets shades from light (smallest S) to dark (largest S). Family names also get
    their hue, for figures that draw a whole family as one line.
    """
    families: dict[str, list[tuple[float, str]]] = {}
    for variant, family, ratio in variants:
        families.setdefault(family, []).append((-1.0 if ratio is None or math.isnan(ratio) else ratio, variant))
    out: dict[str, tuple] = {}
    for i, (family, members) in enumerate(families.items()):
        base = np.array(mcolors.to_rgb(HUES[i % len(HUES)]))
        out[family] = tuple(base)
        members = sorted(set(members))
        k = len(members)
        for j, (_, variant) in enumerate(members):
            t = 0.0 if k == 1 else -0.45 + 0.8 * j / (k - 1)  # -0.45 (light) ... +0.35 (dark)
            shade = base + (1 - base) * -t if t < 0 else base * (1 - t)
            out[variant] = tuple(np.clip(shade, 0, 1))
    return out


def format_steps(x: float, _pos: int | None = None) -> str:
    """Tick label for env steps: 0, 500, 20k, 250k, 1M, 1.5M."""
    a = abs(x)
    if a == 0:
        return "0"
    if a >= 1e6:
        return f"{x / 1e6:g}M"
    if a >= 1e3:
        return f"{x / 1e3:g}k"
    return f"{x:g}"


def save(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=DPI)
    fig.set_layout_engine("none")  # keep the constrained layout just computed: the PDF gets the same positions
    fig.savefig(paths[1])
    return paths


def _grid(n: int) -> tuple[int, int]:
    ncols = 1 if n == 1 else 2 if n in (2, 4) else 3 if n <= 9 else 4
    return math.ceil(n / ncols), ncols


def _new_figure(n_panels: int, xlabel: str, ylabel: str, panel_w: float = 4.0, panel_h: float = 3.1,
                extra_h: float = 1.0):
    """A grid of panels; x labels under the lowest panel of each column, y labels on the first column."""
    rows, cols = _grid(n_panels)
    if n_panels == 1:
        panel_w, panel_h = 6.4, 4.2
    fig = Figure(figsize=(max(panel_w * cols, 6.4), panel_h * rows + extra_h), layout="constrained")
    grid = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(grid.ravel()):
        r, c = divmod(i, cols)
        if i >= n_panels:
            ax.set_visible(False)
            continue
        if i + cols >= n_panels:  # nothing below it
            ax.set_xlabel(xlabel)
        if c == 0:
            ax.set_ylabel(ylabel)
    return fig, grid.ravel()[:n_panels]


def _spans_decades(values: list[np.ndarray], decades: float = 2.0) -> bool:
    v = np.concatenate([np.ravel(x) for x in values]) if values else np.array([])
    v = v[np.isfinite(v)]
    return bool(v.size) and bool(np.all(v > 0)) and np.log10(v.max() / v.min()) >= decades


def _log_y(ax, values: list[np.ndarray]) -> None:
    """Log y axis; a panel spanning under ~1.5 decades gets 1-2-5 ticks in plain numbers."""
    ax.set_yscale("log")
    ax.yaxis.set_minor_formatter(NullFormatter())
    if not _spans_decades(values, 1.5):
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _pos: f"{y:g}"))


def _legend(fig: Figure, handles: list) -> None:
    """One legend for the figure, below the panels (never over data), in as few rows as fit its width."""
    width = fig.get_figwidth() - 0.3
    item = max(0.55 + 0.075 * len(h.get_label()) for h in handles)  # inches: handle + label at 9 pt
    n = len(handles)
    ncols = max(1, min(n, int(width // item)))
    rows = math.ceil(n / ncols)
    # matplotlib fills columns first (np.array_split into ncols); order the handles so they read by rows.
    sizes = [len(a) for a in np.array_split(np.arange(n), ncols)]
    ordered = [handles[r * ncols + c] for c in range(ncols) for r in range(rows) if r < sizes[c]]
    fig.legend(handles=ordered, loc="outside lower center", ncols=ncols, frameon=False)


def _grouped_positions(groups: list[str], members: dict[str, list[str]], slots: int = 0
                       ) -> tuple[dict[tuple[str, str], float], float]:
    """Bar centres for grouped bars, each group's present members centred on the group's tick.

    The bar width is 0.8 / max(slots, largest group, 2), so bars keep one width across panels.
    """
    width = 0.8 / max(slots, max((len(members[g]) for g in groups), default=1), 2)
    pos = {}
    for i, g in enumerate(groups):
        k = len(members[g])
        for j, v in enumerate(members[g]):
            pos[(g, v)] = i + (j - (k - 1) / 2) * width
    return pos, width


def _variant_handles(variants: list[str], colours: dict[str, tuple]) -> list:
    return [Line2D([], [], color=colours[v], lw=2, label=v) for v in variants]


def curve_grid(
    out_dir: Path,
    name: str,
    title: str,
    ylabel: str,
    panels: dict[str, list[Curve]],
    colours: dict[str, tuple],
    variant_order: list[str],
    styles: list[tuple[str, str]] | None = None,
    log_if_decades: float | None = None,
) -> list[Path]:
    """One panel per task (keys are env ids), lines per variant with CI bands; a shared legend below."""
    panels = {env: lines for env, lines in panels.items() if lines}
    if not panels:
        return []
    with mpl.rc_context(STYLE):
        fig, axes = _new_figure(len(panels), "environment steps", ylabel)
        log = log_if_decades is not None and _spans_decades(
            [x for lines in panels.values() for c in lines for x in (c.point, c.lo, c.hi)], log_if_decades)
        for ax, (env, lines) in zip(axes, panels.items()):
            for c in sorted(lines, key=lambda c: (variant_order.index(c.variant), c.linestyle)):
                colour = colours[c.variant]
                ax.plot(c.steps, c.point, color=colour, lw=1.8 if len(c.steps) <= 150 else 1.2, ls=c.linestyle)
                ax.fill_between(c.steps, c.lo, c.hi, color=colour, alpha=0.18, lw=0)
            ax.set_title(task_title(env))
            ax.xaxis.set_major_locator(MaxNLocator(5))
            ax.xaxis.set_major_formatter(FuncFormatter(format_steps))
            ax.yaxis.set_major_locator(MaxNLocator(6))
            if log:
                _log_y(ax, [x for c in lines for x in (c.point, c.lo, c.hi)])
            ax.margins(x=0.02)
        fig.suptitle(title)
        present = [v for v in variant_order if any(c.variant == v for ls in panels.values() for c in ls)]
        handles = _variant_handles(present, colours)
        if styles:
            handles += [Line2D([], [], color="0.25", lw=1.6, ls=ls, label=label) for ls, label in styles]
        _legend(fig, handles)
        return save(fig, out_dir, name)


def sac_normalised(
    out_dir: Path,
    per_task: dict[str, dict[str, Estimate]],
    aggregate: dict[str, Estimate],
    colours: dict[str, tuple],
    variant_order: list[str],
    baselines: dict[str, str],
    sac_variant: str | None,
) -> list[Path]:
    """FTFL Fig 1 style: per-task final-return IQM as % of each variant's baseline, grouped by suite, and the
    aggregate (fractions in, percentages drawn).

    `baselines` maps each variant to the variant it was divided by (a reference maps to itself and gets no
    per-task bar, only its aggregate). When every bar has the same baseline the figure names it (today: SAC);
    otherwise the legend reads "variant / baseline". In the aggregate every task weighs the same, whatever its
    seed count (`stats.task_weighted_iqm`).
    """
    suites: dict[str, list[str]] = {}
    for env in sorted(per_task, key=env_sort_key):
        suites.setdefault(parse_env(env)[0], []).append(env)
    bars = [v for v in variant_order if any(v in per_task[e] for e in per_task) and baselines[v] != v]
    if not bars:
        return []
    shared = {baselines[v] for v in bars}
    single = next(iter(shared)) if len(shared) == 1 else None
    agg_variants = [v for v in variant_order if v in aggregate]
    task_widths = [max(len(envs), 1.2) for envs in suites.values()]
    per_slot = min(1.15, 12.0 / sum(task_widths))  # inches per task; the figure stays under ~16 in wide
    agg_inches = max(0.65 * len(agg_variants), 1.8)
    widths = task_widths + [agg_inches / per_slot]
    with mpl.rc_context(STYLE):
        fig = Figure(figsize=(max(7.0, per_slot * sum(widths) + 1.5), 4.6), layout="constrained")
        axes = fig.subplots(1, len(widths), sharey=True, gridspec_kw={"width_ratios": widths})
        axes = np.atleast_1d(axes)
        values = [100 * x for e in per_task.values() for v, est in e.items() if v in bars for x in (est.lo, est.hi)]
        values += [100 * x for est in aggregate.values() for x in (est.lo, est.hi)] + [100.0, 0.0]
        top, bottom = max(values), min(values)
        pad = 0.08 * (top - bottom)
        slots = max(sum(v in per_task[e] for v in bars) for e in per_task)
        for ax, (suite, envs) in zip(axes, suites.items()):
            pos, width = _grouped_positions(envs, {e: [v for v in bars if v in per_task[e]] for e in envs}, slots)
            for (env, v), x in pos.items():
                est = per_task[env][v]
                ax.bar(x, 100 * est.point, width=width * 0.92, color=colours[v], zorder=2, capsize=2.5,
                       yerr=[[100 * (est.point - est.lo)], [100 * (est.hi - est.point)]],
                       error_kw={"lw": 0.9, "ecolor": "0.2"})
            dense = per_slot < 0.9
            ax.set_xticks(range(len(envs)), [parse_env(e)[1] for e in envs], fontsize=8 if dense else None,
                          rotation=45 if dense else 30 if len(envs) > 2 else 0,
                          ha="right" if dense or len(envs) > 2 else "center", rotation_mode="anchor")
            ax.set_xlim(-0.6, len(envs) - 0.4)
            ax.set_title(SUITES.get(suite, suite))
        ax = axes[-1]
        for i, v in enumerate(agg_variants):
            est = aggregate[v]
            ax.bar(i, 100 * est.point, width=0.7, color=colours[v], zorder=2,
                   yerr=[[100 * (est.point - est.lo)], [100 * (est.hi - est.point)]], capsize=3,
                   error_kw={"lw": 0.9, "ecolor": "0.2"})
            k = sum(v in per_task[e] for e in per_task)
            ax.annotate(f"{k} task{'s' if k != 1 else ''}", (i, 100 * est.hi), xytext=(0, 3),
                        textcoords="offset points", ha="center", va="bottom", fontsize=8, color="0.3")
        ax.set_xticks(range(len(agg_variants)), agg_variants, rotation=30, ha="right")
        ax.set_xlim(-0.6, len(agg_variants) - 0.4)
        ax.set_title("Aggregate IQM\n(every task weighs the same)")
        for ax in axes:
            ax.axhspan(100, top + pad, color="tab:green", alpha=0.07, lw=0, zorder=0)
            ax.axhspan(bottom - pad, 100, color="tab:red", alpha=0.07, lw=0, zorder=0)
            ax.axhline(100, color="0.15", lw=1.1, ls="--", zorder=3)
            ax.grid(axis="x", visible=False)
        axes[0].set_ylim(bottom - pad, top + pad)
        axes[0].yaxis.set_major_formatter(PercentFormatter(decimals=0))
        of = "SAC" if single is not None and single == sac_variant else single or "its baseline"
        axes[0].set_ylabel(f"final return, % of {of} (IQM, 95% CI)")
        what = single or "each variant's baseline"
        fig.suptitle(f"Final return relative to {what} (dashed line = 100%)")
        label = lambda v: v if single is not None or baselines[v] == v else f"{v} / {baselines[v]}"  # noqa: E731
        handles = [Patch(color=colours[v], label=label(v)) for v in variant_order if v in bars or v in agg_variants]
        _legend(fig, handles)
        return save(fig, out_dir, "sac_normalised")


def dyna_vs_base(
    out_dir: Path,
    suites: dict[str, dict[str, tuple[Estimate, int, int]]],
    baselines: dict[str, str],
    colours: dict[str, tuple],
    variant_order: list[str],
) -> list[Path]:
    """STFL Figure 1 style: per suite, each variant's final return over its own base without Dyna.

    `suites[suite][variant]` holds (task-weighted IQM of the seeds' final return / base's IQM on the task,
    with its 95% stratified-bootstrap CI; tasks; seeds), as fractions (1.0 = as good as the base); `baselines`
    names each variant's base. One panel per suite (Gym, DMC, ...), one bar per variant, a dashed line at 1.0.
    """
    suites = {s: per for s, per in suites.items() if per}
    if not suites:
        return []
    slots = max(len(per) for per in suites.values())
    with mpl.rc_context(STYLE):
        fig = Figure(figsize=(max(6.4, len(suites) * (1.6 + 1.25 * slots)), 4.8), layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, len(suites), sharey=True))
        values = [x for per in suites.values() for est, _, _ in per.values() for x in (est.lo, est.hi)] + [0.0, 1.0]
        top, bottom = max(values), min(values)
        pad = 0.08 * (top - bottom)
        for ax, (suite, per) in zip(axes, suites.items()):
            names = [v for v in variant_order if v in per]
            for i, v in enumerate(names):
                est, _, _ = per[v]
                ax.bar(i, est.point, width=0.6, color=colours[v], zorder=2, capsize=4,
                       yerr=[[est.point - est.lo], [est.hi - est.point]], error_kw={"lw": 1.0, "ecolor": "0.2"})
                ax.annotate(f"{est.point:.2f}", (i, est.hi), xytext=(0, 3), textcoords="offset points", ha="center",
                            va="bottom", fontsize=8, color="0.25")
            labels = [f"{v} / {baselines[v]}\n({per[v][1]} task{'s' if per[v][1] != 1 else ''}, "
                      f"{per[v][2]} seed{'s' if per[v][2] != 1 else ''})" for v in names]
            ax.set_xticks(range(len(names)), labels, fontsize=8, rotation=20 if len(names) > 2 else 0,
                          ha="right" if len(names) > 2 else "center", rotation_mode="anchor")
            ax.set_xlim(-0.6, max(len(names), 2) - 0.4)
            ax.set_title(SUITES.get(suite, suite) or "(no suite)")
            ax.axhline(1.0, color="0.15", lw=1.1, ls="--", zorder=3)
            ax.grid(axis="x", visible=False)
        axes[0].set_ylim(min(0.0, bottom - pad), top + 2 * pad)
        axes[0].set_ylabel("final return / base's final return\n(task-weighted IQM, 95% CI)")
        fig.suptitle("STFL Figure 1 style: each variant over its own base\n"
                     "without Dyna (same tasks and budgets; dashed line: as good as its base)", fontsize="medium")
        return save(fig, out_dir, "dyna_vs_base")


def synthetic_ratio(
    out_dir: Path,
    panels: dict[str, dict[str, list[tuple[float, Estimate, str]]]],
    sac: dict[str, Estimate],
    colours: dict[str, tuple],
    family_order: list[str],
    sac_variant: str | None,
) -> list[Path]:
    """STFL Fig 8: final-return IQM vs synthetic ratio S per task; SAC as a dashed reference.

    `panels[env][family]` holds (S, estimate, variant) points; a family is a variant name without its S.
    """
    if not panels:
        return []
    with mpl.rc_context(STYLE):
        fig, axes = _new_figure(len(panels), "synthetic ratio S", "final evaluation return")
        for ax, (env, families) in zip(axes, panels.items()):
            ratios = sorted({p[0] for pts in families.values() for p in pts})
            for family in [f for f in family_order if f in families]:
                pts = sorted(families[family], key=lambda p: p[0])
                s = np.array([p[0] for p in pts])
                est = [p[1] for p in pts]
                y = np.array([e.point for e in est])
                err = np.array([[e.point - e.lo for e in est], [e.hi - e.point for e in est]])
                ax.errorbar(s, y, yerr=err, color=colours[family], lw=1.6, capsize=3, zorder=2)
                # Each point in its variant's colour, as in the other figures.
                ax.scatter(s, y, c=[colours[p[2]] for p in pts], s=42, edgecolors=colours[family], linewidths=1.2,
                           zorder=3)
            if env in sac and sac_variant:
                ref = sac[env]
                ax.axhline(ref.point, color=colours[sac_variant], ls="--", lw=1.4)
                ax.axhspan(ref.lo, ref.hi, color=colours[sac_variant], alpha=0.12, lw=0)
            ax.set_xticks(ratios, [f"{r:g}" for r in ratios])
            pad = 0.06 * (max(ratios) - min(ratios) or 1)
            ax.set_xlim(min(ratios) - pad, max(ratios) + pad)
            ax.set_title(task_title(env))
        fig.suptitle("Final return (IQM, 95% CI) vs synthetic ratio S (fraction of each batch from the model)"
                     if len(panels) > 1 else "Final return (IQM, 95% CI) vs synthetic ratio S")
        present = [f for f in family_order if any(f in fams for fams in panels.values())]
        handles = [Line2D([], [], color=colours[f], marker="o", lw=1.6, label=f) for f in present]
        if sac_variant and any(env in sac for env in panels):
            handles.append(Line2D([], [], color=colours[sac_variant], ls="--", lw=1.4,
                                  label=f"{sac_variant} (reference)"))
        _legend(fig, handles)
        return save(fig, out_dir, "synthetic_ratio")


def seconds_per_step(
    out_dir: Path,
    panels: dict[str, dict[str, float]],
    colours: dict[str, tuple],
    variant_order: list[str],
) -> list[Path]:
    """Grouped bars: wall-clock seconds per environment step, per task and variant."""
    if not panels:
        return []
    envs = list(panels)
    variants = [v for v in variant_order if any(v in panels[e] for e in envs)]
    pos, width = _grouped_positions(envs, {e: [v for v in variants if v in panels[e]] for e in envs})
    with mpl.rc_context(STYLE):
        fig = Figure(figsize=(min(14.0, max(6.4, 0.4 * len(pos) + 0.6 * len(envs) + 1.5)), 4.4),
                     layout="constrained")
        ax = fig.subplots()
        bar_inches = width * 0.92 * (fig.get_figwidth() - 1.2) / (len(envs) + 0.2)
        for (env, v), x in pos.items():
            ax.bar(x, panels[env][v], width=width * 0.92, color=colours[v], zorder=2)
            if len(pos) <= 40:
                text = f"{panels[env][v]:.3g}"
                ax.annotate(text, (x, panels[env][v]), xytext=(0, 2), textcoords="offset points", ha="center",
                            va="bottom", fontsize=7, color="0.25",
                            rotation=90 if 0.06 * len(text) > bar_inches else 0)
        if _spans_decades([np.array([panels[e][v] for e in envs for v in panels[e]])], 1.5):
            _log_y(ax, [np.array([panels[e][v] for e in envs for v in panels[e]])])
        else:
            ax.margins(y=0.08)
        labels = [task_title(e) for e in envs]
        slot = fig.get_figwidth() / len(envs)
        rotate = 0.075 * max(map(len, labels)) > 0.9 * slot
        ax.set_xticks(range(len(envs)), labels, rotation=(45 if slot < 0.9 else 30) if rotate else 0,
                      ha="right" if rotate else "center", rotation_mode="anchor", fontsize=8 if slot < 0.9 else None)
        ax.set_xlim(-0.6, len(envs) - 0.4)
        ax.grid(axis="x", visible=False)
        ax.set_ylabel("seconds per env step (wall clock)")
        ax.set_title("Training cost per environment step")
        handles = [Patch(color=colours[v], label=v) for v in variants]
        _legend(fig, handles)
        return save(fig, out_dir, "seconds_per_step")
