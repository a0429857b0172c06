"""`dynalab video`: frames of the simulator, videos of a run's evaluation episodes, their report strips.

Facts checked come from outside the video code: pixel statistics, the simulator's own state, and
the evaluation returns training wrote to metrics.csv (InvertedPendulum-v5 pays 1 for each step
that leaves the pole up and 0 for the step that drops it, so an episode that ends by falling has
return + 1 steps, hence return + 1 frames).
"""

import base64
import json
import os
import shutil
import subprocess
import sys

import imageio.v2 as imageio
import mujoco
import numpy as np
import pytest
from PIL import Image

from dynalab.agents.sac import SACConfig
from dynalab.analysis.report import make_report
from dynalab.cli import main
from dynalab.config import TrainConfig
from dynalab.envs import DMC15, GYM6, make_env
from dynalab.metrics import read
from dynalab.train import train

# Reading an MP4 starts ffmpeg by fork + exec; the child runs no JAX code, so JAX's warning does not apply.
pytestmark = pytest.mark.filterwarnings(r"ignore:os\.fork\(\) was called:RuntimeWarning")

W, H = 64, 48

# Shapes as test_resume's SAC run (networks, batch, buffer, eval batch), so the compile cache serves both.
RUN = TrainConfig(
    algo="sac", env="gym:InvertedPendulum-v5", seeds=2, steps=300, replay_ratio=2, warmup_steps=100,
    batch_size=32, buffer_capacity=700, eval_every=150, eval_episodes=2, log_every=50, checkpoint_every=150,
    keep_checkpoints=2, sac=SACConfig(hidden=(32, 32)),
)


def not_blank(frame: np.ndarray) -> bool:
    colours = len(np.unique(frame.reshape(-1, 3), axis=0))
    return frame.std() > 10 and colours >= 16


def changed_fraction(a: np.ndarray, b: np.ndarray) -> float:
    return float((np.abs(a.astype(int) - b.astype(int)).sum(axis=-1) > 30).mean())


def move_joints(env, seed: int = 0) -> None:
    """Put every hinge and slide joint at a random position in its range (qpos only), then recompute kinematics."""
    m, d = env.model, env.data
    rng = np.random.default_rng(seed)
    for j in range(m.njnt):
        if int(m.jnt_type[j]) in (int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE)):
            lo, hi = m.jnt_range[j] if m.jnt_limited[j] else (-1.0, 1.0)
            d.qpos[m.jnt_qposadr[j]] = rng.uniform(lo, hi)
    mujoco.mj_forward(m, d)


@pytest.mark.parametrize("env_id", ["gym:Hopper-v5", "dmc:cheetah-run"])
def test_frames_show_the_simulator_and_leave_it_alone(env_id):
    env, twin = make_env(env_id, 3), make_env(env_id, 3)
    try:
        env.reset()
        twin.reset()
        state = env.get_state()
        frame = env.render(W, H)
        assert frame.shape == (H, W, 3) and frame.dtype == np.uint8
        assert not_blank(frame), f"std {frame.std():.1f}"
        assert np.array_equal(env.get_state(), state)  # rendering only reads the simulator
        assert np.array_equal(env.render(W, H), frame)
        # Bigger than the models' 640 x 480 offscreen buffer: it is grown.
        assert env.render(800, 600).shape == (600, 800, 3)
        # An episode plays the same whether it is rendered or not.
        rng = np.random.default_rng(0)
        for _ in range(10):
            action = rng.uniform(-1, 1, env.spec.action_dim)
            env.render(W, H)
            assert np.array_equal(env.step(action)[0], twin.step(action)[0])
        before = env.render(W, H)
        move_joints(env)
        assert changed_fraction(before, env.render(W, H)) > 0.05  # another state, another picture
    finally:
        env.close()
        twin.close()


def test_envs_of_different_tasks_render_in_turn():
    # Each env draws in its own OpenGL context; a renderer must not draw into another's.
    hopper, ant, cheetah = (make_env(e, 0) for e in ("gym:Hopper-v5", "gym:Ant-v5", "dmc:cheetah-run"))
    try:
        for env in (hopper, ant, cheetah):
            env.reset()
        alone = hopper.render(W, H)
        ant.render(96, 96)
        cheetah.render(W, H)
        assert np.array_equal(hopper.render(W, H), alone)
    finally:
        for env in (hopper, ant, cheetah):
            env.close()


@pytest.mark.parametrize("env_id", GYM6 + DMC15)
def test_every_task_of_the_suites_renders_its_body(env_id):
    env = make_env(env_id, 0)
    try:
        env.reset()
        frame = env.render(W, W)
        assert not_blank(frame), f"std {frame.std():.1f}"
        move_joints(env)
        # The body is in the picture: moving its joints changes pixels (fish, whose joints are only
        # fins and tail, changes the fewest: 0.7% at this size).
        assert changed_fraction(frame, env.render(W, W)) > 0.002
    finally:
        env.close()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("video") / "run"
    train(RUN, out, progress=False)
    return out


def eval_returns(run_dir, step: int) -> dict[int, float]:
    return {seed: v for s, seed, m, v in read(run_dir / "metrics.csv") if m == "eval/return" and s == step}


def mp4_frames(path) -> list[np.ndarray]:
    reader = imageio.get_reader(path, format="FFMPEG")
    try:
        return [np.asarray(f) for f in reader]
    finally:
        reader.close()


def test_video_plays_the_episodes_the_first_evaluation_measured(run, capsys):
    # The checkpoint at 150 holds the policy evaluated at 150, the run's first evaluation.
    main(["video", str(run), "--checkpoint", "150", "--episodes", "2", "--gif", "--width", str(W), "--height",
          str(H), "--no-progress"])
    printed = capsys.readouterr().out
    lengths: dict[int, list[int]] = {0: [], 1: []}
    for seed in (0, 1):
        for ep in (0, 1):
            mp4 = run / "videos" / f"step0000150_seed{seed}_ep{ep}.mp4"
            assert f"wrote {mp4}" in printed
            frames = mp4_frames(mp4)
            assert frames[0].shape == (H, W, 3)
            assert all(not_blank(f) for f in frames)
            gif = Image.open(mp4.with_suffix(".gif"))
            assert gif.n_frames == len(frames)  # 25 frames per second: the GIF keeps every one
            lengths[seed].append(len(frames))
            assert json.loads(mp4.with_suffix(".json").read_text())["length"] == len(frames)
    measured = eval_returns(run, 150)
    for seed, frame_counts in lengths.items():
        # Every episode of this barely trained policy drops the pole (return + 1 steps) well before the limit.
        assert max(frame_counts) < 1000
        assert np.mean(frame_counts) - 1 == pytest.approx(measured[seed]), (seed, frame_counts, measured)


def test_max_steps_and_seed_choose_what_is_rendered(run, capsys):
    cap = 2
    main(["video", str(run), "--seed", "1", "--max-steps", str(cap), "--width", str(W), "--height", str(H),
          "--out", str(run / "capped"), "--no-progress"])
    printed = capsys.readouterr().out
    files = sorted(p.name for p in (run / "capped").iterdir())
    # The newest checkpoint (300), seed 1 only, no GIF unless asked.
    assert files == ["step0000300_seed1_ep0.json", "step0000300_seed1_ep0.mp4"], files
    frames = mp4_frames(run / "capped" / "step0000300_seed1_ep0.mp4")
    assert len(frames) == cap
    assert "over 2 steps (max steps)" in printed  # cut short, not ended by the pole falling


def test_without_a_rendering_backend_the_command_names_mujoco_gl(run, tmp_path):
    env = {**os.environ, "MUJOCO_GL": "disable"}
    result = subprocess.run([sys.executable, "-m", "dynalab", "video", str(run), "--out", str(tmp_path / "v")],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dynalab: error: "), result.stderr
    for word in ("MUJOCO_GL", "egl", "osmesa", "glfw"):
        assert word in lines[0]
    assert not (tmp_path / "v").exists()


def test_bad_requests_stop_with_one_clear_line(run, capsys, tmp_path):
    for args, expected in [([str(run), "--seed", "7"], "seed 7 is not one of this run's seeds (0, 1)"),
                           ([str(run), "--checkpoint", "100"], "choose --checkpoint from 150, 300"),
                           ([str(run), "--episodes", "3"], "--episodes must be from 1 to 2"),
                           ([str(run), "--width", "65"], "--width must be an even number"),
                           ([str(tmp_path)], "holds no config.json")]:
        with pytest.raises(SystemExit) as exc:
            main(["video", *args, "--out", str(tmp_path / "v"), "--no-progress"])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.startswith("dynalab: error: ") and expected in err, err
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "v").exists()


def test_report_shows_a_frame_strip_where_runs_have_videos(run, tmp_path):
    main(["video", str(run), "--seed", "0", "--width", str(W), "--height", str(H), "--no-progress"])
    report = tmp_path / "report"
    make_report([run], report, reps=50)
    strips = list((report / "figures").glob("video_*.png"))
    assert len(strips) == 1, strips
    strip = np.asarray(Image.open(strips[0]).convert("RGB"))
    assert not_blank(strip) and strips[0].stat().st_size < 300_000
    summary = (report / "summary.md").read_text()
    assert "## Policy videos" in summary and f"(figures/{strips[0].name})" in summary
    # Of all videos in the folder (other tests add step-150 ones), the newest policy's, lowest seed and episode.
    assert "seed 0, evaluation episode 0, policy of env step 300;" in summary
    index = (report / "index.html").read_text()
    assert base64.b64encode(strips[0].read_bytes()).decode("ascii") in index

    # The same run without videos: no section, and the earlier strip does not linger.
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "metrics.csv", "run.json"):
        shutil.copy(run / name, bare / name)
    make_report([bare], report, reps=50)
    assert not list((report / "figures").glob("video_*.png"))
    assert "Policy videos" not in (report / "summary.md").read_text()
    assert "Policy videos" not in (report / "index.html").read_text()
