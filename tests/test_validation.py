"""Bad input at every entry point: one clear line naming the problem, and the run folder untouched."""

import contextlib
import errno
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from dynalab import checkpoint
from dynalab import config as config_lib
from dynalab.cli import main
from dynalab.metrics import read

BASE = ["--env", "gym:InvertedPendulum-v5", "--seeds", "2", "--steps", "120", "--replay-ratio", "1",
        "--warmup-steps", "60", "--batch-size", "16", "--eval-every", "60", "--eval-episodes", "1",
        "--log-every", "30", "--checkpoint-every", "40", "--sac.hidden", "16", "16"]


def contents(folder: Path) -> dict[str, str]:
    """Every file under `folder` with a hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def cli_error(args, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(args)
    captured = capsys.readouterr()
    assert exc.value.code == 2, captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dynalab: error: "), captured.err
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    main(["train", *BASE, "--out", str(out), "--no-progress"])
    return out


BAD = [
    (["--env", "dmc:nope-run"], "unknown env"),
    (["--env", "InvertedPendulum-v5"], "unknown env"),
    (["--algo", "dqn"], "invalid choice 'dqn' for argument '--algo'. Expected one of ('sac', 'mbpo'"),
    (["--steps", "0"], "--steps must be a positive integer, got 0"),
    (["--steps", "-5"], "--steps must be a positive integer, got -5"),
    (["--seeds", "0"], "--seeds must be a positive integer"),
    (["--eval-episodes", "0"], "--eval-episodes must be a positive integer"),
    (["--batch-size", "-1"], "--batch-size must be a positive integer"),
    (["--replay-ratio", "0"], "--replay-ratio must be a positive integer"),
    (["--keep-checkpoints", "0"], "--keep-checkpoints must be a positive integer"),
    (["--checkpoint-every", "-1"], "--checkpoint-every must be >= 0"),
    (["--synthetic-ratio", "1.0"], "--synthetic-ratio must be in [0, 1), got 1.0"),
    (["--synthetic-ratio", "-0.1"], "--synthetic-ratio must be in [0, 1), got -0.1"),
    (["--sac.discount", "1.5"], "--sac.discount must be in [0, 1)"),
    (["--steps", "abc"], "Error parsing --steps: invalid literal for int()"),
    (["--synthetic-ratio", "half"], "Error parsing --synthetic-ratio"),
    (["--stepz", "5"], "Unrecognized options: --stepz, 5; did you mean --steps"),
    (["--steps", "500"], "holds a run with a different config (steps: 120 -> 500)"),
    ([], "holds a finished run of 120 steps"),
]


@pytest.mark.parametrize("args, expected", BAD, ids=[" ".join(a) or "same-flags" for a, _ in BAD])
def test_bad_train_input_on_an_existing_run_changes_nothing(args, expected, finished_run, capsys):
    before = contents(finished_run)
    line = cli_error(["train", *BASE, *args, "--out", str(finished_run), "--no-progress"], capsys)
    assert expected in line
    assert contents(finished_run) == before


def test_bad_config_files_are_refused(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    cases = [
        ("{not json", "cannot read config"),
        ('["a", "list"]', "must hold a JSON object"),
        (json.dumps({"algo": "sac", "stepz": 5}), "bad config: "),
        (json.dumps({"algo": "sac", "steps": "many"}), "--steps must be an integer, got 'many'"),
        (json.dumps({"algo": "sac", "env": "gym:Nope-v5"}), "unknown env"),
    ]
    for text, expected in cases:
        (run / "config.json").write_text(text)
        before = contents(run)
        assert expected in cli_error(["resume", str(run), "--no-progress"], capsys)
        assert contents(run) == before
    assert "holds no config.json" in cli_error(["resume", str(tmp_path / "nowhere")], capsys)


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    f = tmp_path / "a-file"
    f.write_text("mine")
    assert "is a file, not a folder" in cli_error(["train", *BASE, "--out", str(f), "--no-progress"], capsys)
    assert f.read_text() == "mine"


def test_full_disk_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    line = cli_error(["train", *BASE, "--out", str(out), "--no-progress"], capsys)
    assert "not enough free disk space" in line and "--checkpoint-every 0" in line
    assert not out.exists()


@contextlib.contextmanager
def small_filesystem(where: Path, size: str):
    """A fresh tmpfs of `size` mounted at `where` (needs root; skips the test otherwise)."""
    where.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "none", str(where)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small filesystem needs root and mount(8)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def test_read_only_folder_is_refused_and_left_alone(tmp_path, capsys):
    out = tmp_path / "run"
    if os.geteuid() != 0:
        out.mkdir()
        (out / "notes.txt").write_text("keep me")
        out.chmod(0o555)
        line = cli_error(["train", *BASE, "--out", str(out), "--no-progress"], capsys)
        out.chmod(0o755)
    else:  # root may write into any folder: make the filesystem itself read-only
        with small_filesystem(out, "1m"):
            (out / "notes.txt").write_text("keep me")
            subprocess.run(["mount", "-o", "remount,ro", str(out)], check=True)
            line = cli_error(["train", *BASE, "--out", str(out), "--no-progress"], capsys)
            assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
            assert (out / "notes.txt").read_text() == "keep me"
    assert line.startswith("dynalab: error: cannot write to run folder"), line
    assert "Read-only file system" in line or "Permission denied" in line


def test_full_filesystem_is_refused_and_left_alone(tmp_path, capsys):
    out = tmp_path / "run"
    with small_filesystem(out, "256k"):
        (out / "notes.txt").write_text("keep me")
        with pytest.raises(OSError):  # fill it up
            with (out / "filler").open("wb") as f:
                while True:
                    f.write(b"x" * 4096)
                    f.flush()
        before = contents(out)
        line = cli_error(["train", *BASE, "--out", str(out), "--no-progress"], capsys)
        assert "not enough free disk space" in line and "--checkpoint-every 0" in line
        assert contents(out) == before


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    write = checkpoint._write_npz

    def full_at_step_80(path, arrays):
        if path.parent.name.startswith(f".tmp-{checkpoint.name(80)}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write(path, arrays)

    monkeypatch.setattr(checkpoint, "_write_npz", full_at_step_80)
    with pytest.raises(SystemExit) as exc:
        main(["train", *BASE, "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exc.value.code == 3
    assert "could not write the checkpoint of step 80" in err and "No space left on device" in err
    assert [c.name for c in checkpoint.complete(out / "checkpoints")] == [checkpoint.name(0), checkpoint.name(40)]
    assert not list((out / "checkpoints").glob(".tmp-*"))

    monkeypatch.setattr(checkpoint, "_write_npz", write)  # space freed: the same command resumes
    main(["train", *BASE, "--out", str(out), "--no-progress"])
    keys = [r[:3] for r in read(out / "metrics.csv")]
    assert len(keys) == len(set(keys)) and max(k[0] for k in keys) == 120


def test_changed_config_can_be_forced_to_extend_a_run(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    main(["train", *BASE, "--steps", "160", "--allow-config-change", "--out", str(run), "--no-progress"])
    cfg = config_lib.load(run / "config.json")
    assert cfg.steps == 160 and cfg.buffer_capacity == 120  # the saved buffers keep their size
    steps = sorted({s for s, _, m, _ in read(run / "metrics.csv") if m == "eval/return"})
    assert steps == [60, 120, 160]
    assert len(json.loads((run / "run.json").read_text())["resumes"]) == 1


def test_resume_command_continues_a_killed_run(finished_run, tmp_path):
    """`dynalab resume DIR` picks the newest checkpoint; here the run is cut back to step 80."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    shutil.rmtree(run / "checkpoints" / checkpoint.name(120))
    main(["resume", str(run), "--no-progress"])
    same = lambda p: [r for r in read(p / "metrics.csv") if not r[2].startswith("time/")]  # noqa: E731
    assert same(run) == same(finished_run)


@pytest.mark.parametrize("name, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_sigterm_or_ctrl_c_checkpoints_then_stops_and_resumes_exactly(name, code, finished_run, tmp_path, monkeypatch,
                                                                       capsys):
    """Preemption or a first Ctrl-C mid-run writes a checkpoint of the current step and exits."""
    import signal

    from dynalab.train import Trainer

    step = Trainer.step

    def preempted(self):
        res = step(self)
        if self.env_step == 50:
            os.kill(os.getpid(), getattr(signal, name))
        return res

    monkeypatch.setattr(Trainer, "step", preempted)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(["train", *BASE, "--out", str(out), "--no-progress"])
    assert exc.value.code == code and f"stopped by {name} at env step 50" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored after the run
    assert checkpoint.read_meta(checkpoint.latest(out / "checkpoints"))["step"] == 50
    monkeypatch.setattr(Trainer, "step", step)
    main(["train", *BASE, "--out", str(out), "--no-progress"])
    same = lambda p: [r for r in read(p / "metrics.csv") if not r[2].startswith("time/")]  # noqa: E731
    assert same(out) == same(finished_run)


# --algo mbpo/ftfl/ftfl-tuned on a Gym task whose termination dynalab cannot compute: model
# rollouts would run past falls that end real episodes.
NO_TERMINATION_FN = [("mbpo", "gym:InvertedDoublePendulum-v5"), ("ftfl", "gym:Hopper-v4"),
                     ("ftfl-tuned", "gym:Walker2d-v4")]


@pytest.mark.parametrize("algo, env", NO_TERMINATION_FN)
def test_model_algo_on_gym_task_without_termination_fn_is_one_line(algo, env, tmp_path, capsys):
    out = tmp_path / "run"
    line = cli_error(["train", "--algo", algo, "--env", env, "--steps", "100", "--warmup-steps", "10",
                      "--batch-size", "16", "--out", str(out), "--no-progress"], capsys)
    assert line.startswith(f"dynalab: error: --algo {algo} needs the termination function of {env} ")
    for choice in ("gym:Hopper-v5", "gym:Swimmer-v5", "any dmc: task", "--perfect-model", "--algo sac"):
        assert choice in line
    assert not out.exists()


@pytest.mark.parametrize("algo, env, perfect_model", [
    ("mbpo", "gym:Swimmer-v5", False),  # never terminates: a known ("never") function
    ("ftfl", "gym:HumanoidStandup-v5", False),
    ("ftfl-tuned", "gym:Reacher-v5", False),
    ("mbpo", "gym:Pusher-v5", False),
    ("mbpo", "gym:InvertedDoublePendulum-v5", True),  # the simulator says when it terminates
    ("sac", "gym:InvertedDoublePendulum-v5", False),  # no model rollouts at all
])
def test_model_algo_accepted_where_termination_is_known_or_not_needed(algo, env, perfect_model):
    from dynalab.algos import ALGOS, default_config, make_learner
    from dynalab.envs import env_spec

    cfg = default_config(algo, env=env, perfect_model=perfect_model, steps=1000, warmup_steps=100)
    config_lib.validate(cfg, list(ALGOS))
    make_learner(cfg, env_spec(env))  # where the old code raised a bare ValueError for Swimmer


def test_task_needing_rendering_without_a_backend_is_one_line(tmp_path):
    import sys

    # A fresh process with rendering switched off, so the registry's real probe runs.
    out = tmp_path / "run"
    script = ("import sys; from dynalab.envs import list_envs; ids = list_envs(); "
              "assert 'dmc:quadruped-escape' not in ids and 'dmc:quadruped-run' in ids, 'listed'; "
              "from dynalab.cli import main; main(sys.argv[1:])")
    run = subprocess.run([sys.executable, "-c", script, "train", "--env", "dmc:quadruped-escape", "--steps", "100",
                          "--warmup-steps", "10", "--batch-size", "16", "--out", str(out)],
                         env={**os.environ, "MUJOCO_GL": "disable"}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("dynalab: error: dmc:quadruped-escape cannot be built here: ")
    assert "MUJOCO_GL=egl" in lines[0] and "OpenGL" in lines[0]
    assert not out.exists()


def test_model_algos_are_the_algorithms_that_roll_out_a_model():
    from dynalab.algos import ALGOS, mbpo

    assert set(config_lib.MODEL_ALGOS) == {name for name, a in ALGOS.items() if a.make is mbpo.make}


def test_a_buffer_larger_than_memory_is_refused_before_allocating(tmp_path, capsys):
    """2e9 transitions of cartpole (5 + 1 + 1 + 5 + 1 floats = 52 bytes each) need 104 GB per seed."""
    msg = cli_error(["train", "--env", "dmc:cartpole-balance", "--seeds", "3", "--buffer-capacity", "2000000000",
                     "--steps", "100", "--warmup-steps", "10", "--out", str(tmp_path / "run")], capsys)
    assert "104.00 GB per seed (replay buffer 104.00 GB)" in msg and "312.01 GB for 3 seeds" in msg  # + networks
    assert "--buffer-capacity" in msg and "--seeds" in msg


def test_memory_check_counts_what_init_would_allocate():
    import jax
    import jax.numpy as jnp

    from dynalab.config import ConfigError
    from dynalab.replay import init_buffer
    from dynalab.rundir import check_memory

    shapes = jax.eval_shape(lambda: {"buffer": jax.vmap(lambda _: init_buffer(1000, jnp.zeros(25)))(jnp.arange(2)),
                                     "params": jnp.zeros((2, 250))})
    need = 2 * (1000 * 25 * 4 + 4 + 4 + 4) + 2 * 250 * 4  # rows, position, size, count: 202,024 bytes
    check_memory(shapes, 2, need)  # exactly enough
    with pytest.raises(ConfigError, match=r"0.00 GB per seed \(replay buffer 0.00 GB\)"):
        check_memory(shapes, 2, need - 1)
