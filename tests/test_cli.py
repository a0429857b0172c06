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
