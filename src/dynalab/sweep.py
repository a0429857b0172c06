"""Sweeps: run many trials (one run folder each) locally or as Ray tasks, skipping, resuming and retrying.

Every trial is a normal run folder `OUT/<trial.name>/`, so `dynalab report OUT` reads a sweep like
any set of runs, and `dynalab resume OUT/<trial.name>` continues one trial by hand. `OUT/sweep.json`
records each trial's status; it is rewritten (atomically) whenever a trial finishes.

Per trial, sweep.json holds `status`, `attempts` (runs started in this sweep), `seconds` (their
wall-clock time), `error` (the one-line message of a failed trial), `retried_after` (the messages
of failed attempts that were retried) and `final_eval_return` (per seed, or per member of a swept program, when it ran to the end).
Statuses: `finished-before` (the folder already held a finished run; nothing ran), `done` (it ran
to its last step in this sweep), `failed` (it still failed after its retries). While a sweep
runs, sweep.json also shows `pending` and `running` trials (on Ray, `running` means submitted:
the task may still wait for a free slot).
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynalab import config as config_lib
from dynalab.config import ConfigError, TrainConfig

FINISHED_BEFORE, DONE, FAILED = "finished-before", "done", "failed"

# Failures that a retry would only repeat: a config or run-folder problem, and a NaN (resuming is
# exact, so the retry would reach the same NaN from the same checkpoint).
_NOT_RETRIED = ("ConfigError", "UnknownEnvError", "CheckpointError", "NonFiniteError")


@dataclass(frozen=True)
class Trial:
    """One run of a sweep: its config and the name of its run folder inside the sweep folder."""

    name: str
    """Unique, filesystem-safe folder name inside the sweep's out dir."""
    cfg: TrainConfig


def check_trials(trials: list[Trial]) -> None:
    """Raise ConfigError for an unusable trial list (bad or duplicate names, invalid configs)."""
    from dynalab.algos import ALGOS

    seen: set[str] = set()
    for t in trials:
        bad = (not t.name or t.name in (".", "..") or t.name.startswith(".") or "/" in t.name or "\\" in t.name
               or "\0" in t.name or t.name == "sweep.json" or t.name != t.name.strip())
        if bad:
            raise ConfigError(f"trial name {t.name!r} is not a usable folder name; use letters, digits, '-', '_' and '.'.")
        if t.name in seen:
            raise ConfigError(f"two trials are named {t.name!r}; trial names must be unique within a sweep.")
        seen.add(t.name)
        try:
            config_lib.validate(t.cfg, list(ALGOS))
        except ConfigError as e:
            raise ConfigError(f"trial {t.name}: {e}") from None


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or repr(e)
    return f"{type(e).__name__}: {text}"


def _attempt(cfg_dict: dict[str, Any], folder: str, progress: bool) -> dict[str, Any]:
    """Run (or resume) one trial into `folder`; never raises an Exception, returns an outcome dict.

    This is the body of the Ray task too, so it takes plain data (the config as a dict) and
    imports dynalab first, which configures JAX in a fresh worker as in the driver.
    """
    import dynalab  # noqa: F401  (sets JAX's CPU dispatch flag and MUJOCO_GL before anything else)
    from dynalab.rundir import plan_run
    from dynalab.train import Preempted, train

    t0 = time.perf_counter()
    try:
        cfg = config_lib.from_dict(cfg_dict)
        out = Path(folder)
        if plan_run(cfg, out).finished:  # an earlier attempt finished but died before it could report
            return {"ok": True, "seconds": time.perf_counter() - t0}
        returns = train(cfg, out, progress=progress)
        return {"ok": True, "seconds": time.perf_counter() - t0,
                "final_eval_return": [round(float(x), 3) for x in returns.mean(axis=1)]}
    except Exception as e:  # noqa: BLE001 - every failure becomes a recorded outcome
        return {"ok": False, "seconds": time.perf_counter() - t0, "error": _one_line(e),
                "retry": type(e).__name__ not in _NOT_RETRIED, "preempted": isinstance(e, Preempted)}


class _Book:
    """The sweep's records, sweep.json and the one-line progress reports."""

    def __init__(self, trials: list[Trial], out: Path, backend: str, retries: int):
        self.out, self.total, self.finished = out, len(trials), 0
        self.head = {"backend": backend, "retries": retries}
        self.records: dict[str, dict[str, Any]] = {
            t.name: {"status": "pending", "attempts": 0, "seconds": 0.0} for t in trials}

    def write(self) -> None:
        doc = {**self.head, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "counts": {s: sum(r["status"] == s for r in self.records.values())
                          for s in ("pending", "running", FINISHED_BEFORE, DONE, FAILED)},
               "trials": self.records}
        path = self.out / "sweep.json"
        tmp = path.with_name(f".sweep.json.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        os.replace(tmp, path)

    def running(self, name: str) -> None:
        self.records[name]["status"] = "running"
        self.records[name]["attempts"] += 1

    def finish(self, name: str, status: str, error: str | None = None, **extra: Any) -> None:
        rec = self.records[name]
        rec["status"] = status
        rec["seconds"] = round(rec["seconds"], 1)
        rec.update(extra)
        if error is not None:
            rec["error"] = error
        else:
            rec.pop("error", None)
        self.finished += 1
        self.write()
        head = f"[{self.finished}/{self.total}] {name}"
        if status == FINISHED_BEFORE:
            print(f"{head} finished before, skipped", flush=True)
        elif status == DONE:
            print(f"{head} done in {rec['seconds']:.0f} s", flush=True)
        else:
            tries = rec["attempts"]
            print(f"{head} failed after {tries} attempt{'s' * (tries != 1)} ({rec['seconds']:.0f} s): {error}",
                  flush=True)

    def outcome(self, name: str, result: dict[str, Any], retries: int) -> bool:
        """Record one attempt's outcome; True when the trial should run again."""
        rec = self.records[name]
        rec["seconds"] += result["seconds"]
        if result["ok"]:
            extra = {"final_eval_return": result["final_eval_return"]} if "final_eval_return" in result else {}
            self.finish(name, DONE, **extra)
            return False
        if result["retry"] and rec["attempts"] <= retries:  # a retry is left: attempts <= 1 + retries
            rec["status"] = "pending"
            rec.setdefault("retried_after", []).append(result["error"])
            self.write()
            print(f"       {name} attempt {rec['attempts']} failed: {result['error']}; retrying "
                  "(it resumes from its last checkpoint)", flush=True)
            return True
        self.finish(name, FAILED, result["error"])
        return False


def run_sweep(trials: list[Trial], out: Path, ray_address: str | None = None, retries: int = 1,
              progress: bool = True) -> dict[str, str]:
    """Run every trial into `out/<trial.name>/`; returns trial name -> `finished-before`, `done` or `failed`.

    Trials whose folder already holds a finished run are skipped; partly run ones resume from
    their newest checkpoint (as `dynalab train` does); a failed trial runs again, resuming from
    its last checkpoint, up to `retries` more times, and a trial that still fails is recorded in
    `out/sweep.json` while the other trials go on. Config errors (including a folder that holds
    a run of a different config) and NaN/Inf failures are recorded without retrying: a retry
    would repeat them exactly.

    `ray_address=None` runs the trials one after another in this process (`progress` shows
    each run's progress bar). Otherwise the trials are Ray tasks on the cluster at `ray_address`
    ('auto' or HOST:PORT), each holding 1 GPU if the cluster has GPUs, and as many CPUs as its
    `env_workers` (its simulator processes: 1 by default; 0, every core, is refused), running
    concurrently. `out` must then be on a filesystem shared by the driver and every worker node
    (NFS, a cluster filesystem, or a single-machine cluster), and the workers must have the same
    dynalab installed. A worker that dies mid-run (preemption, OOM kill, lost node) counts as
    a failed attempt and is retried from the trial's last checkpoint.

    A SIGTERM to a local sweep stops it after the running trial checkpoints (train's Preempted
    is re-raised after sweep.json is written); run the same sweep again to continue.
    """
    from dynalab.rundir import plan_run
    from dynalab.train import Preempted

    if retries < 0:
        raise ConfigError(f"retries must be >= 0, got {retries}.")
    check_trials(trials)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"sweep folder {out} is a file; choose a folder path.")
    if ray_address is not None:
        for t in trials:
            if t.cfg.env_workers == 0:
                raise ConfigError(f"trial {t.name}: --env-workers 0 (one per core of the machine) cannot be used on "
                                  "Ray, where trials share machines; give a number of workers, which is also the "
                                  "CPUs the trial asks Ray for.")
    ray, connected_here = _connect(ray_address) if ray_address is not None else (None, False)
    try:
        out.mkdir(parents=True, exist_ok=True)
        book = _Book(trials, out, "local" if ray_address is None else f"ray {ray_address}", retries)
        book.write()
        todo: list[Trial] = []
        for t in trials:
            try:
                finished = plan_run(t.cfg, out / t.name).finished
            except ConfigError as e:  # e.g. the folder holds a run of another config
                book.records[t.name]["attempts"] = 1
                book.finish(t.name, FAILED, _one_line(e))
                continue
            if finished:
                book.finish(t.name, FINISHED_BEFORE)
            else:
                todo.append(t)

        if ray is None:
            for t in todo:
                while True:
                    book.running(t.name)
                    book.write()
                    result = _attempt(config_lib.to_dict(t.cfg), str(out / t.name), progress)
                    if result.get("preempted"):  # SIGTERM to this process: stop the sweep, don't retry
                        book.records[t.name]["seconds"] += result["seconds"]
                        book.finish(t.name, FAILED, result["error"])
                        raise Preempted(f"sweep stopped by SIGTERM or Ctrl-C during {t.name} (checkpointed); "
                                        "run the same sweep again to continue it.")
                    if not book.outcome(t.name, result, retries):
                        break
        else:
            _run_ray(ray, todo, out, retries, book)
    finally:
        if connected_here:
            ray.shutdown()
    return {name: rec["status"] for name, rec in book.records.items()}


def _connect(address: str):
    """Import Ray and connect to the cluster at `address`; returns (ray, whether this call connected)."""
    try:
        import ray
    except ImportError:
        raise ConfigError("running a sweep on Ray needs Ray; install it with pip install 'dynalab[ray]'.") from None
    if ray.is_initialized():  # e.g. a notebook that called ray.init itself
        return ray, False
    _probe(address)
    try:
        ray.init(address=address, log_to_driver=True)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ConfigError(f"cannot connect to the Ray cluster at {address}: {' '.join(str(e).split())}") from None
    return ray, True


def _probe(address: str) -> None:
    """Fail fast on an unreachable HOST:PORT (ray.init retries it for minutes before giving up)."""
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return  # 'auto' (ray.init fails fast itself) or a ray:// client address
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as e:
        raise ConfigError(f"cannot reach the Ray cluster at {address} ({e.strerror or e}); start it with "
                          "`ray start --head` or pass the address `ray start` printed (or 'auto' on a cluster node).") from None


def _run_ray(ray, todo: list[Trial], out: Path, retries: int, book: _Book) -> None:
    """Submit every trial as a Ray task and record each outcome as it arrives, resubmitting retries."""
    pending: dict[Any, tuple[Trial, float]] = {}
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        # Retries are ours (max_retries=0), so a crashed worker counts as an attempt like any failure.
        options = {"num_gpus": 1 if gpus >= 1 else 0, "max_retries": 0, "retry_exceptions": False}
        task = ray.remote(_attempt)

        def submit(t: Trial) -> None:
            book.running(t.name)
            # One CPU per simulator worker (the main process steps the first chunk), so that Ray
            # does not put more simulator processes on a machine than it has cores.
            ref = task.options(name=f"dynalab-{t.name}", num_cpus=t.cfg.env_workers, **options).remote(
                config_lib.to_dict(t.cfg), str((out / t.name).resolve()), False)
            pending[ref] = (t, time.perf_counter())

        for t in todo:
            submit(t)
        book.write()
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                t, submitted = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as e:  # the worker or its node died, or the task was cancelled
                    result = {"ok": False, "seconds": time.perf_counter() - submitted, "retry": True,
                              "error": _one_line(e).split(". ")[0]}
                if book.outcome(t.name, result, retries):
                    submit(t)
                    book.write()
    finally:
        for ref in pending:  # only on an error or Ctrl-C in the driver
            ray.cancel(ref)
