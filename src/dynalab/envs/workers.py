"""Simulators stepped in parallel: the row loops, and the worker processes and threads that run them.

A batch of rows (one env per seed, or the perfect model's restored states) is cut into contiguous
chunks, one per worker. Every backend runs the same row functions below over its chunk, in row
order, and rows never share a simulator, so results are those of one sequential loop bit for bit.

* `processes` (the default of `BatchEnv` and `Simulator`): with W workers, chunk 0 runs in this
  process and chunks 1..W-1 in W-1 worker processes, which own their chunks' simulators. The main
  process is otherwise idle while the envs step, so it works too, and one round trip fewer is
  made. Workers are fresh interpreters (`subprocess` with a socket pair: the "spawn" method, never
  fork, since JAX's threads live in this process) shared by every BatchEnv and Simulator of this
  process, and shut down when the last of them is closed, at interpreter exit, or, if this process
  dies, when they read the end of their connection. Messages are pickled NumPy arrays over the
  socket: a few hundred bytes per env step, about 1 MB per 1,000 humanoid states for the perfect
  model (transferred in about a millisecond, against about a second of physics; shared memory
  would not pay, `scripts/bench_parallel_envs.py`).
* `threads`: W threads of this process (`RowPool`). MuJoCo's mj_step releases the GIL but
  dm_control's per-step Python holds it, so threads barely pay on dm_control tasks.

With one worker neither exists: the rows run in a plain loop in this process.
"""

from __future__ import annotations

import atexit
import importlib
import itertools
import os
import pickle
import signal
import subprocess
import sys
import threading
import traceback
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np

from dynalab.envs.base import SimulatorDiverged
from dynalab.envs.registry import make_env

Parallel = Literal["processes", "threads"]
PARALLEL_KINDS: tuple[str, ...] = ("processes", "threads")


class EnvWorkerError(RuntimeError):
    """A worker process died or cannot be reached; the message is one sentence."""


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0))


def resolve_workers(workers: int, jobs: int) -> int:
    """Workers to use for `jobs` independent simulator jobs: `workers` (0: every available core),
    never more than there are jobs. Raises ValueError (one sentence) for a negative or non-int count."""
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
        raise ValueError(
            f"workers must be an integer >= 0 (0 means one per available CPU core), got {workers!r}."
        )
    return max(1, min(workers or available_cores(), jobs))


def check_parallel(parallel: str) -> None:
    if parallel not in PARALLEL_KINDS:
        raise ValueError(f"parallel must be 'processes' or 'threads', got {parallel!r}.")


def chunks(n: int, workers: int) -> list[tuple[int, int]]:
    """Contiguous, non-empty [start, stop) chunks of rows [0, n), at most `workers` of them."""
    bounds = [n * k // workers for k in range(workers + 1)]
    return [(bounds[k], bounds[k + 1]) for k in range(workers) if bounds[k] < bounds[k + 1]]


# ---------------------------------------------------------------------------------------------
# The row loops: the only code that touches the simulators, whichever process or thread runs it.

# One batched env step before the bookkeeping: next_obs (n, obs_dim) float32, reward (n,) float64
# (the adapter's float, exact), terminated, truncated, diverged (n,) bool, and reset_obs (n,
# obs_dim) float32: the new episode's first observation where the episode ended or the simulator
# diverged (there next_obs is undefined), next_obs elsewhere.
RawStep = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def reset_rows(envs: Sequence) -> np.ndarray:
    if not envs:
        return np.empty((0, 0), np.float32)
    obs = np.empty((len(envs), envs[0].spec.obs_dim), np.float32)
    for i, env in enumerate(envs):
        obs[i] = env.reset()
    return obs


def step_rows(envs: Sequence, actions: np.ndarray) -> RawStep:
    n, d = len(envs), envs[0].spec.obs_dim
    next_obs = np.zeros((n, d), np.float32)
    reward = np.zeros(n, np.float64)
    terminated = np.zeros(n, bool)
    truncated = np.zeros(n, bool)
    diverged = np.zeros(n, bool)
    reset_obs = np.empty((n, d), np.float32)
    for i, env in enumerate(envs):
        try:
            o, r, term, trunc = env.step(actions[i])
        except SimulatorDiverged:  # nothing of this step is a transition; a new episode starts
            diverged[i] = True
            reset_obs[i] = env.reset()
            continue
        next_obs[i], reward[i], terminated[i], truncated[i] = o, r, term, trunc
        reset_obs[i] = env.reset() if term or trunc else next_obs[i]
    return next_obs, reward, terminated, truncated, diverged, reset_obs


def sim_rows(env, states: np.ndarray, actions: np.ndarray):
    """The perfect model's rows on one simulator: each restored to its state, then stepped."""
    n, spec = len(states), env.spec
    next_obs = np.empty((n, spec.obs_dim), np.float32)
    reward = np.empty(n, np.float32)
    terminated = np.empty(n, bool)
    valid = np.ones(n, bool)
    next_states = np.empty_like(states)
    for i in range(n):
        env.set_state(states[i])
        try:
            next_obs[i], reward[i], terminated[i], _ = env.step(actions[i])
            next_states[i] = env.get_state()
        except SimulatorDiverged:
            next_obs[i], reward[i], terminated[i], valid[i] = 0.0, 0.0, True, False
            next_states[i] = states[i]
    return next_obs, reward, terminated, next_states, valid


def concat(parts: list[tuple]) -> tuple:
    """Chunk results (tuples of arrays) joined in row order."""
    if len(parts) == 1:
        return parts[0]
    return tuple(np.concatenate(field) for field in zip(*parts))


# ---------------------------------------------------------------------------------------------
# Threads.


class RowPool:
    """Runs a function over row ranges [0, n) on a fixed set of threads, one contiguous chunk each.

    Each chunk's rows run in order on one thread, and rows never share a simulator, so the results
    are those of a sequential loop bit for bit. With one worker no thread is made: calls run inline.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="dynalab-env") if workers > 1 else None

    def map(self, fn: Callable[[int, int, int], Any], n: int) -> list:
        """[fn(worker, start, stop) for each chunk of rows [0, n)], in row order; re-raises the
        first chunk's exception (by row order) after every chunk has finished."""
        if self._pool is None or n <= 1:
            return [fn(0, 0, n)]
        futures = [self._pool.submit(fn, k, start, stop) for k, (start, stop) in enumerate(chunks(n, self.workers))]
        errors = [f.exception() for f in futures]  # waits for all: no chunk outlives the call
        for e in errors:
            if e is not None:
                raise e
        return [f.result() for f in futures]

    def run(self, fn: Callable[[int, int, int], None], n: int) -> None:
        self.map(fn, n)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


# ---------------------------------------------------------------------------------------------
# What a worker process needs to build the same task as this process.


def task_recipe(env_id: str, imports: Sequence[str] = ()) -> dict:
    """How a fresh interpreter builds `env_id` as this process does: this process's import path,
    the modules named in `imports` (a run's --import), and for a task the user's modules registered
    (Gymnasium or dm_control) the module that registers it and the registration itself, so that a
    worker finds it even where `imports` is not passed."""
    recipe: dict[str, Any] = {"env_id": env_id, "sys_path": [p for p in sys.path if isinstance(p, str)],
                              "imports": list(imports), "modules": [], "gym_spec": None, "dmc_domain": None}
    suite_name, _, name = env_id.partition(":")
    try:
        from dynalab.envs.registry import is_user_id

        user = is_user_id(env_id)
    except Exception:  # noqa: BLE001 - an unknown id fails with its own error when the worker builds it
        user = False
    if not user:
        return recipe
    if suite_name == "gym":
        import gymnasium

        spec = gymnasium.registry.get(name)
        entry = getattr(spec, "entry_point", None)
        module = entry.partition(":")[0] if isinstance(entry, str) else getattr(entry, "__module__", "")
        recipe["modules"].append(module)
        recipe["gym_spec"] = _pickled(spec)
    elif suite_name == "dmc":
        from dm_control import suite

        domain = name.partition("-")[0]
        module = getattr(suite._DOMAINS.get(domain), "__name__", "")
        recipe["modules"].append(module)
        recipe["dmc_domain"] = (domain, module)
    return recipe


def _pickled(obj) -> bytes | None:
    try:
        return pickle.dumps(obj)
    except Exception:  # noqa: BLE001 - e.g. an entry point defined in __main__: the worker reports it
        return None


def _apply_recipe(recipe: dict) -> None:
    """In a worker: make the recipe's task buildable (idempotent)."""
    for path in reversed(recipe["sys_path"]):
        if path not in sys.path:
            sys.path.insert(0, path)
    if recipe["imports"]:
        from dynalab.envs.custom import import_modules

        import_modules(recipe["imports"])
    for module in recipe["modules"]:
        if module and module != "__main__":
            try:
                importlib.import_module(module)
            except Exception:  # noqa: BLE001 - building the task reports what is missing
                pass
    suite_name, _, name = recipe["env_id"].partition(":")
    if recipe["gym_spec"] is not None:
        import gymnasium

        if name not in gymnasium.registry:
            try:
                gymnasium.registry[name] = pickle.loads(recipe["gym_spec"])
            except Exception:  # noqa: BLE001 - building the task then reports that it is not registered
                pass
    if recipe["dmc_domain"] is not None:
        from dm_control import suite

        domain, module = recipe["dmc_domain"]
        if domain not in suite._DOMAINS and module in sys.modules:
            suite._DOMAINS[domain] = sys.modules[module]


def _build(recipe: dict, seed: int):
    _apply_recipe(recipe)
    try:
        return make_env(recipe["env_id"], seed)
    except Exception as e:
        e.add_note(f"(in an env worker process: it imports {recipe['imports'] or 'no modules'} from --import and "
                   "the module that registered the task; a task defined in __main__ cannot be rebuilt there, so "
                   "move it into a module, or use threads)")
        raise


# ---------------------------------------------------------------------------------------------
# The worker process.


def _serve(fd: int) -> None:
    """A worker's loop: answer requests on the connection until it closes (then exit)."""
    from multiprocessing.connection import Connection

    # The main process decides when to stop (it checkpoints on Ctrl-C and SIGTERM, which a
    # terminal or a scheduler sends to the whole process group); workers end when it is gone.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn = Connection(fd)
    tables: dict[int, Any] = {}
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            break
        op, tid, *args = request
        try:
            result = _handle(tables, op, tid, *args)
            reply = ("ok", result)
        except BaseException as e:  # noqa: BLE001 - every error goes back to the main process
            reply = ("err", _pickled(e), type(e).__name__, str(e), traceback.format_exc())
        if op == "exit":
            break
        try:
            conn.send(reply)
        except (EOFError, OSError):
            break
    for envs in tables.values():
        for env in envs if isinstance(envs, list) else [envs]:
            env.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _handle(tables: dict, op: str, tid: int, *args):
    if op == "open":
        recipe, seeds = args
        tables[tid] = [_build(recipe, seed) for seed in seeds]
        return None
    if op == "open_sim":
        (recipe,) = args
        tables[tid] = _build(recipe, 0)
        return None
    if op == "close":
        envs = tables.pop(tid, None)
        for env in envs if isinstance(envs, list) else [envs] if envs is not None else []:
            env.close()
        return None
    if op == "echo":
        return args[0]
    if op == "exit":
        return None
    if tid not in tables:
        raise RuntimeError(f"this env worker holds no table {tid}")
    envs = tables[tid]
    if op == "reset":
        return reset_rows(envs)
    if op == "step":
        return step_rows(envs, args[0])
    if op == "states":
        return np.stack([env.get_state() for env in envs])
    if op == "snapshots":
        return [env.snapshot() for env in envs]
    if op == "restore":
        for env, snap in zip(envs, args[0]):
            env.restore(snap)
        return None
    if op == "sim":
        return sim_rows(envs, *args)
    raise ValueError(f"unknown env worker request {op!r}")


# The interpreter a worker runs: the fd of its end of the socket pair is its argument.
_BOOT = "import sys; from dynalab.envs.workers import _serve; _serve(int(sys.argv[1]))"


# ---------------------------------------------------------------------------------------------
# The main process's side.


class _Worker:
    """One worker process and the main process's end of its connection."""

    def __init__(self, index: int) -> None:
        from multiprocessing import Pipe

        ours, theirs = Pipe(duplex=True)
        env = dict(os.environ)
        env["JAX_PLATFORMS"] = "cpu"  # a worker never computes with JAX; keep it off any accelerator
        # The worker's import path: this process's (e.g. a source checkout or a test's folder).
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if isinstance(p, str) and p)
        try:
            out = sys.__stderr__.fileno() if sys.__stderr__ is not None else None  # keep stdout for results
        except (AttributeError, OSError, ValueError):
            out = None
        self.process = subprocess.Popen(
            [sys.executable, "-c", _BOOT, str(theirs.fileno())], pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL, stdout=out, env=env, close_fds=True)
        theirs.close()
        self.index = index
        self.conn = ours
        self.lock = threading.Lock()
        # Replies owed, in order: what an open was doing (its error is raised at the next call), or
        # None for a call's reply that its caller did not read (interrupted, e.g. by Ctrl-C): discarded.
        self.owed: list[str | None] = []
        self.dead: str | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def _died(self, doing: str) -> EnvWorkerError:
        try:
            code = self.process.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            code = None
        if code is None:
            how = "is not answering"
        elif code < 0:
            how = f"was killed by {signal.Signals(-code).name if -code in signal.valid_signals() else -code}"
        else:
            how = f"exited with code {code}"
        self.dead = (f"env worker process {self.pid} {how} while {doing}; the simulators it held are lost, so "
                     "close this BatchEnv or Simulator and build a new one (a training run resumes from its "
                     "last checkpoint).")
        return EnvWorkerError(self.dead)

    def send(self, request: tuple, doing: str, owed: str | None = None) -> None:
        """Send a request; its reply is read by `receive`, or (`owed`: what it does) by `catch_up`."""
        if self.dead:
            raise EnvWorkerError(self.dead)
        try:
            self.conn.send(request)
        except (EOFError, OSError) as e:
            raise self._died(doing) from e
        self.owed.append(owed)

    def receive(self, doing: str):
        """The next reply's result; re-raises a worker's exception as its own type."""
        if self.dead:
            raise EnvWorkerError(self.dead)
        try:
            reply = self.conn.recv()
            self.owed.pop(0)
        except (EOFError, OSError) as e:
            raise self._died(doing) from e
        if reply[0] == "ok":
            return reply[1]
        _, blob, name, message, text = reply
        error = None
        if blob is not None:
            try:
                error = pickle.loads(blob)
            except Exception:  # noqa: BLE001 - an exception type that cannot be rebuilt here
                error = None
        if not isinstance(error, BaseException):
            error = EnvWorkerError(f"an env worker process raised {name}: {message}")
        error.add_note(f"(raised in env worker process {self.pid} while {doing}; its traceback:)\n{text.rstrip()}")
        raise error

    def catch_up(self) -> None:
        """Read the replies still owed before a new request: raises an open's error (after reading
        the rest), discards the replies of interrupted calls."""
        error = None
        while self.owed:
            doing = self.owed[0]
            try:
                self.receive(doing or "finishing an interrupted request")
            except EnvWorkerError:
                raise
            except BaseException as e:  # noqa: BLE001
                if doing is not None and error is None:
                    error = e
        if error is not None:
            raise error


class WorkerPool:
    """Worker processes shared by this process's BatchEnvs and Simulators (see the module doc)."""

    def __init__(self) -> None:
        self.workers: list[_Worker] = []
        self.users = 0
        self.orphans: list[int] = []  # ids of tables collected without close() (see _orphaned)
        self.closed = False
        self._lock = threading.Lock()

    @property
    def broken(self) -> bool:
        return any(w.dead or w.process.poll() is not None for w in self.workers)

    def grow(self, size: int) -> list[_Worker]:
        """The first `size` worker processes, started now where missing (they boot in the background)."""
        with self._lock:
            while len(self.workers) < size:
                self.workers.append(_Worker(len(self.workers)))
            return self.workers[:size]

    def shutdown(self) -> None:
        """Close every connection (a worker exits when it reads the end), wait a moment, then kill."""
        self.closed = True
        for w in self.workers:
            try:
                w.conn.close()
            except OSError:
                pass
        for w in self.workers:
            try:
                w.process.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                w.process.kill()
                w.process.wait()
        self.workers = []


_pools_lock = threading.Lock()
_current: WorkerPool | None = None
_all_pools: weakref.WeakSet[WorkerPool] = weakref.WeakSet()


def acquire(size: int) -> tuple[WorkerPool, list[_Worker]]:
    """This process's shared pool (a new one if there is none or a worker of it died), grown to at
    least `size` workers; the caller must `release` it."""
    global _current
    with _pools_lock:
        if _current is not None:
            _current.users -= _close_orphans(_current)
            if _current.broken:  # a worker died: its users see the error; new ones get a new pool
                old, _current = _current, None
                if old.users <= 0:
                    old.shutdown()
        if _current is None:
            _current = WorkerPool()
            _all_pools.add(_current)
        _current.users += 1
        pool = _current
    return pool, pool.grow(size)


def release(pool: WorkerPool) -> None:
    """One user fewer; the last one shuts the pool's processes down."""
    global _current
    with _pools_lock:
        pool.users -= 1 + _close_orphans(pool)
        if pool.users > 0 or pool.closed:
            return
        if _current is pool:
            _current = None
    pool.shutdown()


@atexit.register
def _shutdown_all() -> None:
    for pool in list(_all_pools):
        if not pool.closed:
            pool.shutdown()


_table_ids = itertools.count()


def _call(workers: list[_Worker], requests: list[tuple], doing: str, local: Callable[[], Any] | None = None) -> list:
    """Send requests[k] to workers[k], run `local` (chunk 0, in this process) meanwhile, and return
    [local's result, *the workers' results] in row order. Every reply is read before the first
    error (in row order) is raised, so the connections stay in step."""
    for w in workers:
        w.lock.acquire()  # always in index order: concurrent callers cannot deadlock
    try:
        sent, errors, results = [], [], []
        for w, request in zip(workers, requests):
            try:
                w.catch_up()
                w.send(request, doing)
                sent.append(w)
            except BaseException as e:  # noqa: BLE001
                errors.append((w.index + 1, e))
        if local is not None:
            try:
                results.append(local())
            except BaseException as e:  # noqa: BLE001
                errors.append((0, e))
        for w in sent:
            try:
                results.append(w.receive(doing))
            except BaseException as e:  # noqa: BLE001
                errors.append((w.index + 1, e))
        if errors:
            raise min(errors, key=lambda item: item[0])[1]
        return results
    finally:
        for w in reversed(workers):
            w.lock.release()


class _Table:
    """Rows held by this process (the first chunk) and by worker processes (the others).

    `main_steps` False leaves this process idle and gives every chunk to a worker process (for
    measurements only: `scripts/bench_parallel_envs.py` found it slower).
    """

    def __init__(self, n: int, workers: int, main_steps: bool = True) -> None:
        self.id = next(_table_ids)
        bounds = chunks(n, workers)
        self.local_rows, self.remote = (bounds[0], bounds[1:]) if main_steps else ((0, 0), bounds)
        self.pool, self.procs = acquire(len(self.remote))
        self.procs = self.procs[: len(self.remote)]
        self._released = False
        self._finalizer = weakref.finalize(self, _orphaned, self.pool, self.id)

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self.procs]

    def close(self) -> None:
        if self._released:
            return
        self._released = True
        self._finalizer.detach()
        try:
            if not self.pool.closed and not self.pool.broken:
                _call(self.procs, [("close", self.id)] * len(self.procs), "closing its simulators")
        finally:
            release(self.pool)


def _orphaned(pool: WorkerPool, tid: int) -> None:
    """A table collected without close(). This runs inside garbage collection, possibly while this
    thread holds a worker's lock, so it only notes the table: the next acquire or release closes it."""
    pool.orphans.append(tid)


def _close_orphans(pool: WorkerPool) -> int:
    """Drop the worker-side envs of collected tables; returns how many users they were."""
    tids = []
    while pool.orphans:
        tids.append(pool.orphans.pop())
    if tids and not pool.closed and not pool.broken:
        try:
            for tid in tids:
                _call(pool.workers, [("close", tid)] * len(pool.workers), "closing its simulators")
        except Exception:  # noqa: BLE001 - a broken pool is replaced by the next acquire
            pass
    return len(tids)


class ProcessEnvRows(_Table):
    """A BatchEnv's envs over this process and `workers - 1` worker processes."""

    def __init__(self, env_id: str, seeds: Sequence[int], workers: int, imports: Sequence[str] = (),
                 main_steps: bool = True) -> None:
        super().__init__(len(seeds), workers, main_steps)
        recipe = task_recipe(env_id, imports)
        self.local: list = []
        try:
            for w, (start, stop) in zip(self.procs, self.remote):
                with w.lock:
                    w.send(("open", self.id, recipe, [int(s) for s in seeds[start:stop]]), "building its envs",
                           owed=f"building the envs of {env_id}")
            start, stop = self.local_rows  # built while the workers build theirs
            self.local = [make_env(env_id, int(seed)) for seed in seeds[start:stop]]
            self.spec = self.local[0].spec if self.local else make_env(env_id, int(seeds[0])).spec
        except BaseException:
            self.close()
            raise

    def _run(self, op: str, doing: str, local: Callable[[], Any], args: Callable[[int, int], tuple] | None = None):
        requests = [(op, self.id, *(args(a, b) if args else ())) for a, b in self.remote]
        return _call(self.procs, requests, doing, local if self.local else None)

    def reset(self) -> np.ndarray:
        return np.concatenate(self._run("reset", "resetting its envs", lambda: reset_rows(self.local)))

    def step(self, actions: np.ndarray) -> RawStep:
        start, stop = self.local_rows
        return concat(self._run("step", "stepping its envs", lambda: step_rows(self.local, actions[start:stop]),
                                lambda a, b: (actions[a:b],)))

    def states(self) -> np.ndarray:
        return np.concatenate(self._run("states", "reading its simulator states",
                                        lambda: np.stack([env.get_state() for env in self.local])))

    def snapshots(self) -> list[dict]:
        parts = self._run("snapshots", "snapshotting its envs", lambda: [env.snapshot() for env in self.local])
        return [snap for part in parts for snap in part]

    def restore(self, snaps: list[dict]) -> None:
        start, stop = self.local_rows

        def local() -> None:
            for env, snap in zip(self.local, snaps[start:stop]):
                env.restore(snap)

        self._run("restore", "restoring its envs", local, lambda a, b: (snaps[a:b],))

    def close(self) -> None:
        try:
            super().close()
        finally:
            for env in self.local:
                env.close()
            self.local = []


class ProcessSimRows(_Table):
    """The perfect model's simulators: one here and one in each of `workers - 1` worker processes
    (with `main_steps` False: one in each of `workers` worker processes)."""

    def __init__(self, env_id: str, workers: int, imports: Sequence[str] = (), main_steps: bool = True) -> None:
        super().__init__(workers, workers, main_steps)
        self.workers, self.main_steps = workers, main_steps
        self.local = None
        try:
            recipe = task_recipe(env_id, imports)
            _call(self.procs, [("open_sim", self.id, recipe)] * len(self.procs), f"building a simulator of {env_id}",
                  (lambda: None) if main_steps else None)
            self.local = make_env(env_id, seed=0) if main_steps else None
        except BaseException:
            self.close()
            raise

    def step(self, states: np.ndarray, actions: np.ndarray):
        bounds = chunks(len(states), self.workers)
        (start, stop), rest = (bounds[0], bounds[1:]) if self.main_steps else ((0, 0), bounds)
        requests = [("sim", self.id, states[a:b], actions[a:b]) for a, b in rest]
        local = (lambda: sim_rows(self.local, states[start:stop], actions[start:stop])) if self.main_steps else None
        return concat(_call(self.procs[: len(rest)], requests, "stepping the perfect model's rows", local))

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.local is not None:
                self.local.close()
            self.local = None


def echo(procs: list[_Worker], payload) -> list:
    """Round trip of `payload` through each worker (measures the transfer cost)."""
    return _call(procs, [("echo", -1, payload)] * len(procs), "echoing")


class LocalEnvRows:
    """A BatchEnv's envs in this process, stepped in one loop (1 worker) or on threads."""

    def __init__(self, env_id: str, seeds: Sequence[int], workers: int) -> None:
        self.envs = [make_env(env_id, int(seed)) for seed in seeds]
        self.pool = RowPool(workers)

    def _map(self, fn: Callable[[list], Any]) -> list:
        return self.pool.map(lambda _, start, stop: fn(self.envs[start:stop]), len(self.envs))

    def reset(self) -> np.ndarray:
        return np.concatenate(self._map(reset_rows))

    def step(self, actions: np.ndarray) -> RawStep:
        return concat(self.pool.map(lambda _, a, b: step_rows(self.envs[a:b], actions[a:b]), len(self.envs)))

    def states(self) -> np.ndarray:
        return np.stack([env.get_state() for env in self.envs])

    def snapshots(self) -> list[dict]:
        return [env.snapshot() for env in self.envs]

    def restore(self, snaps: list[dict]) -> None:
        for env, snap in zip(self.envs, snaps):
            env.restore(snap)

    def close(self) -> None:
        self.pool.close()
        for env in self.envs:
            env.close()
