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
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from dynalab import replay
from dynalab.types import Transition

State = Any
Metrics = dict[str, jax.Array]

# An update's metrics may carry, under this key, the minibatch that first produced a non-finite
# loss; the guard hands it to the loop instead of logging it.
OFFENDING_BATCH = "offending_batch"

# Streams drawn from one (seed, step) key; fixed numbers so adding a stream never shifts others.
EXPLORE, UPDATE, RANDOM_ACTION, HOOK = 0, 1, 2, 3


@dataclass(frozen=True)
class Hook:
    """Work done every `every` env steps (model refits, resets), timed as `time/<name>`."""

    name: str
    every: int
    fn: Callable[[State, jax.Array], tuple[State, Metrics]]


@dataclass(frozen=True)
class Learner:
    """Pure per-seed functions; see the module docstring."""

    init: Callable[[jax.Array], State]
    """key -> learner state of one seed (networks, optimisers, buffers)."""
    explore: Callable[[State, jax.Array, jax.Array], jax.Array]
    """(state, obs, key) -> action in [-1, 1] for acting in the environment."""
    exploit: Callable[[State, jax.Array], jax.Array]
    """(state, obs[E, obs_dim]) -> deterministic actions for evaluation."""
    observe: Callable[[State, Transition], State]
    """Store one real transition without learning (warm-up)."""
    update: Callable[[State, Transition, jax.Array], tuple[State, Metrics]]
    """Store one real transition and do all learning of one env step."""
    hooks: tuple[Hook, ...] = ()
    needs_sim_state: bool = False
    """Whether real transitions must carry the simulator state (the perfect model)."""
    parts: tuple[tuple[str, Callable[[State, jax.Array], Any]], ...] = ()
    """Named pieces of `update` (e.g. model rollouts) that `dynalab bench` times on their own."""


def step_key(root: jax.Array, step: jax.Array, stream: int) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(root, step), stream)


def _is_buffer(x: Any) -> bool:
    return isinstance(x, replay.ReplayBuffer)


def nonfinite_flags(metrics: Metrics, state: State) -> tuple[list[str], jax.Array]:
    """Names and flags (True: holds a NaN or Inf) of every metric and float non-buffer state leaf.

    Replay buffers are skipped: scanning them every step would cost more than the update.
    Real observations and rewards are checked on the host before they enter a buffer.
    """
    names, flags = [], []
    for name in sorted(metrics):
        names.append(name)
        flags.append(~jnp.all(jnp.isfinite(metrics[name])))
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
        self.init = jax.jit(jax.vmap(lambda key, v: learner_for(v).init(key)))
        self._random_action = jax.jit(per_member(
            lambda root, v, step: jax.random.uniform(step_key(root, step, RANDOM_ACTION), (action_dim,), minval=-1.0,
                                                     maxval=1.0)))
        self._explore = jax.jit(per_member(
            lambda s, o, root, v, step: learner_for(v).explore(s, o, step_key(root, step, EXPLORE)), 0, 0))
        self._exploit = jax.jit(jax.vmap(lambda s, o, v: learner_for(v).exploit(s, o)))
        # Donating the state lets XLA update replay buffers in place where the backend can.
        self._observe = jax.jit(jax.vmap(lambda s, t, v: learner_for(v).observe(s, t)), donate_argnums=0)
        self.guard_names: dict[str, list[str]] = {}

        def guarded(name, fn):
            def call(s, *args):
                new, metrics = fn(s, *args)
                batch = metrics.pop(OFFENDING_BATCH, None)
                names, flags = nonfinite_flags(metrics, new)
                self.guard_names[name] = names  # fixed at trace time
                return keep_unless(~flags.any(), new, s), metrics, flags, batch
            return call

        self._update = jax.jit(per_member(guarded(
            "update", lambda s, t, root, v, step: learner_for(v).update(s, t, step_key(root, step, UPDATE))), 0, 0),
            donate_argnums=0)
        self._hooks = {
            h.name: jax.jit(per_member(guarded(
                h.name, lambda s, root, v, step, i=i: learner_for(v).hooks[i].fn(s, step_key(root, step, HOOK))), 0),
                donate_argnums=0)
            for i, h in enumerate(learner.hooks)
        }
        self.parts = {
            name: jax.jit(per_member(
                lambda s, root, v, step, i=i: learner_for(v).parts[i][1](s, step_key(root, step, UPDATE)), 0))
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

    def observe(self, state: State, t: Transition) -> State:
        return self._observe(state, t, self.values)

    def update(self, state: State, t: Transition, roots: jax.Array, step: int) -> tuple[State, Metrics, Checked]:
        state, metrics, flags, batch = self._update(state, t, roots, self.values, jnp.int32(step))
        return state, metrics, Checked(self.guard_names["update"], flags, batch)

    def due_hooks(self, env_step: int) -> list[Hook]:
        return [h for h in self.learner.hooks if env_step % h.every == 0]

    def run_hook(self, hook: Hook, state: State, roots: jax.Array, step: int) -> tuple[State, Metrics, Checked]:
        state, metrics, flags, batch = self._hooks[hook.name](state, roots, self.values, jnp.int32(step))
        return state, metrics, Checked(self.guard_names[hook.name], flags, batch)

    def part(self, name: str, state: State, roots: jax.Array, step: int) -> Any:
        return self.parts[name](state, roots, self.values, jnp.int32(step))


def seed_roots(seeds: list[int]) -> jax.Array:
    return jnp.stack([jax.random.PRNGKey(s) for s in seeds])


# CPU backends cannot donate buffers; the warning would fire on every compile.
warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
