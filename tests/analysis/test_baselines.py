"""Per-variant baselines (ALM over ALM without Dyna, MBPO over SAC) and STFL Figure 1, on hand-made run folders.

Every run has 2 seeds, so a task's IQM is the mean of its two final returns (int(0.25 * 2) = 0 trimmed), and the
expected normalised values below are worked out by hand from the final returns written here.
"""

import dataclasses
import math
import shutil

import numpy as np
import pytest

from dynalab.analysis import report
from dynalab.analysis.report import make_report
from dynalab.analysis.runs import ReportError, load_runs
from dynalab.config import TrainConfig

from analysis_fakes import write_run  # tests/analysis/analysis_fakes.py

CHEETAH, WALKER, HOPPER = "dmc:cheetah-run", "dmc:walker-walk", "gym:Hopper-v5"
# (folder, algo, env, final returns of seeds 0 and 1, baseline). Task IQMs (means of two):
#   SAC:              cheetah 200, walker 500, Hopper 2000
#   MBPO:             cheetah 150, walker 375, Hopper 3000  -> over SAC: 0.75, 0.75, 1.5
#   ALM without Dyna: cheetah 300, walker 1000
#   ALM:              cheetah 300, walker 600               -> over ALM without Dyna: 1.0, 0.6 (over SAC: 1.5, 1.2)
RUNS = [
    ("sac-cheetah", "sac", CHEETAH, (100, 300), ""),
    ("sac-walker", "sac", WALKER, (400, 600), ""),
    ("sac-hopper", "sac", HOPPER, (1000, 3000), ""),
    ("mbpo-cheetah", "mbpo", CHEETAH, (100, 200), ""),
    ("mbpo-walker", "mbpo", WALKER, (250, 500), ""),
    ("mbpo-hopper", "mbpo", HOPPER, (3000, 3000), ""),
    ("nodyna-cheetah", "alm-nodyna", CHEETAH, (200, 400), ""),
    ("nodyna-walker", "alm-nodyna", WALKER, (800, 1200), ""),
    ("alm-cheetah", "alm", CHEETAH, (150, 450), "ALM without Dyna"),
    ("alm-walker", "alm", WALKER, (500, 700), "ALM without Dyna"),
]
REPS = 100


def _config(algo, env, baseline="", **changes) -> TrainConfig:
    settings = dict(seeds=2, steps=2000, eval_every=1000, log_every=1000, warmup_steps=500) | changes
    return TrainConfig(algo=algo, env=env, baseline=baseline, **settings)


def _write(root, folder, cfg, finals):
    """A finished run whose seeds return half their final return halfway and `finals` at the end."""
    rows = [(step, k, "eval/return", frac * v) for step, frac in ((cfg.steps // 2, 0.5), (cfg.steps, 1.0))
            for k, v in zip(cfg.seed_list(), finals)]
    return write_run(root / folder, cfg, rows, meta_dirs=False)


def _build(root, runs=RUNS, **overrides):
    """`runs` as folders under `root`; `overrides[folder]` replaces that run's baseline."""
    for folder, algo, env, finals, baseline in runs:
        _write(root, folder, _config(algo, env, overrides.get(folder, baseline)), finals)
    return root


def _normalised(root):
    data = load_runs([root])
    final = report.final_scores(data.metrics)
    norm = report.normalise_to_baselines(final, report._final_estimates(final, REPS), data.baselines,
                                         data.sac_variant, REPS)
    return data, norm


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = _build(tmp_path_factory.mktemp("baselines") / "runs")
    out = tmp_path_factory.mktemp("baselines-report")
    return root, out, make_report([root], out, reps=REPS)


def test_each_variant_is_divided_by_its_own_baseline(mixed):
    root, _, _ = mixed
    data, norm = _normalised(root)
    assert data.baselines == {"SAC": "SAC", "MBPO": "SAC", "ALM without Dyna": "ALM without Dyna",
                              "ALM": "ALM without Dyna"}
    runs = data.runs.set_index("run")
    assert runs.loc["runs/alm-cheetah", "baseline"] == "ALM without Dyna"
    assert math.isnan(runs.loc["runs/alm-cheetah", "synthetic_ratio"])  # ALM has no synthetic batches, as SAC
    assert math.isnan(runs.loc["runs/nodyna-walker", "synthetic_ratio"])
    assert runs.loc["runs/mbpo-walker", "synthetic_ratio"] == 0.95
    assert runs.loc["runs/alm-cheetah", "state_target"] == ""  # a latent model: no state-model diagnostics
    # ALM's seeds over ALM without Dyna's IQM (300, 1000), MBPO's over SAC's (200, 500, 2000).
    np.testing.assert_allclose(norm.scores["ALM"][CHEETAH], [150 / 300, 450 / 300])  # 0.5, 1.5
    np.testing.assert_allclose(norm.scores["ALM"][WALKER], [500 / 1000, 700 / 1000])  # 0.5, 0.7
    np.testing.assert_allclose(norm.scores["MBPO"][CHEETAH], [0.5, 1.0])
    np.testing.assert_allclose(norm.scores["MBPO"][WALKER], [0.5, 1.0])
    np.testing.assert_allclose(norm.scores["MBPO"][HOPPER], [1.5, 1.5])
    assert norm.per_task[CHEETAH]["ALM"].point == pytest.approx(1.0)  # 300 / 300 (over SAC it would be 1.5)
    assert norm.per_task[WALKER]["ALM"].point == pytest.approx(0.6)  # 600 / 1000 (over SAC: 1.2)
    assert norm.per_task[CHEETAH]["MBPO"].point == pytest.approx(0.75)
    assert norm.per_task[HOPPER]["MBPO"].point == pytest.approx(1.5)
    assert norm.per_task[WALKER]["ALM without Dyna"].point == pytest.approx(1.0)  # a reference, as SAC
    # Aggregates: ALM 0.5 0.5 0.7 1.5 -> drop one each side -> mean(0.5, 0.7) = 0.6 (over SAC: 1.2).
    # MBPO 0.5 0.5 1 1 1.5 1.5 -> int(6 / 4) = 1 each side -> mean(0.5, 1, 1, 1.5) = 1.0.
    assert norm.aggregate["ALM"].point == pytest.approx(0.6)
    assert norm.aggregate["MBPO"].point == pytest.approx(1.0)
    assert norm.notes == []
    # STFL Figure 1: per suite, only variants over another variant. DMC MBPO 0.5 0.5 1 1 -> mean(0.5, 1) = 0.75.
    by_suite = report.suite_aggregates(norm.scores, data.baselines, REPS)
    assert list(by_suite) == ["gym", "dmc"] and list(by_suite["dmc"]) == ["MBPO", "ALM"]
    assert [(v, round(e.point, 9), t, s) for v, (e, t, s) in by_suite["dmc"].items()] == [
        ("MBPO", 0.75, 2, 4), ("ALM", 0.6, 2, 4)]
    gym, tasks, seeds = by_suite["gym"]["MBPO"]
    assert (gym.point, gym.lo, gym.hi, tasks, seeds) == pytest.approx((1.5, 1.5, 1.5, 1, 2))  # both seeds 1.5


def test_report_says_which_baseline_each_variant_was_divided_by(mixed):
    _, out, files = mixed
    md = (out / "summary.md").read_text()
    assert "## Relative to each variant's baseline" in md and "## Relative to SAC" not in md
    assert "SAC-normalised" not in md  # a non-SAC baseline is in play: the wording says what was divided by what
    assert "| Task | SAC | MBPO / SAC | ALM / ALM without Dyna | ALM without Dyna |" in md
    assert "| DMC walker-walk | 100% [80%, 120%] | 75% " in md
    assert "| Variant | Baseline (divided by) | IQM of final return normalised to its baseline | 95% CI |" in md
    assert "| ALM | ALM without Dyna | 60% | " in md and "| MBPO | SAC | 100% | " in md
    assert "| ALM without Dyna | itself (reference) | 100% | " in md
    # STFL Figure 1's numbers, per suite.
    assert "## Dyna vs its base (STFL Figure 1)" in md
    assert "| Gym | MBPO | SAC | 1.50 | [1.50, 1.50] | 1 | 2 |" in md
    assert "| DMC | MBPO | SAC | 0.75 | " in md and "| DMC | ALM | ALM without Dyna | 0.60 | " in md
    assert "STFL Figure 1 style: each variant's final return over its own base without Dyna (MBPO over SAC, ALM over " \
           "ALM without Dyna" in md
    for ext, magic in (("png", b"\x89PNG\r\n\x1a\n"), ("pdf", b"%PDF-")):
        path = out / "figures" / f"dyna_vs_base.{ext}"
        assert path in files and path.read_bytes()[:len(magic)] == magic
    assert "](figures/dyna_vs_base.png)" in md
    page = (out / "index.html").read_text()
    assert "<h2>Dyna vs its base (STFL Figure 1)</h2>" in page and "<th>Base (divided by)</th>" in page
    assert page.count('src="data:image/png;base64,') == sum(f.suffix == ".png" for f in files)


def test_dyna_vs_base_figure_gets_the_suite_numbers_and_labels(mixed, tmp_path, monkeypatch):
    root, _, _ = mixed
    drawn = {}
    original = report.F.dyna_vs_base

    def spy(out_dir, suites, baselines, *args):
        drawn.update(suites=suites, baselines=baselines)
        return original(out_dir, suites, baselines, *args)

    monkeypatch.setattr(report.F, "dyna_vs_base", spy)
    make_report([root], tmp_path, reps=REPS)
    assert {s: {v: (round(e.point, 9), t, n) for v, (e, t, n) in per.items()} for s, per in drawn["suites"].items()} \
        == {"gym": {"MBPO": (1.5, 1, 2)}, "dmc": {"MBPO": (0.75, 2, 4), "ALM": (0.6, 2, 4)}}
    assert drawn["baselines"]["ALM"] == "ALM without Dyna" and drawn["baselines"]["MBPO"] == "SAC"


def test_a_missing_baseline_leaves_that_task_out_with_a_note(tmp_path):
    root = _build(tmp_path / "runs", [r for r in RUNS if r[0] != "nodyna-walker"])
    data, norm = _normalised(root)
    assert "ALM" not in norm.per_task[WALKER] and norm.per_task[CHEETAH]["ALM"].point == pytest.approx(1.0)
    assert list(norm.scores["ALM"]) == [CHEETAH]
    assert norm.aggregate["ALM"].point == pytest.approx(1.0)  # mean(0.5, 1.5): cheetah-run alone
    assert norm.per_task[WALKER]["MBPO"].point == pytest.approx(0.75)  # SAC is still there
    assert norm.notes == ["DMC walker-walk: no ALM without Dyna runs, so ALM (normalised to it) is left out of the "
                          "normalised results on this task."]
    make_report([root], tmp_path / "report", reps=REPS)
    md = (tmp_path / "report" / "summary.md").read_text()
    assert "- DMC walker-walk: no ALM without Dyna runs, so ALM (normalised to it) is left out" in md
    assert "| ALM | ALM without Dyna | 100% | [50%, 150%] | 1 | 2 | 2 |" in md
    assert "| DMC | ALM | ALM without Dyna | 1.00 | [0.50, 1.50] | 1 | 2 |" in md


def test_runs_of_one_variant_that_name_different_baselines_are_refused(tmp_path):
    root = _build(tmp_path / "runs", **{"alm-walker": "SAC"})
    with pytest.raises(ReportError, match=r"^runs of ALM name different baselines \('ALM without Dyna' in "
                                          r"runs/alm-cheetah, 'SAC' in runs/alm-walker\); give every run of a variant "
                                          r"the same --baseline"):
        load_runs([root])
    shutil.rmtree(root)
    _build(root, **{"alm-walker": ""})
    with pytest.raises(ReportError, match=r"'ALM without Dyna' in runs/alm-cheetah, none \(SAC\) in runs/alm-walker"):
        load_runs([root])


def test_an_unknown_baseline_is_noted_and_not_normalised(tmp_path):
    root = _build(tmp_path / "runs", **{"alm-cheetah": "ALM w/o Dyna", "alm-walker": "ALM w/o Dyna"})
    data, norm = _normalised(root)
    assert "ALM" not in data.baselines and "ALM" not in norm.aggregate
    assert data.baselines["ALM without Dyna"] == "SAC"  # nobody's baseline now: normalised to SAC as any variant
    assert any(n.startswith("ALM names the baseline 'ALM w/o Dyna', but no run has that name, so it is not "
                            "normalised; the variants are: SAC, MBPO, ALM, ALM without Dyna.") for n in data.notes)


def test_a_different_budget_from_the_baseline_is_noted(tmp_path):
    root = _build(tmp_path / "runs", [r for r in RUNS if not r[0].startswith("alm-")])
    _write(root, "alm-cheetah", _config("alm", CHEETAH, "ALM without Dyna", steps=4000), (150, 450))
    make_report([root], tmp_path / "report", reps=REPS)
    md = (tmp_path / "report" / "summary.md").read_text()
    assert ("- DMC cheetah-run: ALM ran 4k env steps but its baseline ALM without Dyna ran 2k, so their ratio "
            "compares different budgets.") in md


def test_settings_an_algorithm_ignores_do_not_split_variants(tmp_path):
    root = tmp_path / "runs"
    alm = _config("alm", CHEETAH)
    # ALM ignores SAC's, the state model's and the Dyna-only settings; the baseline is never compared.
    _write(root, "alm-a", alm, (1, 2))
    _write(root, "alm-b", dataclasses.replace(alm, seed=2, sac=dataclasses.replace(alm.sac, hidden=(64, 64)),
                                              model=dataclasses.replace(alm.model, width=64), synthetic_ratio=0.5,
                                              rollout_horizon=3), (1, 2))
    # ... but its own settings tell variants apart.
    _write(root, "alm-c", dataclasses.replace(alm, alm=dataclasses.replace(alm.alm, horizon=5)), (1, 2))
    # SAC and MBPO ignore ALM's settings.
    for algo in ("sac", "mbpo"):
        cfg = _config(algo, CHEETAH)
        _write(root, f"{algo}-a", cfg, (1, 2))
        _write(root, f"{algo}-b", dataclasses.replace(cfg, seed=2, alm=dataclasses.replace(cfg.alm, horizon=5)),
               (1, 2))
    _write(root, "nodyna", dataclasses.replace(_config("alm-nodyna", CHEETAH), sac=dataclasses.replace(
        alm.sac, hidden=(64, 64))), (1, 2))
    runs = load_runs([root]).runs
    variants = dict(zip(runs["run"], runs["variant"]))
    assert variants == {
        "runs/alm-a": "ALM (alm.horizon=3)", "runs/alm-b": "ALM (alm.horizon=3)", "runs/alm-c": "ALM (alm.horizon=5)",
        "runs/sac-a": "SAC", "runs/sac-b": "SAC", "runs/mbpo-a": "MBPO", "runs/mbpo-b": "MBPO",
        "runs/nodyna": "ALM without Dyna",
    }
