"""`dynalab video`: videos of a run's deterministic policy, restored from one of its checkpoints.

The policy acts as it does in evaluation (`SeedBatch.exploit`, the action `Trainer.evaluate`
takes) in the run's evaluation environments, built from the same seeds (`train.eval_env_seed`):
episode e of seed s starts where the run's first evaluation started that episode, whichever
checkpoint's policy plays it, so videos of different checkpoints show the same start. (Later
evaluations continue each env's random stream, so they start elsewhere.) Only the generic learner
interface is used, so every algorithm works, and every task whose env adapter can `render`.

Each episode gives `RUN/videos/step<step>_seed<seed>_ep<e>.mp4` (H.264 through imageio-ffmpeg),
optionally a `.gif` beside it, and a `.json` with what the episode was (step, seed, return,
length, why it ended, frames per second); `dynalab report` reads those. One frame per env step:
the state the policy acted in, so the frame count is the number of steps the episode took.
Videos play in real time: one env step per frame at 1 / (the task's control timestep) frames per
second (GIFs drop frames to at most 50 per second, as browsers play faster GIFs slowly).

Rendering is MuJoCo's offscreen OpenGL, with the backend MUJOCO_GL names (`dynalab/__init__.py`
picks EGL or OSMesa when unset); without a working one, `render_videos` raises ConfigError.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from dynalab.config import ConfigError

FORMATS = ("mp4", "gif")
MIN_SIZE, MAX_SIZE = 16, 4096
GIF_MAX_FPS = 50.0  # GIF delays are whole centiseconds, and browsers slow down delays under 2 cs


@dataclass(frozen=True)
class EpisodeVideo:
    """One rendered episode: its files and what happened in it (also written to `files[-1]`, a .json)."""

    files: tuple[Path, ...]
    """The video files (.mp4 and/or .gif), then the .json describing the episode."""
    env: str
    algo: str
    label: str
    step: int
    """Env step of the checkpoint whose policy played."""
    seed: int
    episode: int
    """Evaluation episode index e (env seed `eval_env_seed(seed, e)`)."""
    sweep_field: str
    sweep_value: float | None
    """The member's value of the run's swept field (None: no sweep)."""
    episode_return: float
    """Undiscounted return of the steps shown."""
    length: int
    """Env steps taken, and frames in the video."""
    ended: str
    """"terminated", "time limit", "simulator diverged" or "max steps" (cut short by max_steps)."""
    fps: float
    """Frames per second of the MP4: 1 / control timestep, so it plays in real time."""
    width: int
    height: int

    def to_json(self) -> dict:
        d = asdict(self)
        d["files"] = [p.name for p in self.files]
        return d


def _rendering_problem() -> str | None:
    """The one-sentence reason rendering cannot work in this process, or None if it can."""
    from dynalab.envs.registry import _rendering_error

    try:
        error = _rendering_error()
    except Exception as e:  # a MUJOCO_GL whose library is missing fails inside dm_control's import
        error = f"{type(e).__name__}: {str(e).splitlines()[0].rstrip('.') if str(e) else ''}"
    if error is None:
        return None
    return (f"cannot render videos: no OpenGL backend works in this process (MUJOCO_GL="
            f"{os.environ.get('MUJOCO_GL', 'unset')}; {error}); install EGL or OSMesa and set MUJOCO_GL=egl or "
            "MUJOCO_GL=osmesa, or use MUJOCO_GL=glfw with a display.")


def _check_size(name: str, value: int) -> None:
    # H.264 in yuv420p (what every player reads) needs even sizes; imageio-ffmpeg would rescale odd ones.
    if not (MIN_SIZE <= value <= MAX_SIZE and value % 2 == 0):
        raise ConfigError(f"--{name} must be an even number of pixels from {MIN_SIZE} to {MAX_SIZE}, got {value}.")


def _file_stem(step: int, seed: int, sweep_field: str, value: float | None, episode: int) -> str:
    sweep = f"_{sweep_field.replace('.', '-')}{value:g}" if value is not None else ""
    return f"step{step:07d}_seed{seed}{sweep}_ep{episode}"


class _Mp4:
    """Streams frames into an H.264 MP4 through an ffmpeg process (nothing held in memory)."""

    def __init__(self, path: Path, fps: float):
        import imageio.v2 as imageio

        # macro_block_size=2: keep the exact size (sizes are even); the default 16 would rescale.
        self._writer = imageio.get_writer(path, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                          pixelformat="yuv420p", quality=7, macro_block_size=2,
                                          ffmpeg_log_level="error")
        self._started = False

    def add(self, frame: np.ndarray) -> None:
        if self._started:
            self._writer.append_data(frame)
            return
        with warnings.catch_warnings():
            # The first frame starts ffmpeg: subprocess forks and the child at once executes ffmpeg,
            # running no Python or JAX code, so JAX's warning about forking its threads does not apply.
            warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
            self._writer.append_data(frame)
        self._started = True

    def close(self) -> None:
        self._writer.close()


class _Gif:
    """Collects every `stride`-th frame as a 256-colour image, then writes a looping GIF."""

    def __init__(self, path: Path, fps: float):
        self.path = path
        self.stride = max(1, math.ceil(fps / GIF_MAX_FPS - 1e-9))
        self.delay_ms = 10 * max(2, round(100 * self.stride / fps))  # whole centiseconds
        self._frames: list = []
        self._count = 0

    def add(self, frame: np.ndarray) -> None:
        from PIL import Image

        if self._count % self.stride == 0:
            self._frames.append(Image.fromarray(frame).quantize(colors=256))  # 1 byte per pixel kept
        self._count += 1

    def close(self) -> None:
        if self._frames:
            first, *rest = self._frames
            first.save(self.path, format="GIF", save_all=True, append_images=rest, duration=self.delay_ms, loop=0)


def read_frames(path: Path, indices: Sequence[int]) -> list[tuple[int, np.ndarray]]:
    """Decode the frames at `indices` (0-based) of an MP4 written by `render_videos`.

    Returns (index, frame) pairs in increasing index order, each frame (height, width, 3) uint8;
    indices past the video's end are left out. Decodes from the start up to the last index.
    Raises OSError (or the decoder's error) for a file that is missing or not a video.
    """
    import imageio.v2 as imageio

    wanted = sorted(set(int(i) for i in indices))
    out: list[tuple[int, np.ndarray]] = []
    if not wanted:
        return out
    with warnings.catch_warnings():  # ffmpeg is started by fork + exec, as in _Mp4
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
        reader = imageio.get_reader(path, format="FFMPEG")
        try:
            for i, frame in enumerate(reader):
                if i == wanted[len(out)]:
                    out.append((i, np.asarray(frame)))
                    if len(out) == len(wanted):
                        break
        finally:
            reader.close()
    return out


def render_videos(
    run_dir: Path,
    checkpoint: int | None = None,
    seeds: Sequence[int] | None = None,
    episodes: int = 1,
    formats: Sequence[str] = ("mp4",),
    max_steps: int | None = None,
    width: int = 480,
    height: int = 480,
    out: Path | None = None,
    progress: bool = False,
) -> list[EpisodeVideo]:
    """Render deterministic-policy episodes of the run in `run_dir` to video files.

    Args:
        run_dir: a run folder written by `dynalab train` (config.json and checkpoints/).
        checkpoint: env step of the checkpoint whose policy plays; None: the newest.
        seeds: the run's seeds to render (each member of a swept run with that seed); None: all.
        episodes: evaluation episodes 0..episodes-1 per seed, at most the run's `eval_episodes`.
        formats: any of "mp4" and "gif".
        max_steps: stop each episode after this many env steps (None: play it to its end).
        width, height: frame size in pixels, even, 16 to 4096.
        out: folder for the files (None: `run_dir/videos`); existing files of the same name are replaced.
        progress: show a progress bar of env steps on stderr.

    Returns one EpisodeVideo per (seed, episode), in seed then episode order; its files are
    written (each atomically) as `step<step:07d>_seed<seed>_ep<e>.{mp4,gif,json}`.
    Raises ConfigError (one sentence) for a seed, episode count, size or format the run or the
    codec cannot give, and when no OpenGL backend works (naming MUJOCO_GL and its valid values);
    CheckpointError for a folder without checkpoints, no checkpoint at `checkpoint`, or one that
    does not fit the run's learner; UnknownEnvError for a task this process cannot build.
    """
    from dynalab import checkpoint as ckpt_lib
    from dynalab import config as config_lib
    from dynalab.envs import make_env
    from dynalab.envs.base import SimulatorDiverged
    from dynalab.train import Trainer, eval_env_seed, progress_bar

    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise ConfigError(f"{run_dir} holds no config.json, so it is not a dynalab run folder; pass the --out of "
                          "a run.")
    formats = tuple(dict.fromkeys(formats))
    if not formats or any(f not in FORMATS for f in formats):
        raise ConfigError(f"video formats must be some of {', '.join(FORMATS)}, got {', '.join(formats) or 'none'}.")
    _check_size("width", width)
    _check_size("height", height)
    if max_steps is not None and max_steps < 1:
        raise ConfigError(f"--max-steps must be a positive number of env steps, got {max_steps}.")
    path = ckpt_lib.pick(run_dir, checkpoint, "trained policy to render")
    meta = ckpt_lib.read_meta(path)
    # The config that made this checkpoint's learner (config.json may have been extended since).
    cfg = config_lib.from_dict(meta["config"]) if "config" in meta else config_lib.load(run_dir / "config.json")
    step = int(meta["step"])
    run_seeds = cfg.seed_list()
    chosen = run_seeds if seeds is None else list(dict.fromkeys(seeds))
    for s in chosen:
        if s not in run_seeds:
            raise ConfigError(f"seed {s} is not one of this run's seeds ({', '.join(map(str, run_seeds))}); pass "
                              "one of those to --seed.")
    if not 1 <= episodes <= cfg.eval_episodes:
        raise ConfigError(f"--episodes must be from 1 to {cfg.eval_episodes} (the run's eval_episodes, the "
                          f"episodes its evaluation plays), got {episodes}.")
    problem = _rendering_problem()
    if problem is not None:
        raise ConfigError(problem)

    # The learner exactly as training built it (this also imports the modules of the user's tasks);
    # its training and evaluation envs are not needed.
    trainer = Trainer(cfg)
    trainer.close()
    if max_steps is None and trainer.spec.max_episode_steps == 0:
        raise ConfigError(f"{cfg.env} has no time limit, so an episode may never end; pass --max-steps.")
    state = ckpt_lib.read_learner(path, trainer.state)
    trainer.state = None  # the freshly initialised template: free it
    members = trainer.members
    rows = [(m, e) for m, (s, _) in enumerate(members) if s in chosen for e in range(episodes)]
    out = Path(out) if out is not None else run_dir / "videos"
    out.mkdir(parents=True, exist_ok=True)

    envs = {}
    # The policy sees a batch shaped as in evaluation, (members, eval_episodes, obs); rows not
    # rendered stay zero. Each row's action depends on its own observation only.
    obs = np.zeros((len(members), cfg.eval_episodes, trainer.spec.obs_dim), np.float32)
    writers: dict[tuple[int, int], list] = {}
    temps: dict[tuple[int, int], list[tuple[Path, Path]]] = {}
    returns = dict.fromkeys(rows, 0.0)
    lengths = dict.fromkeys(rows, 0)
    ended: dict[tuple[int, int], str] = {}
    limit = min(max_steps or math.inf, trainer.spec.max_episode_steps or math.inf)
    bar = progress_bar(int(limit), 0, f"video {cfg.env}", progress)
    finished = False
    try:
        for row in rows:
            envs[row] = env = make_env(cfg.env, eval_env_seed(members[row[0]][0], row[1]))
            obs[row] = env.reset()
            fps = 1.0 / env.control_dt
            stem = _file_stem(step, members[row[0]][0], cfg.sweep_field, members[row[0]][1], row[1])
            temps[row] = [(out / f".{stem}.tmp.{f}", out / f"{stem}.{f}") for f in formats]
            writers[row] = [(_Mp4 if f == "mp4" else _Gif)(tmp, fps) for f, (tmp, _) in zip(formats, temps[row])]
        active = list(rows)
        while active:
            action = np.asarray(trainer.batch.exploit(state, obs))
            for row in active:
                env = envs[row]
                frame = env.render(width, height)
                for w in writers[row]:
                    w.add(frame)
                lengths[row] += 1
                try:
                    o, r, terminated, truncated = env.step(action[row])
                except SimulatorDiverged:
                    ended[row] = "simulator diverged"
                    continue
                returns[row] += r
                obs[row] = o
                if terminated or truncated:
                    ended[row] = "terminated" if terminated else "time limit"
                elif max_steps is not None and lengths[row] >= max_steps:
                    ended[row] = "max steps"
            active = [row for row in active if row not in ended]
            bar.update(1)
        for row_writers in writers.values():
            for w in row_writers:
                w.close()
        finished = True
        videos = []
        for row in rows:
            for tmp, final in temps[row]:
                os.replace(tmp, final)
            seed, value = members[row[0]]
            files = tuple(final for _, final in temps[row])
            json_path = files[0].with_suffix(".json")
            video = EpisodeVideo(
                files=files + (json_path,), env=cfg.env, algo=cfg.algo, label=cfg.label, step=step, seed=seed,
                episode=row[1], sweep_field=cfg.sweep_field, sweep_value=value, episode_return=float(returns[row]),
                length=lengths[row], ended=ended[row], fps=1.0 / envs[row].control_dt, width=width, height=height)
            tmp = json_path.with_name(f".{json_path.name}.tmp")
            tmp.write_text(json.dumps(video.to_json(), indent=1) + "\n")
            os.replace(tmp, json_path)
            videos.append(video)
        return videos
    finally:
        bar.close()
        if not finished:  # stop the ffmpeg processes; an interrupted episode leaves no partial file
            for row_writers in writers.values():
                for w in row_writers:
                    if isinstance(w, _Mp4):
                        w.close()
        for env in envs.values():
            env.close()
        for row_temps in temps.values():
            for tmp, _ in row_temps:
                tmp.unlink(missing_ok=True)
