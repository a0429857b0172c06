"""--logger tensorboard / wandb: the trackers hold exactly metrics.csv, also across a kill and a resume.

Each tracker is read back by an independent reader: TensorBoard's own EventMultiplexer (which
applies its purge-on-restart rule, as the TensorBoard UI does), and for W&B a parser of its
offline transaction logs written here from the format (LevelDB log records with CRC-32, each
a protobuf `Record`). Every (member, metric, step) must appear exactly once, with metrics.csv's
value (as float32 for TensorBoard, which stores float32).
"""

import json
import math
import os
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from dynalab import checkpoint, trackers
from dynalab import config as config_lib
from dynalab.cli import main
from dynalab.config import TrainConfig
from dynalab.metrics import MetricsWriter, read

# The run of test_validation.py (seeds 2, 120 steps, checkpoints every 40, logs every 30,
# evaluations every 60), so that the persistent compile cache serves both files.
BASE = ["--env", "gym:InvertedPendulum-v5", "--seeds", "2", "--steps", "120", "--replay-ratio", "1",
        "--warmup-steps", "60", "--batch-size", "16", "--eval-every", "60", "--eval-episodes", "1",
        "--log-every", "30", "--checkpoint-every", "40", "--sac.hidden", "16", "16"]

# No W&B output, no network (W&B's crash reporting would call home), and nothing written to ~.
WANDB_ENV = {"WANDB_SILENT": "true", "WANDB_ERROR_REPORTING": "false"}


@pytest.fixture(autouse=True)
def quiet_offline_wandb(monkeypatch, tmp_path):
    for key, value in WANDB_ENV.items():
        monkeypatch.setenv(key, value)
    for key in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(key, str(tmp_path / "wandb-home"))
    yield
    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()  # stop W&B's service process of this test


def subprocess_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, **WANDB_ENV,
            "WANDB_CONFIG_DIR": str(tmp_path / "wandb-home"), "WANDB_CACHE_DIR": str(tmp_path / "wandb-home"),
            "WANDB_DATA_DIR": str(tmp_path / "wandb-home"),
            # Share the tests' persistent compile cache (tests/conftest.py), so the subprocess compiles little.
            "JAX_COMPILATION_CACHE_DIR": os.environ.get("DYNALAB_JAX_CACHE", "/tmp/dynalab-jax-cache"),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


# ---- readers -------------------------------------------------------------------------------

def csv_rows(out: Path, sweep_field: str = "") -> dict[tuple[str, str, int], float]:
    """metrics.csv as {(member, metric, step): value}, members named as the trackers name them."""
    got = {}
    for row in read(out / "metrics.csv"):
        if sweep_field:
            step, seed, value_swept, metric, value = row
            member = f"{sweep_field}={value_swept!r}/seed{seed}"
        else:
            step, seed, metric, value = row
            member = f"seed{seed}"
        assert (member, metric, step) not in got
        got[member, metric, step] = value
    return got


def tensorboard_rows(out: Path) -> tuple[dict[tuple[str, str, int], float], dict[str, list[tuple[int, str]]]]:
    """Every scalar TensorBoard shows for out/tensorboard (runs = members), and each run's config texts."""
    from tensorboard.backend.event_processing import event_accumulator, event_multiplexer
    from tensorboard.util import tensor_util

    mux = event_multiplexer.EventMultiplexer(
        size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0})  # 0: keep every event
    mux.AddRunsFromDirectory(str(out / "tensorboard"))
    mux.Reload()
    got, configs = {}, {}
    for run, tags in mux.Runs().items():
        acc = mux.GetAccumulator(run)
        for tag in tags["scalars"]:
            for event in acc.Scalars(tag):
                assert (run, tag, event.step) not in got, f"{run} {tag} step {event.step} twice in TensorBoard"
                got[run, tag, event.step] = event.value
        configs[run] = [(e.step, tensor_util.make_ndarray(e.tensor_proto)[0].decode())
                        for e in acc.Tensors("config/text_summary")]
    return got, configs


def wandb_records(path: Path, complete: bool = True):
    """The protobuf records of a W&B transaction log. `complete=False` allows a torn tail (a killed run)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B" and data[4:7] == b"\xe1\xbe\x00", "not a W&B transaction log"
    pos, record = 7, b""
    while pos < len(data):
        if 32768 - pos % 32768 < 7:
            assert data[pos:pos + 32768 - pos % 32768].strip(b"\0") == b"", "bad block padding"
            pos += 32768 - pos % 32768
            continue
        crc, length, kind = struct.unpack_from("<IHB", data, pos)
        chunk = data[pos + 7:pos + 7 + length]
        if len(chunk) < length or zlib.crc32(bytes([kind]) + chunk) != crc:
            assert not complete, f"torn record at byte {pos} of {path}"
            return
        pos += 7 + length
        record = chunk if kind in (1, 2) else record + chunk
        if kind in (1, 4):
            yield wandb_internal_pb2.Record.FromString(record)


def wandb_rows(out: Path, killed: int = 0) -> tuple[dict[tuple[str, str, int], float], list[dict], set[str]]:
    """Every history value of the W&B run(s) in out/wandb, its config updates, and its run ids.

    The `killed` oldest sessions may end torn (a SIGKILL)."""
    got, configs, ids = {}, [], set()
    logs = sorted(out.glob("wandb/offline-run-*/run-*.wandb"))
    assert logs, "no W&B offline run"
    for i, log in enumerate(logs):
        for rec in wandb_records(log, complete=i >= killed):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                ids.add(rec.run.run_id)
                configs.append({u.key: json.loads(u.value_json) for u in rec.run.config.update})
            elif kind == "history":
                step = rec.history.step.num
                for item in rec.history.item:
                    key = item.key or "/".join(item.nested_key)
                    if key.startswith("_"):  # _step, _runtime, _timestamp: W&B's own
                        continue
                    parts = key.split("/")
                    n = 2 if "=" in parts[0] else 1  # `sac.discount=0.99/seed3/...` or `seed3/...`
                    member, metric = "/".join(parts[:n]), "/".join(parts[n:])
                    assert (member, metric, step) not in got, f"{key} step {step} twice in W&B"
                    got[member, metric, step] = json.loads(item.value_json)
    return got, configs, ids


def assert_same(tracker: dict, csv: dict, float32: bool, with_time: bool = True) -> None:
    """The tracker holds exactly metrics.csv's (member, metric, step) keys, and its values.

    `with_time=False` leaves out the wall-clock `time/*` metrics: the steps a tracker got before a
    kill keep the killed run's timings (even which ones: its interval held a checkpoint write)."""
    if not with_time:
        tracker, csv = ({k: v for k, v in d.items() if not k[1].startswith("time/")} for d in (tracker, csv))
    assert sorted(tracker) == sorted(csv)
    for key, want in csv.items():
        want = float(np.float32(want)) if float32 else want
        got = tracker[key]
        assert got == want or (math.isnan(got) and math.isnan(want)), (key, got, want)


# ---- tests ---------------------------------------------------------------------------------

def test_sinks_get_exactly_the_rows_of_metrics_csv_in_a_swept_program(tmp_path):
    """MetricsWriter's rows, NaNs left out, reach both trackers under the swept value and seed."""
    cfg = TrainConfig(seeds=2, sweep_field="sac.discount", sweep_values=(0.9, 0.99), logger=("tensorboard", "wandb"))
    members = cfg.members()
    out = tmp_path / "run"
    out.mkdir()
    config_lib.save(cfg, out / "config.json")
    writer = MetricsWriter(out / "metrics.csv", [s for s, _ in members], {"sac.discount": [v for _, v in members]},
                           trackers.open_sinks(cfg, out, members))
    rng = np.random.default_rng(0)
    for step in (10, 20, 30):
        writer.write(step, {"eval/return": rng.normal(size=4) * 1e3,
                            "loss/critic": np.array([1.0, np.nan, 1e-30, 2.5])})
        writer.write(step, {"time/env": 0.1, "env/diverged": np.array([0.0, 1.0, 0.0, np.inf])})
        writer.end_step(step)
    writer.write(40, {"eval/return": np.zeros(4)})  # never ended: a kill in the middle of step 40
    writer.close()

    csv = {k: v for k, v in csv_rows(out, "sac.discount").items() if k[2] != 40}
    assert len(csv) == 3 * (4 + 3 + 4 + 4)  # one NaN left out per step
    assert ("sac.discount=0.99/seed1", "eval/return", 20) in csv
    tensorboard, texts = tensorboard_rows(out)
    assert_same(tensorboard, csv, float32=True)
    assert sorted(texts) == ["sac.discount=0.9/seed0", "sac.discount=0.9/seed1", "sac.discount=0.99/seed0",
                             "sac.discount=0.99/seed1"]
    step, text = texts["sac.discount=0.99/seed1"][0]
    assert step == 0 and json.loads(text.split("\n\n", 1)[1]) == json.loads((out / "config.json").read_text())
    history, configs, ids = wandb_rows(out)
    assert_same(history, csv, float32=False)
    assert ids == {json.loads((out / "wandb" / "dynalab.json").read_text())["id"]}
    assert configs[0]["sweep_values"] == [0.9, 0.99] and configs[0]["logger"] == ["tensorboard", "wandb"]


def test_tensorboard_step_sent_but_not_recorded_before_a_kill_counts_once(tmp_path):
    """A kill between writing step 20's events and recording it: the next session sends 20 again,
    and its files' SessionLog START makes TensorBoard drop the first copy. Both sessions fall in
    the same second here, as an in-process resume can."""
    cfg = TrainConfig(seeds=2, logger=("tensorboard",))
    out = tmp_path / "run"
    out.mkdir()
    for steps in ((10, 20), (30,)):
        writer = MetricsWriter(out / "metrics.csv", [0, 1], sinks=trackers.open_sinks(cfg, out, cfg.members()))
        for step in steps:
            writer.write(step, {"eval/return": np.array([step, -step])})
            writer.end_step(step)
        writer.close()
        if steps == (10, 20):
            (out / "tensorboard" / "dynalab.json").write_text('{"step": 10}')  # the record of step 20 was lost
    tensorboard, _ = tensorboard_rows(out)
    assert_same(tensorboard, csv_rows(out), float32=True)
    assert len(list((out / "tensorboard" / "seed0").glob("events.*"))) == 2


# Runs the CLI, and SIGKILLs itself right after metrics.csv gets the first rows of env step argv[1].
KILL_AFTER_WRITE = """
import os, signal, sys
from dynalab.cli import main
from dynalab.metrics import MetricsWriter
step, write = int(sys.argv[1]), MetricsWriter.write
def dying_write(self, s, values):
    write(self, s, values)
    if s == step:
        os.kill(os.getpid(), signal.SIGKILL)
MetricsWriter.write = dying_write
main(sys.argv[2:])
"""


def test_killed_and_resumed_run_sends_every_step_once(tmp_path):
    """Killed at step 120, after the checkpoint of step 80 and after the trackers got step 90:
    the resume recomputes 90 (not sent again) and 120; both trackers end equal to metrics.csv."""
    out = tmp_path / "run"
    args = ["train", *BASE, "--logger", "tensorboard", "wandb", "--out", str(out), "--no-progress"]
    proc = subprocess.run([sys.executable, "-c", KILL_AFTER_WRITE, "120", *args], env=subprocess_env(tmp_path),
                          capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert checkpoint.read_meta(checkpoint.latest(out / "checkpoints"))["step"] == 80
    assert json.loads((out / "tensorboard" / "dynalab.json").read_text())["step"] == 90  # sent beyond the checkpoint
    killed_csv = csv_rows(out)
    assert max(step for *_, step in killed_csv) == 120

    main(args)  # resume, in process
    csv = csv_rows(out)
    assert max(step for *_, step in csv) == 120
    tensorboard, _ = tensorboard_rows(out)
    assert_same(tensorboard, csv, float32=True, with_time=False)
    history, _, ids = wandb_rows(out, killed=1)
    assert_same(history, csv, float32=False, with_time=False)
    assert len(ids) == 1 and len(list(out.glob("wandb/offline-run-*"))) == 2  # one W&B run, two sessions


def test_tracker_added_on_resume_gets_the_whole_history(tmp_path, monkeypatch, capsys):
    """Changing only --logger is no config change; the new tracker catches up from metrics.csv."""
    from dynalab.train import Trainer

    step = Trainer.step

    def preempted(self):
        res = step(self)
        if self.env_step == 50:
            os.kill(os.getpid(), signal.SIGTERM)
        return res

    out = tmp_path / "run"
    monkeypatch.setattr(Trainer, "step", preempted)
    with pytest.raises(SystemExit):
        main(["train", *BASE, "--out", str(out), "--no-progress"])
    assert not (out / "tensorboard").exists()
    monkeypatch.setattr(Trainer, "step", step)
    main(["train", *BASE, "--logger", "tensorboard", "--out", str(out), "--no-progress"])
    assert "different config" not in capsys.readouterr().err
    tensorboard, texts = tensorboard_rows(out)
    assert_same(tensorboard, csv_rows(out), float32=True)
    assert [s for s, _ in texts["seed0"]] == [0]  # this tracker's history starts at step 0
    assert config_lib.load(out / "config.json").logger == ()  # the saved config is the run's, as for --label


def test_missing_tracker_package_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(["train", *BASE, "--logger", "tensorboard", "wandb", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and err == [
        "dynalab: error: --logger wandb needs the wandb package, which is not installed; "
        "install it with pip install 'dynalab[wandb]'."]
    assert not out.exists()


def test_wandb_that_cannot_start_is_one_sentence(tmp_path, monkeypatch):
    """E.g. --wandb-mode online without `wandb login` (simulated: these tests never go online)."""
    import wandb

    def no_key(**kwargs):
        raise wandb.errors.UsageError("api_key not configured (no-tty). call wandb.login(key=[your_api_key])")

    monkeypatch.setattr(wandb, "init", no_key)
    cfg = TrainConfig(logger=("tensorboard", "wandb"), wandb_mode="online")
    with pytest.raises(config_lib.ConfigError) as exc:
        trackers.open_sinks(cfg, tmp_path, cfg.members())
    run_id = json.loads((tmp_path / "wandb" / "dynalab.json").read_text())["id"]
    assert str(exc.value) == (f"W&B could not start run {run_id} (api_key not configured (no-tty). call "
                              "wandb.login(key=[your_api_key])); log in with `wandb login`, or pass --wandb-mode "
                              "offline.")


def test_no_logger_imports_no_tracker_package(tmp_path):
    code = ("import sys; from pathlib import Path; from dynalab import train, trackers; "
            "from dynalab.config import TrainConfig; "
            f"assert trackers.open_sinks(TrainConfig(), Path({str(tmp_path)!r}), [(0, None)]) == []; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorboardX', 'tensorboard', 'wandb')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    assert not any(tmp_path.iterdir())


def test_logger_settings_round_trip_and_do_not_count_as_a_config_change(tmp_path):
    cfg = TrainConfig(logger=("tensorboard", "wandb"), wandb_project="p", wandb_entity="e", wandb_group="g",
                      wandb_mode="online")
    config_lib.save(cfg, tmp_path / "config.json")
    assert config_lib.load(tmp_path / "config.json") == cfg
    old = config_lib.to_dict(TrainConfig())
    for key in ("logger", "wandb_project", "wandb_entity", "wandb_group", "wandb_mode"):
        del old[key]
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert config_lib.load(tmp_path / "old.json") == TrainConfig()  # a run folder from before these settings
    assert config_lib.from_dict({"logger": "wandb"}).logger == ("wandb",)  # `--set logger=wandb` in a sweep
    assert config_lib.differences(TrainConfig(), cfg) == []
    for bad, message in [(TrainConfig(logger=("mlflow",)), "--logger must be tensorboard or wandb (or both), got "
                                                           "'mlflow'."),
                         (TrainConfig(wandb_mode="shared"), "--wandb-mode must be one of: offline, online, got "
                                                            "'shared'.")]:
        with pytest.raises(config_lib.ConfigError) as exc:
            config_lib.validate(bad, ["sac"])
        assert str(exc.value) == message
