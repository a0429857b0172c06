"""`make_report` end to end: on tiny real runs of `dynalab train`, and on synthetic run folders."""

import dataclasses
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from dynalab import config as config_lib
from dynalab.agents.sac import SACConfig
from dynalab.algos import default_config
from dynalab.analysis import report
from dynalab.analysis.report import make_report
from dynalab.analysis.runs import ReportError, load_runs
from dynalab.config import TrainConfig
from dynalab.models.ensemble import ModelConfig
from dynalab.train import train

from analysis_fakes import PCT_ERROR_DELTA, PCT_ERROR_NEXT, fake_rows, write_run  # tests/analysis/analysis_fakes.py

SAC = TrainConfig(
    algo="sac", env="gym:InvertedPendulum-v5", seeds=2, seed=0, steps=240, replay_ratio=2, warmup_steps=100,
    batch_size=32, eval_every=60, eval_episodes=2, log_every=30, checkpoint_every=0, sac=SACConfig(hidden=(32, 32)),
)
MBPO = dataclasses.replace(
    SAC, algo="mbpo", rollouts_per_step=8, synthetic_retain_steps=20, model_refit_every=50,
    model=ModelConfig(ensemble_size=3, num_elites=2, width=32, depth=2, batch_size=32, refit_steps=20),
)
FIGURES = ["curves_eval_return", "sac_normalised", "dyna_vs_base", "synthetic_ratio", "diag_model_error",
           "diag_model_error_residual", "diag_q_values", "diag_rewards", "diag_model_variance", "seconds_per_step"]


@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("real") / "sweep"
    train(SAC, root / "sac", progress=False)
    # Both ratios in one vmapped program: the report must split it into one run per value.
    train(dataclasses.replace(MBPO, sweep_field="synthetic_ratio", sweep_values=(0.5, 0.95)), root / "mbpo",
          progress=False)
    return root


@pytest.fixture(scope="module")
def real_report(real_sweep, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return out, make_report([real_sweep], out, reps=200)


def test_real_runs_load_into_one_tidy_table(real_sweep):
    data = load_runs([real_sweep])
    m = data.metrics
    for col in ("run", "env", "suite", "algo", "variant", "synthetic_ratio", "seed", "step", "metric", "value"):
        assert col in m.columns
    assert set(m["suite"]) == {"gym"} and set(m["algo"]) == {"sac", "mbpo"}
    assert set(m["variant"]) == {"SAC", "MBPO (S=0.5)", "MBPO (S=0.95)"}
    assert data.sac_variant == "SAC"
    assert m.groupby("variant", observed=True)["seed"].unique().map(sorted).map(list).to_dict() == {
        "SAC": [0, 1], "MBPO (S=0.5)": [0, 1], "MBPO (S=0.95)": [0, 1]}
    assert m[m["algo"] == "sac"]["synthetic_ratio"].isna().all()
    # Every row of every metrics.csv is there.
    n_rows = sum(len(pd.read_csv(p / "metrics.csv")) for p in (real_sweep / "sac", real_sweep / "mbpo"))
    assert len(m) == n_rows
    evals = m[m["metric"] == "eval/return"]
    assert sorted(evals["step"].unique()) == [60, 120, 180, 240]


def test_real_runs_report_writes_every_figure_summary_and_html(real_report):
    out, files = real_report
    expected = [out / "figures" / f"{name}.{ext}" for name in FIGURES for ext in ("png", "pdf")]
    expected += [out / "summary.md", out / "index.html"]
    assert sorted(files) == sorted(expected)
    for f in expected:
        assert f.stat().st_size > 0, f
    for name in FIGURES:
        assert (out / "figures" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / "figures" / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"

    md = (out / "summary.md").read_text()
    for heading in ("## Final evaluation return", "## Relative to SAC", "## Seconds per environment step", "## Runs",
                    "## Method", "## Figures"):
        assert heading in md
    assert "| Task | SAC | MBPO (S=0.5) | MBPO (S=0.95) |" in md
    assert re.search(r"\| Gym InvertedPendulum-v5 \| [-\d.,]+ \[[-\d.,]+, [-\d.,]+\] \(n=2\) \|", md)
    assert "| Variant | IQM of SAC-normalised final return | 95% CI | Tasks | Seeds | Seeds per task |" in md
    assert "Equal counts (seeds x tasks): SAC 2 x 1; MBPO (S=0.5) 2 x 1; MBPO (S=0.95) 2 x 1" in md
    assert "200 bootstrap replications" in md and "last evaluation" in md
    assert md.count("](figures/") == 2 * len(FIGURES)  # each PNG shown, each PDF linked

    page = (out / "index.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert page.count('src="data:image/png;base64,') == len(FIGURES)
    assert "<table>" in page and "<th>MBPO (S=0.5)</th>" in page and "Gym InvertedPendulum-v5" in page
    assert not re.search(r'(src|href)="(?!data:)', page)  # self-contained: nothing fetched from elsewhere


def test_fake_sweep_pools_folders_marks_unfinished_and_normalises_across_suites(fake_sweep, tmp_path):
    data = load_runs([fake_sweep])
    runs = data.runs.set_index("run")
    assert runs.loc["sweep/dmc/ftfl-humanoid-b", "finished"] == False  # noqa: E712  (numpy bool)
    assert len(data.runs) == 13  # checkpoints/ and nonfinite/ (with a stray config.json) are not runs
    assert set(data.runs["variant"]) == {"SAC", "MBPO (S=0.25)", "MBPO (S=0.5)", "MBPO (S=0.95)", "FTFL"}

    files = make_report([fake_sweep], tmp_path, reps=100)
    assert {f.name for f in files} >= {"sac_normalised.png", "synthetic_ratio.png", "summary.md", "index.html"}
    md = (tmp_path / "summary.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| DMC humanoid-stand | ") and "(n=" in line)
    assert "(n=5) †" in row  # seeds 0-2 and 3-4 from two folders; one folder stopped early
    assert "† The seeds' final evaluations are at different env steps" in md
    assert "running/stopped at 12k" in md
    # Every baseline is SAC: today's wording, and STFL Figure 1's numbers per suite over SAC.
    assert "## Relative to SAC" in md and "| Variant | IQM of SAC-normalised final return | 95% CI |" in md
    assert "dyna_vs_base.png" in {f.name for f in files}
    assert "| Gym | MBPO (S=0.95) | SAC | " in md and "| DMC | FTFL | SAC | " in md and "| Gym | FTFL |" not in md
    agg = next(line for line in md.splitlines() if line.startswith("| MBPO (S=0.95) | "))
    assert agg.split("|")[4].strip() == "4"  # tasks: 2 Gym + 2 DMC
    # FTFL has 3 seeds on hopper-stand and 5 on humanoid-stand: the report says so and weighs both tasks the same.
    ftfl = next(line for line in md.splitlines() if line.startswith("| FTFL | ")).split("|")
    assert [c.strip() for c in ftfl[4:7]] == ["2", "8", "3-5 ‡"]
    assert ("‡ Unequal counts: FTFL (DMC hopper-stand 3, DMC humanoid-stand 5; repeated to 15 per task): each seed "
            "of a task with n seeds counts 1/n of that task") in md
    # Independently: SAC's IQM of 3 seeds per task, FTFL's seeds over it, each task's seeds repeated to 15 (lcm(3, 5)),
    # scipy's 25% trimmed mean of that 15 x 2 matrix.
    columns = []
    for task, ftfl_dirs in (("hopper-stand", ["ftfl-hopper-stand"]), ("humanoid-stand", ["ftfl-humanoid-a",
                                                                                       "ftfl-humanoid-b"])):
        sac = pd.read_csv(fake_sweep / "dmc" / f"sac-{task}" / "metrics.csv")
        sac = sac[sac.metric == "eval/return"].sort_values("step").groupby("seed")["value"].last()
        ref = scipy.stats.trim_mean(sac.to_numpy(), 0.25)
        seeds = []
        for d in ftfl_dirs:
            m = pd.read_csv(fake_sweep / "dmc" / d / "metrics.csv")
            seeds += list(m[m.metric == "eval/return"].sort_values("step").groupby("seed")["value"].last() / ref)
        columns.append(np.repeat(seeds, 15 // len(seeds)))
    expected = scipy.stats.trim_mean(np.stack(columns, axis=1), 0.25, axis=None)
    assert ftfl[2].strip() == f"{100 * expected:.0f}%"


def test_same_seed_in_two_folders_is_refused(fake_sweep, tmp_path):
    shutil.copytree(fake_sweep / "gym" / "sac-Hopper-v5", tmp_path / "copy")
    with pytest.raises(ReportError, match=r"seed 0 of SAC on gym:Hopper-v5 is in two run folders"):
        load_runs([fake_sweep / "gym", tmp_path / "copy"])


def test_without_sac_there_is_no_normalised_figure_and_reports_are_reproducible(fake_sweep, tmp_path):
    files = make_report([fake_sweep / "dmc" / "ratio"], tmp_path / "a", reps=50)
    names = {f.name for f in files}
    assert "sac_normalised.png" not in names and "synthetic_ratio.png" in names
    md = (tmp_path / "a" / "summary.md").read_text()
    assert "No SAC reference runs" in md
    make_report([fake_sweep / "dmc" / "ratio"], tmp_path / "b", reps=50)
    assert (tmp_path / "b" / "summary.md").read_text() == md  # the bootstrap is seeded


def test_variant_names_use_labels_and_name_differing_settings(tmp_path):
    base = TrainConfig(algo="sac", env="gym:Hopper-v5", seeds=2, steps=4000, eval_every=2000, log_every=1000)
    write_run(tmp_path / "a", base, fake_rows(base), meta_dirs=False)
    ln = dataclasses.replace(base, sac=SACConfig(critic_layernorm=True))
    write_run(tmp_path / "b", ln, fake_rows(ln), meta_dirs=False)
    labelled = dataclasses.replace(base, label="SAC + resets", reset_agent_every=1000)
    write_run(tmp_path / "c", labelled, fake_rows(labelled), meta_dirs=False)
    data = load_runs([tmp_path])
    assert dict(zip(data.runs["run"], data.runs["variant"])) == {
        f"{tmp_path.name}/a": "SAC (sac.critic_layernorm=False)",
        f"{tmp_path.name}/b": "SAC (sac.critic_layernorm=True)",
        f"{tmp_path.name}/c": "SAC + resets",
    }
    assert data.sac_variant == "SAC (sac.critic_layernorm=False)"  # the one with default settings


def test_settings_that_only_keep_or_watch_a_run_never_make_a_variant(tmp_path):
    # Every RUN_CONTROL field (checkpointing, trackers, ...) set to a non-default value in a second
    # seed-disjoint folder: the two folders are one variant, "SAC", pooled.
    base = TrainConfig(algo="sac", env="gym:Hopper-v5", seeds=2, steps=4000, eval_every=2000, log_every=1000)
    write_run(tmp_path / "a", base, fake_rows(base), meta_dirs=False)
    changes = {"checkpoint_every": 500, "keep_checkpoints": 5, "env_workers": 2, "env_parallel": "threads",
               "logger": ("tensorboard", "wandb"), "wandb_project": "p", "wandb_entity": "e", "wandb_group": "g",
               "wandb_mode": "online"}
    assert set(changes) == set(config_lib.RUN_CONTROL) - {"label", "baseline"}  # a new field must be added here
    other = dataclasses.replace(base, seed=2, **changes)
    write_run(tmp_path / "b", other, fake_rows(other), meta_dirs=False)
    data = load_runs([tmp_path])
    assert set(data.runs["variant"]) == {"SAC"}


def test_input_errors_are_one_sentence(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="no run folders"):
        make_report([tmp_path / "empty"], tmp_path / "c")
    with pytest.raises(ReportError, match="is not a folder"):
        make_report([tmp_path / "missing"], tmp_path / "c")


def test_a_run_without_metrics_is_noted_and_a_torn_last_line_is_dropped(tmp_path):
    cfg = TrainConfig(algo="sac", env="gym:Hopper-v5", seeds=1, steps=4000, eval_every=2000, log_every=1000)
    write_run(tmp_path / "started", cfg, [], meta_dirs=False)  # header only
    done = write_run(tmp_path / "killed", dataclasses.replace(cfg, seed=1), fake_rows(dataclasses.replace(cfg, seed=1)),
                     meta_dirs=False)
    with (done / "metrics.csv").open("a") as f:
        f.write("5000,1,eval/return,12")  # killed mid-row: no newline, value cut short
    data = load_runs([tmp_path])
    assert list(data.runs["run"]) == [f"{tmp_path.name}/killed"]
    assert any("started" in n and "no metrics yet" in n for n in data.notes)
    assert data.metrics["step"].max() == 4000


def test_model_error_is_comparable_and_unmeasured_diagnostics_are_gaps(tmp_path, monkeypatch):
    """MBPO (residual target), FTFL (direct target) and SAC on one task; before warm-up ends (4k steps) the
    model and synthetic-batch metrics were not measured: absent from MBPO's metrics.csv, NaN in FTFL's."""
    base = dict(env="dmc:hopper-stand", seeds=2, steps=10_000, eval_every=2_000, log_every=1_000, warmup_steps=4_000)
    sac, mbpo, ftfl = TrainConfig(algo="sac", **base), TrainConfig(algo="mbpo", **base), default_config("ftfl", **base)
    write_run(tmp_path / "runs" / "sac", sac, fake_rows(sac), meta_dirs=False)
    write_run(tmp_path / "runs" / "mbpo", mbpo, fake_rows(mbpo), meta_dirs=False)
    write_run(tmp_path / "runs" / "ftfl", ftfl, fake_rows(ftfl, unmeasured="nan"), meta_dirs=False)
    text = (tmp_path / "runs" / "ftfl" / "metrics.csv").read_text()
    assert "1000,0,q/mean_synthetic,nan" in text and "1000,0,model/pct_error_next_state,nan" in text
    assert ",q/mean_synthetic," not in "".join(r for r in (tmp_path / "runs" / "mbpo" / "metrics.csv").read_text()
                                                .splitlines(keepends=True) if r.startswith(("1000,", "4000,")))
    drawn = {}
    original = report.F.curve_grid

    def spy(out_dir, name, title, ylabel, panels, *args, **kwargs):
        drawn[name] = (title, ylabel, panels)
        return original(out_dir, name, title, ylabel, panels, *args, **kwargs)

    monkeypatch.setattr(report.F, "curve_grid", spy)
    files = make_report([tmp_path / "runs"], tmp_path / "report", reps=100)
    assert {"diag_model_error.png", "diag_model_error_residual.png", "diag_q_values.png", "diag_rewards.png",
            "diag_model_variance.png"} <= {f.name for f in files}

    def lines(name, linestyle="-"):
        return {c.variant: c for c in drawn[name][2]["dmc:hopper-stand"] if c.linestyle == linestyle}

    # Across variants: the error on s' (about 6% for both models), not each model's own target (120% on s'-s for
    # MBPO), and the figure says so.
    title, ylabel, _ = drawn["diag_model_error"]
    assert "next state s'" in title and "same for every target" in title and "||s'||" in ylabel
    err = lines("diag_model_error")
    assert set(err) == {"MBPO", "FTFL"}
    for c in err.values():
        np.testing.assert_allclose(c.point, PCT_ERROR_NEXT["dmc"], rtol=0.15)
        assert list(c.steps) == list(range(5_000, 10_001, 1_000))
    # The own-target error only for residual-target models, where it means the same thing (s'-s).
    title, ylabel, _ = drawn["diag_model_error_residual"]
    assert "s'-s" in title and "residual-target models only" in title
    own = lines("diag_model_error_residual")
    assert set(own) == {"MBPO"}
    np.testing.assert_allclose(own["MBPO"].point, PCT_ERROR_DELTA["dmc"], rtol=0.15)
    # Unmeasured steps are gaps: the synthetic-batch curves start after warm-up, with no zeros and no NaN.
    for name in ("diag_q_values", "diag_rewards"):
        synthetic = lines(name, "--")
        assert set(synthetic) == {"MBPO", "FTFL"}
        for c in synthetic.values():
            assert list(c.steps) == list(range(5_000, 10_001, 1_000)), (name, c.variant)
            assert np.all(np.isfinite(c.point)) and np.all(c.point != 0)
            assert np.all(np.isfinite(c.lo)) and np.all(np.isfinite(c.hi))
        real = lines(name, "-")
        assert list(real["MBPO"].steps) == list(range(1_000, 10_001, 1_000))  # measured from the start
    assert list(lines("diag_q_values")["SAC"].steps) == list(range(1_000, 10_001, 1_000))
    md = (tmp_path / "report" / "summary.md").read_text()
    assert "`model/pct_error_next_state`" in md and "never a zero" in md
