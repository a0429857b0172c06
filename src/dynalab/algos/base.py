"""The one learner interface every algorithm implements, and its compiled, seed-batched form.

A `Learner` is a bundle of pure per-seed functions. The training loop only ever sees a
`SeedBatch`, which vmaps them over the leading seed axis and jits them, so the loop,
logging, evaluation and checkpointing never branch on which algorithm is running.

Non-finite guard: every compiled `update` and hook also returns, per seed, which metrics
and which (non-buffer) state leaves hold a NaN or Inf; for a seed that went non-finite the
non-buffer state is left as it was before the call, so the last finite state survives.

Randomness: every function takes an explicit key. The loop derives it from the seed's root
key and the env-step counter (`step_key`), so a seed's random stream does not depend on which
other seeds share the program, and a resumed run draws the same keys as an uninterrupted one.
Every consumer of randomness gets its own stream (see `stream`): in current JAX
`split(k, n)[i] == fold_in(k, i)`, so a key is either split or folded with names, never both,
and no key that is drawn from is also used to derive others.

Periodic work (hooks) runs in two phases after the learner call of env step k (the order is
written out once, in `dynalab.train`): "measure" hooks (diagnostics) see the learner that
trained through step k, next to the evaluation and logging of step k; "maintain" hooks (model
refits, resets) run after them and change what step k + 1 starts from.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np

from dynalab import replay
from dynalab.rng import stream  # noqa: F401  (re-exported: every learner derives keys with it)
from dynalab.types import Transition

State = Any
Metrics = dict[str, jax.Array]

# An update's metrics may carry, under this key, the minibatch that first produced a non-finite
# loss; the guard hands it to the loop instead of logging it.
OFFENDING_BATCH = "offending_batch"
# A call's metrics may carry, under this key, {metric name: bool} for metrics that are not always
# measurable (e.g. Q on synthetic data before any rollout). An unmeasured metric is NaN, which the
# guard ignores and the metrics writer drops, so it is never logged as a number.
MEASURED = "measured"


Phase = Literal["measure", "maintain"]


@dataclass(frozen=True)
class Hook:
    """Periodic work after an env step, timed as `time/<name>`.

    `every` is its nominal interval in env steps (for amortised timings); `due(k)`, if given,
    says whether it runs after env step k (default: k is a positive multiple of `every`).
    `phase`: "measure" hooks run before evaluation and logging of step k and must not change
    what the agent does; "maintain" hooks run after them (see the module docstring).
    """

    name: str
    every: int
    fn: Callable[[State, jax.Array], tuple[State, Metrics]]
    phase: Phase = "maintain"
    due: Callable[[int], bool] | None = None

    def is_due(self, env_step: int) -> bool:
        if self.due is not None:
            return bool(self.due(env_step))
        return env_step > 0 and env_step % self.every == 0


@dataclass(frozen=True)
class Learner:
    """Pure per-seed functions; see the module docstring."""

    init: Callable[[jax.Array], State]
    """key -> learner state of one seed (networks, optimisers, buffers)."""
    explore: Callable[[State, jax.Array, jax.Array], jax.Array]
    """(state, obs, key) -> action in [-1, 1] for acting in the environment."""
    exploit: Callable[[State, jax.Array], jax.Array]
    """(state, obs[E, obs_dim]) -> deterministic actions for evaluation."""
    observe: Callable[[State, Transition, jax.Array], State]
    """(state, t, valid) -> state: store one real transition without learning (warm-up).
    `valid` (bool scalar) False means the step diverged: t must not be stored."""
    update: Callable[[State, Transition, jax.Array, jax.Array], tuple[State, Metrics]]
    """(state, t, valid, key) -> (state, metrics): store t (if valid) and do all learning of one
    env step."""
    hooks: tuple[Hook, ...] = ()
    needs_sim_state: bool = False
    """Whether real transitions must carry the simulator state (the perfect model)."""
    parts: tuple[tuple[str, Callable[[State, jax.Array], Any]], ...] = ()
    """Named pieces of `update` (e.g. model rollouts) that `dynalab bench` times on their own."""
    close: Callable[[], None] = lambda: None
    """Release what the learner holds outside its state (the perfect model's simulators and the
    worker processes stepping them). Idempotent; the training loop calls it when it closes."""


def repeated_updates(
    n: int,
    agent: Any,
    sample_batch: Callable[[jax.Array], Any],
    update: Callable[[Any, Any, jax.Array], tuple[Any, Metrics]],
    key: jax.Array,
) -> tuple[Any, Metrics]:
    """`n` gradient updates in one `lax.scan`, each on a fresh minibatch: the replay ratio.

    `key` is split into one key per update, each split into the minibatch key (handed to
    `sample_batch`, which derives its own named streams from it) and the update key (handed to
    `update(agent, batch, key) -> (agent, metrics)`). Metrics are averaged over the updates.
    The minibatch of the first update whose metrics were not finite rides along under
    `OFFENDING_BATCH`, for the run's non-finite guard (zeros when every metric was finite).
    """

    def one(carry, k):
        agent, offending, found = carry
        k_batch, k_update = jax.random.split(k)
        batch = sample_batch(k_batch)
        agent, metrics = update(agent, batch, k_update)
        bad = ~jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in metrics.values()]))
        first = bad & ~found
        offending = jax.tree.map(lambda b, o: jnp.where(first, b, o), batch, offending)
        return (agent, offending, found | bad), metrics

    empty = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(sample_batch, key))
    (agent, offending, _), metrics = jax.lax.scan(one, (agent, empty, jnp.bool_(False)), jax.random.split(key, n))
    return agent, {**jax.tree.map(jnp.mean, metrics), OFFENDING_BATCH: offending}


def init_key(root: jax.Array) -> jax.Array:
    """The key of a seed's `Learner.init`."""
    return stream(root, "init")


def step_key(root: jax.Array, step: jax.Array, name: str) -> jax.Array:
    """The key of stream `name` ("explore", "random_action", "update", "hook/<hook name>") at
    env step `step` (the number of env steps taken before it)."""
    return stream(jax.random.fold_in(stream(root, "steps"), step), name)


def _is_buffer(x: Any) -> bool:
    return isinstance(x, replay.ReplayBuffer)


def nonfinite_flags(metrics: Metrics, state: State, measured: dict | None = None) -> tuple[list[str], jax.Array]:
    """Names and flags (True: holds a NaN or Inf) of every metric and float non-buffer state leaf.

    A metric named in `measured` is flagged only where it was measured. Replay buffers are
    skipped: scanning them every step would cost more than the update. Real observations and
    rewards are checked on the host before they enter a buffer.
    """
    names, flags = [], []
    measured = measured or {}
    for name in sorted(metrics):
        names.append(name)
        flags.append(~jnp.all(jnp.isfinite(metrics[name])) & measured.get(name, True))
    lean = jax.tree.map(lambda x: None if _is_buffer(x) else x, state, is_leaf=_is_buffer)
    for path, x in jax.tree_util.tree_flatten_with_path(lean)[0]:
        if jnp.issubdtype(x.dtype, jnp.inexact):
            names.append("state" + jax.tree_util.keystr(path))
            flags.append(~jnp.all(jnp.isfinite(x)))
    return names, jnp.stack(flags) if flags else jnp.zeros(0, bool)


def keep_unless(ok: jax.Array, new: State, old: State) -> State:
    """`new` where ok, else `old`, for every non-buffer leaf; buffers always come from `new`."""
    pick = lambda n, o: n if _is_buffer(n) else jax.tree.map(lambda a, b: jnp.where(ok, a, b), n, o)  # noqa: E731
    return jax.tree.map(pick, new, old, is_leaf=_is_buffer)


@dataclass(frozen=True)
class Checked:
    """What the guard saw in one compiled call: flags (seeds, len(names)) and the offending batch."""

    names: list[str]
    flags: jax.Array
    batch: Any = None

    def first(self) -> tuple[int, list[str]] | None:
        """(seed index, its non-finite quantities) of the first seed that has any, else None."""
        flags = np.asarray(self.flags)
        if not flags.any():
            return None
        seed = int(np.argmax(flags.any(axis=1)))
        return seed, [self.names[q] for q in np.flatnonzero(flags[seed])]


class SeedBatch:
    """A learner compiled over a leading member axis: one XLA call per operation per env step.

    Members are seeds, or (value, seed) pairs when a scalar hyperparameter is swept inside the
    program: then `learner_for(value)` rebuilds the learner around each member's traced value
    (`values`, one per member), so a whole sweep shares one compiled program. Without a sweep,
    `learner_for` ignores its argument.
    """

    def __init__(self, learner_for: Callable[[Any], Learner], action_dim: int, values: jax.Array):
        self.learner = learner = learner_for(None)
        self.values = jnp.asarray(values, jnp.float32)
        per_member = lambda f, *axes: jax.vmap(f, in_axes=(*axes, 0, 0, None))  # noqa: E731  (root, value, step)
        self.init = jax.jit(jax.vmap(lambda root, v: learner_for(v).init(init_key(root))))
        self._random_action = jax.jit(per_member(
            lambda root, v, step: jax.random.uniform(step_key(root, step, "random_action"), (action_dim,),
                                                     minval=-1.0, maxval=1.0)))
        self._explore = jax.jit(per_member(
            lambda s, o, root, v, step: learner_for(v).explore(s, o, step_key(root, step, "explore")), 0, 0))
        self._exploit = jax.jit(jax.vmap(lambda s, o, v: learner_for(v).exploit(s, o)))
        # Donating the state lets XLA update replay buffers in place where the backend can.
        self._observe = jax.jit(jax.vmap(lambda s, t, ok, v: learner_for(v).observe(s, t, ok)), donate_argnums=0)
        self.guard_names: dict[str, list[str]] = {}

        def guarded(name, fn):
            def call(s, *args):
                new, metrics = fn(s, *args)
                batch = metrics.pop(OFFENDING_BATCH, None)
                measured = metrics.pop(MEASURED, None)
                names, flags = nonfinite_flags(metrics, new, measured)
                if measured:
                    metrics = {k: jnp.where(measured.get(k, True), v, jnp.nan) for k, v in metrics.items()}
                self.guard_names[name] = names  # fixed at trace time
                return keep_unless(~flags.any(), new, s), metrics, flags, batch
            return call

        self._update = jax.jit(per_member(guarded(
            "update", lambda s, t, ok, root, v, step: learner_for(v).update(s, t, ok, step_key(root, step, "update"))),
            0, 0, 0),
            donate_argnums=0)
        self._hooks = {
            h.name: jax.jit(per_member(guarded(
                h.name, lambda s, root, v, step, i=i, name=h.name: learner_for(v).hooks[i].fn(
                    s, step_key(root, step, f"hook/{name}"))), 0),
                donate_argnums=0)
            for i, h in enumerate(learner.hooks)
        }
        self.parts = {
            name: jax.jit(per_member(
                lambda s, root, v, step, i=i: learner_for(v).parts[i][1](s, step_key(root, step, "update")), 0))
            for i, (name, _) in enumerate(learner.parts)
        }

    def init_state(self, roots: jax.Array) -> State:
        return self.init(roots, self.values)

    def random_action(self, roots: jax.Array, step: int) -> jax.Array:
        return self._random_action(roots, self.values, jnp.int32(step))

    def explore(self, state: State, obs: jax.Array, roots: jax.Array, step: int) -> jax.Array:
        return self._explore(state, obs, roots, self.values, jnp.int32(step))

    def exploit(self, state: State, obs: jax.Array) -> jax.Array:
        return self._exploit(state, obs, self.values)

    def observe(self, state: State, t: Transition, valid: np.ndarray) -> State:
        """Store each member's transition where `valid` (members,) is True."""
        return self._observe(state, t, valid, self.values)

    def update(self, state: State, t: Transition, valid: np.ndarray, roots: jax.Array,
               step: int) -> tuple[State, Metrics, Checked]:
        state, metrics, flags, batch = self._update(state, t, valid, roots, self.values, jnp.int32(step))
        return state, metrics, Checked(self.guard_names["update"], flags, batch)

    def due_hooks(self, env_step: int, phase: Phase) -> list[Hook]:
        """The hooks of `phase` that run after env step `env_step`, in the learner's order."""
        return [h for h in self.learner.hooks if h.phase == phase and h.is_due(env_step)]

    def run_hook(self, hook: Hook, state: State, roots: jax.Array, step: int) -> tuple[State, Metrics, Checked]:
        state, metrics, flags, batch = self._hooks[hook.name](state, roots, self.values, jnp.int32(step))
        return state, metrics, Checked(self.guard_names[hook.name], flags, batch)

    def part(self, name: str, state: State, roots: jax.Array, step: int) -> Any:
        return self.parts[name](state, roots, self.values, jnp.int32(step))


def seed_roots(seeds: list[int]) -> jax.Array:
    return jnp.stack([jax.random.PRNGKey(s) for s in seeds])


# CPU backends cannot donate buffers; the warning would fire on every compile.
warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
