"""Experiment trackers (`--logger tensorboard`, `--logger wandb`) that mirror a run's metrics.csv.

A tracker is a sink of `MetricsWriter`: it receives exactly the rows written to metrics.csv
(NaNs left out there are left out here too), on the env-step axis, under the member's name:
`seed3`, or `sac.discount=0.99/seed3` in a program that sweeps sac.discount. It publishes an
env step once the loop has finished it (`MetricsWriter.end_step`), so a tracker never holds a
half-written step.

- TensorBoard: one TensorBoard run per member, RUN_DIR/tensorboard/<member>/ (so one chart
  overlays the seeds), with tags like `eval/return` and config.json as text. Values are
  stored as float32, as TensorBoard's scalars are.
- W&B: one W&B run per run folder, in RUN_DIR/wandb/, with keys like `seed3/eval/return`,
  the config as its `config`, and a run id kept in RUN_DIR/wandb/dynalab.json so a resumed
  run continues the same W&B run. Offline by default: nothing leaves the machine until
  `wandb sync`.

Resume: each tracker knows the last step it holds, and after a resume it is sent only the
steps after that one: first those it lacks from the rolled-back metrics.csv (a tracker added
on resume gets the whole history), then the recomputed ones that follow. Since a resume is
exact, the tracker ends up holding every step once, with the same values as metrics.csv
(wall-clock `time/*` metrics aside: a step the tracker already had keeps its first timing).
Deleting a tracker's folder starts that tracker over, from the whole metrics.csv.

Nothing here imports tensorboardX or wandb unless a run asks for that tracker.
"""

from __future__ import annotations

import abc
import importlib.util
import json
import os
import secrets
import string
import struct
import sys
import time
import zlib
from collections.abc import Iterable, Sequence
from itertools import groupby
from pathlib import Path

from dynalab import config as config_lib
from dynalab import metrics
from dynalab.config import ConfigError, TrainConfig
from dynalab.rundir import atomic_write_text

# --logger name -> (the module its sink imports, the extra that installs it).
REQUIRES = {"tensorboard": ("tensorboardX", "dynalab[tensorboard]"), "wandb": ("wandb", "dynalab[wandb]")}

Row = tuple[int, str, float]  # (member index, metric, value): one row of metrics.csv


def require(cfg: TrainConfig) -> None:
    """Raise ConfigError, before any work, if a tracker of --logger is not installed."""
    for name in dict.fromkeys(cfg.logger):
        module, extra = REQUIRES[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"--logger {name} needs the {module} package, which is not installed; "
                              f"install it with pip install '{extra}'.")


def member_names(cfg: TrainConfig, members: Sequence[tuple[int, float | None]]) -> list[str]:
    """Each member's name in the trackers: `seed3`, or `sac.discount=0.99/seed3` in a swept program
    (the value written as metrics.csv writes it)."""
    return [f"seed{seed}" if value is None else f"{cfg.sweep_field}={float(value)!r}/seed{seed}"
            for seed, value in members]


def open_sinks(cfg: TrainConfig, out: Path, members: Sequence[tuple[int, float | None]]) -> list[Tracker]:
    """The trackers of `cfg.logger` for the run in `out`, each caught up with out/metrics.csv.

    Call after a resume has rolled metrics.csv back: the rows there that a tracker lacks are
    sent to it now. An empty --logger returns [] without importing anything.
    """
    if not cfg.logger:
        return []
    require(cfg)
    names = member_names(cfg, members)
    sinks: list[Tracker] = []
    try:
        for name in dict.fromkeys(cfg.logger):
            sink = TRACKERS[name](cfg, out, names)
            sinks.append(sink)
            sink.catch_up(_csv_steps(out / "metrics.csv", members, after=sink.position))
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    return sinks


def _csv_steps(path: Path, members: Sequence[tuple[int, float | None]], after: int | None
               ) -> Iterable[tuple[int, list[Row]]]:
    """metrics.csv's rows after step `after`, grouped by step, as `MetricsWriter.write` gave them."""
    if not path.exists():
        return
    index = {(seed,) if value is None else (seed, float(value)): i for i, (seed, value) in enumerate(members)}
    rows = [(r[0], (index[r[1:-2]], r[-2], r[-1])) for r in metrics.read(path) if after is None or r[0] > after]
    for step, group in groupby(rows, key=lambda r: r[0]):
        yield step, [row for _, row in group]


class Tracker(abc.ABC):
    """A `MetricsWriter` sink that publishes each finished env step to one tracker, at most once.

    `position` is the last step the tracker holds (None: none). Rows of steps up to it are
    dropped; the others wait until their step ends, then `_publish` sends them together.
    """

    def __init__(self, names: list[str], position: int | None):
        self.names = names
        self.position = position
        self._pending: tuple[int, list[Row]] | None = None

    def write(self, step: int, rows: list[Row]) -> None:
        """Take the rows MetricsWriter wrote for `step`."""
        if not rows or (self.position is not None and step <= self.position):
            return  # nothing, or sent before a resume (which recomputed the same values)
        assert self._pending is None or self._pending[0] == step, "MetricsWriter.end_step skipped a step"
        if self._pending is None:
            self._pending = (step, [])
        self._pending[1].extend(rows)

    def end_step(self, step: int) -> None:
        """Every row of `step` is written: publish them."""
        if self._pending is not None:
            pending_step, rows = self._pending
            self._pending = None
            self._publish(pending_step, rows)
            self.position = pending_step

    def catch_up(self, steps: Iterable[tuple[int, list[Row]]]) -> None:
        """Publish finished steps (from metrics.csv) the tracker does not hold yet."""
        for step, rows in steps:
            self.write(step, rows)
            self.end_step(step)

    def close(self) -> None:
        """Release the tracker. Rows of an unfinished step are dropped: a resume recomputes them."""
        self._pending = None
        self._close()

    @abc.abstractmethod
    def _publish(self, step: int, rows: list[Row]) -> None:
        """Send one finished step's rows to the tracker, durably where the tracker allows."""

    @abc.abstractmethod
    def _close(self) -> None:
        """Flush and release the tracker."""


def _config_text(cfg: TrainConfig) -> str:
    return json.dumps(config_lib.to_dict(cfg), indent=2)


class TensorBoard(Tracker):
    """Event files under RUN_DIR/tensorboard/<member>/, written with tensorboardX's event writer.

    That writer writes and flushes in the calling thread, so a published step is on disk before
    RUN_DIR/tensorboard/dynalab.json records it. Each session's files start with a SessionLog
    START at the first step it may send, which makes TensorBoard's readers drop any later step an
    earlier file holds: a step sent again after a kill between publishing and recording counts once.
    """

    def __init__(self, cfg: TrainConfig, out: Path, names: list[str]):
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog
        from tensorboardX.proto.summary_pb2 import Summary
        from tensorboardX.summary import text

        self._Event, self._Summary = Event, Summary
        self.dir = out / "tensorboard"
        self.state = self.dir / "dynalab.json"
        position = json.loads(self.state.read_text())["step"] if self.state.exists() else None
        super().__init__(names, position)
        start = 0 if position is None else position + 1
        config = "\n".join("    " + line for line in _config_text(cfg).splitlines())  # a Markdown code block
        self._writers = []
        for name in names:
            (self.dir / name).mkdir(parents=True, exist_ok=True)
            # File names hold the second the file was made; readers take files in name order. The
            # nanoseconds keep two sessions of one second apart (a fast in-process resume), in order.
            writer = EventsWriter(str(self.dir / name / "events"), f".{time.time_ns():020d}")
            self._writers.append(writer)
            now = time.time()
            writer.write_event(Event(wall_time=now, step=start, session_log=SessionLog(status=SessionLog.START)))
            writer.write_event(Event(wall_time=now, step=start, summary=text("config", f"{name}\n\n{config}")))
            writer.flush()

    def _publish(self, step: int, rows: list[Row]) -> None:
        values: dict[int, list] = {}
        for member, metric, value in rows:
            values.setdefault(member, []).append(self._Summary.Value(tag=metric, simple_value=value))
        now = time.time()
        for member, vals in values.items():
            self._writers[member].write_event(self._Event(wall_time=now, step=step, summary=self._Summary(value=vals)))
            self._writers[member].flush()
        atomic_write_text(self.state, json.dumps({"step": step}) + "\n")

    def _close(self) -> None:
        for writer in self._writers:
            writer.close()


def _new_run_id() -> str:
    """A W&B run id: 8 characters of [a-z0-9], as W&B makes them."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


class WandB(Tracker):
    """A W&B run in RUN_DIR/wandb/ whose history holds one row per published env step.

    The steps it holds are read back from W&B's own transaction logs (RUN_DIR/wandb/*-<id>/
    run-<id>.wandb), not taken from what was handed to `wandb.log`: W&B writes those logs in
    32 KiB blocks, so a killed run loses its last rows there, and they are sent again. Only if
    those logs are gone (deleted after `wandb sync`) is the last step handed over, recorded in
    RUN_DIR/wandb/dynalab.json, taken instead.
    """

    def __init__(self, cfg: TrainConfig, out: Path, names: list[str]):
        import wandb

        self.dir = out / "wandb"
        self.state = self.dir / "dynalab.json"
        state = json.loads(self.state.read_text()) if self.state.exists() else {}
        self.run_id = state.get("id") or _new_run_id()
        logs = sorted(self.dir.glob(f"*-{self.run_id}/run-{self.run_id}.wandb"))
        super().__init__(names, _last_history_step(logs) if logs else state.get("step"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self._save_state()
        if cfg.wandb_mode == "offline":
            # Offline promises no network; W&B's crash reporting would contact its servers all the same.
            os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
        try:
            self.run = wandb.init(
                dir=out, mode=cfg.wandb_mode, id=self.run_id, resume="allow", project=cfg.wandb_project,
                entity=cfg.wandb_entity or None, group=cfg.wandb_group or None, name=out.resolve().name,
                config=config_lib.to_dict(cfg),
                # console="off": W&B would otherwise wrap stdout and stderr (the progress bar, tests' capture).
                settings=wandb.Settings(console="off", silent=cfg.wandb_mode == "offline"),
            )
        except wandb.errors.Error as e:
            first = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else type(e).__name__
            raise ConfigError(f"W&B could not start run {self.run_id} ({first}); log in with `wandb login`, "
                              "or pass --wandb-mode offline.") from None
        if self.run.starting_step > 0:  # an online run resumed from W&B's servers, which reject older steps
            self.position = max(self.position or 0, self.run.starting_step - 1)
        if cfg.wandb_mode == "offline":
            print(f"dynalab: W&B run {self.run_id} is logged offline into {self.dir}; upload it with "
                  f"`wandb sync {self.dir}/offline-run-*`.", file=sys.stderr)

    def _save_state(self) -> None:
        atomic_write_text(self.state, json.dumps({"id": self.run_id, "step": self.position}) + "\n")

    def _publish(self, step: int, rows: list[Row]) -> None:
        self.run.log({f"{self.names[member]}/{metric}": value for member, metric, value in rows}, step=step,
                     commit=True)
        self.position = step
        self._save_state()

    def _close(self) -> None:
        self.run.finish()


def _last_history_step(logs: Iterable[Path]) -> int | None:
    """The largest history step in W&B transaction logs (None: no history row)."""
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2

    last = None
    for log in logs:
        for data in wandb_log_records(log.read_bytes()):
            record = wandb_internal_pb2.Record()
            try:
                record.ParseFromString(data)
            except DecodeError:
                break  # a torn tail
            if record.WhichOneof("record_type") == "history":
                last = max(last if last is not None else -1, record.history.step.num)
    return last


_WANDB_LOG_HEADER = b":W&B"
_BLOCK = 32 * 1024
_CHUNK = struct.Struct("<IHB")  # CRC-32 of type and data, length, type


def wandb_log_records(data: bytes) -> Iterable[bytes]:
    """The records of a W&B transaction log (`run-<id>.wandb`): LevelDB's log format after a
    7-byte header, records cut into chunks that never cross a 32 KiB block. A torn or
    corrupt tail (a killed writer) ends the records."""
    if not data.startswith(_WANDB_LOG_HEADER):
        return
    pos, record = 7, b""
    while True:
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK.size:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        if pos + _CHUNK.size > len(data):
            return
        crc, length, kind = _CHUNK.unpack_from(data, pos)
        chunk = data[pos + _CHUNK.size:pos + _CHUNK.size + length]
        if kind not in (1, 2, 3, 4) or len(chunk) < length or zlib.crc32(bytes([kind]) + chunk) != crc:
            return
        pos += _CHUNK.size + length
        record = chunk if kind in (1, 2) else record + chunk  # FULL or FIRST start a record
        if kind in (1, 4):  # FULL or LAST end it
            yield record


TRACKERS = {"tensorboard": TensorBoard, "wandb": WandB}
