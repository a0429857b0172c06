"""Presets: every paper experiment parses into valid trials with the papers' budgets, and runs scaled down."""

import dataclasses

import pytest

from dynalab import config as config_lib
from dynalab import experiments
from dynalab.config import ConfigError
from dynalab.envs import DMC15, GYM6
from dynalab.metrics import read
from dynalab.train import train

SIX = ["dmc:hopper-hop", "dmc:hopper-stand", "dmc:humanoid-stand", "dmc:humanoid-walk", "dmc:quadruped-run",
       "dmc:quadruped-walk"]

# Shrinks a trial to seconds on a CPU: what `dynalab sweep --scale ... --set ...` does for a smoke run.
TINY = experiments.parse_overrides([
    "seeds=1", "replay_ratio=1", "batch_size=16", "eval_episodes=1", "checkpoint_every=0", "rollouts_per_step=4",
    "sac.hidden=[16, 16]", "model.width=16", "model.depth=1", "model.ensemble_size=2", "model.num_elites=1",
    "model.batch_size=16", "model.refit_steps=2", "buffer_capacity=1000",
    # ALM's tiny nets are tests/tiny_configs.py's, so its run shares that file's compiled programs.
    "alm.latent_dim=4", "alm.hidden=16", "alm.model_hidden=16", "alm.std_duration=10",
])


def test_every_preset_parses_into_valid_trials():
    assert len(experiments.names()) >= 12
    for name in experiments.names():
        exp = experiments.load(name)  # validates every trial's config, env ids included
        assert exp.reproduces and exp.description and exp.trials, name


@pytest.mark.parametrize("name, envs, labels, seeds, steps", [
    ("stfl-fig3-gym", GYM6, ["SAC", "MBPO", "ALM"], {6}, {15_000, 125_000, 300_000, 400_000}),
    ("stfl-fig5-alm-dmc6", SIX, ["ALM", "ALM without Dyna"], {6}, {500_000}),
    ("stfl-fig15-dmc15", DMC15, ["SAC", "MBPO", "ALM", "ALM without Dyna"], {6}, {500_000}),
    ("stfl-fig1-dyna-vs-base", GYM6 + DMC15, ["SAC", "MBPO", "ALM", "ALM without Dyna"], {6},
     {15_000, 125_000, 300_000, 400_000, 500_000}),
    ("stfl-fig4-dmc6", SIX, ["SAC", "MBPO"], {6}, {500_000}),
    ("stfl-fig12-dmc15", DMC15, ["SAC", "MBPO"], {6}, {500_000}),
    ("stfl-fig8-ratio", ("dmc:hopper-stand", "dmc:humanoid-stand"), ["MBPO"], {3, 6}, {100_000, 400_000}),
    ("ftfl-fig4-dmc", SIX, ["SAC", "MBPO", "FTFL", "Tuned FTFL"], {6}, {500_000}),
    ("ftfl-fig1-summary", GYM6 + DMC15, ["SAC", "MBPO", "FTFL", "Tuned FTFL"], {6}, None),
    ("ftfl-fig3-ablations", ("dmc:humanoid-stand",), None, {3}, {500_000}),
])
def test_presets_hold_the_papers_tasks_budgets_and_seeds(name, envs, labels, seeds, steps):
    exp = experiments.load(name, check=False)
    assert sorted({t.cfg.env for t in exp.trials}) == sorted(envs)
    if labels:
        assert len(exp.trials) == len(envs) * len(labels)
        assert {t.cfg.label for t in exp.trials} == set(labels)
    assert {t.cfg.seeds for t in exp.trials} == seeds
    if steps:
        assert {t.cfg.steps for t in exp.trials} == steps


def test_variant_fields_reach_the_config():
    by = lambda name: {(t.cfg.label, t.cfg.env): t.cfg for t in experiments.load(name, check=False).trials}  # noqa: E731
    ratio = by("stfl-fig8-ratio")
    humanoid = ratio[("MBPO", "dmc:humanoid-stand")]
    assert humanoid.sweep_field == "synthetic_ratio" and 0.05 in humanoid.sweep_values and 0.95 in humanoid.sweep_values
    assert humanoid.seeds == 3  # per_env beats defaults
    assert ratio[("MBPO", "dmc:hopper-stand")].steps == 100_000
    assert by("stfl-fig9-perfect")[("MBPO, perfect model", "dmc:hopper-hop")].perfect_model
    assert by("stfl-fig17-layernorm")[("MBPO + LayerNorm", "dmc:hopper-hop")].sac.critic_layernorm
    assert by("stfl-fig11-resets")[("SAC + resets", "dmc:hopper-hop")].reset_agent_every == 20_000
    assert by("stfl-fig18-dmc15")[("MBPO + model resets", "dmc:walker-run")].reset_model_every == 20_000
    ftfl = by("ftfl-fig4-dmc")
    assert ftfl[("FTFL", "dmc:hopper-hop")].model.target_norm and ftfl[("FTFL", "dmc:hopper-hop")].model.direct_next_state
    assert ftfl[("Tuned FTFL", "dmc:hopper-hop")].model.width == 400
    assert not ftfl[("MBPO", "dmc:hopper-hop")].model.target_norm
    ablation = by("ftfl-fig3-ablations")
    only_norm = ablation[("target norm only", "dmc:humanoid-stand")].model
    assert only_norm.target_norm and not only_norm.direct_next_state
    ip = by("stfl-fig3-gym")[("MBPO", "gym:InvertedPendulum-v5")]
    assert (ip.steps, ip.warmup_steps, ip.synthetic_ratio, ip.rollouts_per_step) == (15_000, 1_000, 0.95, 400)
    fig1 = by("stfl-fig1-dyna-vs-base")
    alm = fig1[("ALM", "dmc:walker-run")]
    assert (alm.algo, alm.baseline, alm.replay_ratio, alm.batch_size, alm.warmup_steps) == ("alm", "ALM without Dyna", 1,
                                                                                          512, 5_000)
    assert fig1[("ALM without Dyna", "dmc:walker-run")].algo == "alm-nodyna"
    assert fig1[("MBPO", "dmc:walker-run")].baseline == "SAC"
    assert fig1[("ALM", "dmc:humanoid-run")].capacity == 500_000  # humanoid: 1e6, capped at the run
    assert fig1[("ALM", "dmc:walker-run")].capacity == 100_000


def test_scale_shrinks_every_step_count_and_stays_valid():
    exp = experiments.load("stfl-fig11-resets", scale=0.01)
    cfg = {t.cfg.label: t.cfg for t in exp.trials if t.cfg.env == "dmc:hopper-hop"}
    assert cfg["MBPO + resets"].steps == 5_000 and cfg["MBPO + resets"].warmup_steps == 100
    assert cfg["MBPO + resets"].reset_agent_every == 200 and cfg["MBPO + resets"].eval_every == 500  # >= steps/10
    assert cfg["MBPO + resets"].log_every == 100 and cfg["MBPO + resets"].model_refit_every == 250
    assert experiments.load("stfl-fig3-gym", scale=1e-6).trials[0].cfg.steps == 2  # clamped, still valid


def test_scale_changes_only_settings_the_algorithm_reads():
    """ALM's exploration schedule shrinks with ALM's timeline (100,000 steps x 0.01 = 1,000); the other
    algorithms never read it, so their scaled runs carry no setting that would be warned about."""
    trials = experiments.load("stfl-fig3-gym", scale=0.01).trials
    algos = {t.cfg.algo for t in trials}
    assert {"sac", "mbpo", "alm"} <= algos
    for t in trials:
        if t.cfg.algo == "alm":
            assert t.cfg.alm.std_duration == 1_000
        else:
            assert config_lib.ignored_settings(t.cfg) == [], t.name


def test_overrides_use_toml_values():
    assert experiments.parse_overrides(["replay_ratio=1", "sac.hidden=[32, 32]", "label=my run", "model.lr=1e-3"]) == {
        "replay_ratio": 1, "sac": {"hidden": [32, 32]}, "label": "my run", "model": {"lr": 1e-3}}


@pytest.mark.parametrize("call, message", [
    (lambda: experiments.load("fig99"), "unknown experiment 'fig99'; choose one of: ftfl-fig1-summary"),
    (lambda: experiments.load("stfl-fig4-dmc6", overrides={"stepz": 5}), "bad config: "),
    (lambda: experiments.load("stfl-fig4-dmc6", overrides={"synthetic_ratio": 1.5}), "--synthetic-ratio must be in [0, 1)"),
    (lambda: experiments.load("stfl-fig4-dmc6", scale=2.0), "--scale must be in (0, 1]"),
    (lambda: experiments.parse_overrides(["replay_ratio"]), "--set expects FIELD=VALUE"),
])
def test_bad_experiment_input_is_one_clear_message(call, message):
    with pytest.raises(ConfigError) as exc:
        call()
    assert message in str(exc.value)


def test_bad_preset_files_are_refused(tmp_path):
    cases = {
        "broken.toml": ("envs = [", "cannot parse"),
        "keys.toml": ('envs = ["gym:Hopper-v5"]\nvariants = []\n', "unknown keys ['variants']"),
        "empty.toml": ("envs = []\n", "needs a non-empty `envs` list"),
        "algo.toml": ('envs = ["gym:Hopper-v5"]\n[[variant]]\nlabel = "x"\nalgo = "dqn"\n', "unknown algo 'dqn'"),
        "env.toml": ('envs = ["gym:Nope-v5"]\n[[variant]]\nlabel = "x"\n', "unknown env"),
        "twice.toml": ('envs = ["gym:Hopper-v5"]\n[[variant]]\nlabel = "x"\n[[variant]]\nlabel = "x"\n', "same name"),
    }
    for file, (text, message) in cases.items():
        (tmp_path / file).write_text(text)
        with pytest.raises(ConfigError) as exc:
            experiments.load(str(tmp_path / file))
        assert message in str(exc.value), file


def distinct_variants():
    """One trial per distinct variant across all presets, on its first task."""
    seen, out = set(), []
    for name in experiments.names():
        for trial in experiments.load(name, scale=1e-6, overrides=TINY, check=False).trials:
            key = (trial.cfg.label, trial.cfg.sweep_field)
            if key not in seen:
                seen.add(key)
                out.append(pytest.param(trial, id=f"{name}:{trial.name}"))
    return out


@pytest.mark.slow  # ~12 distinct programs to compile: minutes on 2 cores; CI runs a scaled sweep instead
@pytest.mark.parametrize("trial", distinct_variants())
def test_every_variant_runs_scaled_down(trial, tmp_path):
    c = trial.cfg
    cfg = dataclasses.replace(c, steps=24, warmup_steps=12, eval_every=24, log_every=12, model_refit_every=12,
                              reset_agent_every=12 if c.reset_agent_every else 0,
                              reset_model_every=12 if c.reset_model_every else 0)
    train(cfg, tmp_path / trial.name, progress=False)
    rows = read(tmp_path / trial.name / "metrics.csv")
    assert {(r[0], r[-2]) for r in rows} >= {(24, "eval/return"), (24, "loss/critic")}


def test_a_real_preset_runs_scaled_down_through_the_sweep(tmp_path):
    """stfl-fig3-gym's InvertedPendulum trials (SAC, MBPO and ALM), shrunk as a smoke run would be."""
    from dynalab.sweep import run_sweep

    exp = experiments.load("stfl-fig3-gym", scale=0.002, overrides=TINY)
    trials = [t for t in exp.trials if t.cfg.env == "gym:InvertedPendulum-v5"]
    assert [t.cfg.steps for t in trials] == [30] * 3 and [t.cfg.warmup_steps for t in trials] == [2] * 3
    statuses = run_sweep(trials, tmp_path, progress=False)
    assert statuses == {f"{v}__gym-InvertedPendulum-v5": "done" for v in ("sac", "mbpo", "alm")}
    for t in trials:
        assert max(r[0] for r in read(tmp_path / t.name / "metrics.csv") if r[2] == "eval/return") == 30
