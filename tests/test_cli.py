"""User-facing errors: one clear line, exit status 2, nothing written."""

import pytest

from dynalab.cli import main


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    return exc.value.code, capsys.readouterr()


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--env", "dmc:cheetah-runn"], "did you mean dmc:cheetah-run"),
        (["--env", "cheetah-run"], "unknown env"),
        (["--steps", "-5"], "--steps must be a positive integer"),
        (["--replay-ratio", "0"], "--replay-ratio must be a positive integer"),
        (["--steps", "1000", "--warmup-steps", "5000"], "--warmup-steps (5000) must be smaller than --steps (1000)"),
        (["--seeds", "0"], "--seeds must be a positive integer"),
        (["--sac.discount", "1.5"], "--sac.discount must be in [0, 1)"),
    ],
)
def test_bad_train_values_stop_with_one_clear_line(args, expected, capsys, tmp_path):
    out = tmp_path / "run"
    code, captured = run_cli(["train", *args, "--out", str(out), "--no-progress"], capsys)
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dynalab: error: "), captured.err
    assert expected in lines[0]
    assert "Traceback" not in captured.err
    assert not out.exists()


def test_unknown_algo_lists_choices(capsys):
    code, captured = run_cli(["train", "--algo", "dqn"], capsys)
    assert code == 2
    assert "sac" in captured.err and "dqn" in captured.err


def test_envs_lists_the_papers_tasks(capsys):
    main(["envs"])
    out = capsys.readouterr().out
    assert "gym6   gym:Humanoid-v5" in out
    assert "dmc15  dmc:humanoid-stand" in out
    assert "dmc:cartpole-balance" in out


def test_help_explains_every_flag(capsys):
    code, captured = run_cli(["train", "--help"], capsys)
    assert code == 0
    for flag in ("--replay-ratio", "--warmup-steps", "--eval-every", "--eval-episodes", "--batch-size", "--seed ",
                 "--seeds", "--steps", "--env", "--algo", "--out"):
        assert flag in captured.out, flag


def test_experiments_lists_every_preset(capsys):
    from dynalab import experiments

    main(["experiments"])
    out = capsys.readouterr().out
    for name in experiments.names():
        assert name in out
    assert "Figure 8" in out and "Fixing That Free Lunch" in out


def test_sweep_dry_run_and_bad_names(capsys, tmp_path):
    main(["sweep", "stfl-fig4-dmc6", "--out", str(tmp_path / "s"), "--only", "*hopper-hop", "--scale", "0.01",
          "--dry-run"])
    out = capsys.readouterr().out
    assert "sac__dmc-hopper-hop" in out and "mbpo__dmc-hopper-hop" in out and "steps=5,000" in out
    assert not (tmp_path / "s").exists()
    code, captured = run_cli(["sweep", "fig99", "--out", str(tmp_path / "s")], capsys)
    assert code == 2 and "unknown experiment 'fig99'; choose one of:" in captured.err
    code, captured = run_cli(["sweep", "stfl-fig4-dmc6", "--only", "nothing*", "--dry-run"], capsys)
    assert code == 2 and "no trial of stfl-fig4-dmc6 matches" in captured.err


SMOKE = """
reproduces = "a test"
description = "two tiny trials"
envs = ["gym:InvertedPendulum-v5"]
[defaults]
seeds = 2
steps = 120
warmup_steps = 60
replay_ratio = 1
batch_size = 16
eval_every = 60
eval_episodes = 1
log_every = 30
checkpoint_every = 60
sac.hidden = [16, 16]
[[variant]]
label = "SAC"
algo = "sac"
[[variant]]
label = "SAC + LayerNorm"
algo = "sac"
sac.critic_layernorm = true
"""


def test_sweep_then_report_from_the_command_line(tmp_path, capsys):
    """The README's flow: a sweep from a TOML file, then a report on its folder."""
    preset = tmp_path / "smoke.toml"
    preset.write_text(SMOKE)
    main(["sweep", str(preset), "--out", str(tmp_path / "sweep"), "--no-progress"])
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == [
        "sac-layernorm__gym-InvertedPendulum-v5", "sac__gym-InvertedPendulum-v5", "sweep.json"]
    main(["report", str(tmp_path / "sweep"), "--out", str(tmp_path / "report"), "--reps", "200"])
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "SAC + LayerNorm" in summary and "Gym InvertedPendulum-v5" in summary
    assert (tmp_path / "report" / "figures" / "curves_eval_return.png").stat().st_size > 10_000
    assert "data:image/png;base64," in (tmp_path / "report" / "index.html").read_text()


@pytest.mark.parametrize("args, flag", [
    (["--import", "a", "--import", "b"], "--import"),
    (["--imports", "a", "--import", "b"], "--import"),
    (["--sac.hidden", "64", "64", "--sac.hidden", "32"], "--sac.hidden"),
    (["--logger", "tensorboard", "--logger=wandb"], "--logger"),
])
def test_a_repeated_multi_value_flag_is_refused_not_silently_cut(args, flag, capsys):
    # tyro keeps only the last occurrence: `--import a --import b` would import b alone.
    with pytest.raises(SystemExit) as e:
        main(["train", *args, "--out", "/nonexistent/never-written"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"dynalab: error: {flag} is given twice") and f"e.g. {flag} A B." in err
    assert "\n" not in err


def test_a_repeated_single_value_flag_still_means_the_last(tmp_path):
    # Scripts compose flag lists (defaults, then overrides); only multi-value flags lose values.
    from dynalab.algos import default_config
    from dynalab.cli import Train, _parse

    assert _parse("train", Train, ["--steps", "100", "--steps", "200"], default_config).cfg.steps == 200


@pytest.mark.parametrize("args, flag", [
    (["sweep", "stfl-fig3-gym", "--set", "replay_ratio=1", "--set", "model.refit_steps=200"], "--set"),
    (["sweep", "stfl-fig3-gym", "--only", "sac__*", "--only", "mbpo__*"], "--only"),
    (["envs", "--import", "a", "--imports", "b"], "--import"),
])
def test_every_command_refuses_a_repeated_multi_value_flag(args, flag, capsys):
    # `dynalab sweep ... --set a=1 --set b=2` would apply only b=2.
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().startswith(f"dynalab: error: {flag} is given twice")
