"""Sequence sampling from the replay ring (dynalab.sequences) against a plain-Python reference.

The reference knows the ground truth from the generator of the episodes (which episode and step
each stored row is, and how each episode ended), not from the observations the library compares.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from dynalab import sequences
from dynalab.types import Transition

K = 3
CAP = 16



class quick_jit:  # noqa: N801
    """jax.jit without XLA's backend optimisations (only cuts compile time), one compile per signature."""

    def __init__(self, f):
        self.jitted, self.compiled = jax.jit(f), {}

    def __call__(self, *args):
        sig = (jax.tree_util.tree_structure(args), tuple(repr(jax.typeof(x)) for x in jax.tree_util.tree_leaves(args)))
        if sig not in self.compiled:
            self.compiled[sig] = self.jitted.lower(*args).compile({"xla_backend_optimization_level": 0})
        return self.compiled[sig](*args)


_add = quick_jit(sequences.add)
VALID = quick_jit(lambda buf: sequences.valid_starts(buf, K))
STARTS = quick_jit(lambda buf, key: sequences.sample_starts(buf, key, 40_000, K))
SEQS = quick_jit(lambda buf, key: sequences.sample_sequences(buf, key, 2048, K))


def ADD(buf, t, valid=True, *first):  # noqa: N802
    return _add(buf, t, jnp.bool_(valid), *(jnp.bool_(f) for f in first))


def step(episode: int, t: int, end: str | None, row_id: int) -> Transition:
    """Step t of an episode: obs [episode, t], next_obs [episode, t + 1]; `end` says how the
    episode ends after this step (None: it goes on)."""
    return Transition(
        obs=jnp.array([episode, t], jnp.float32),
        action=jnp.array([row_id], jnp.float32),
        reward=jnp.float32(row_id),
        next_obs=jnp.array([episode, t + 1], jnp.float32),
        discount=jnp.float32(0.0 if end == "terminal" else 1.0),
    )


# Episodes as (length, how it ends): terminal, time limit (discount 1), and a diverged last step
# (the loop drops that transition and resets; it is never stored).
EPISODES = [(5, "terminal"), (7, "time_limit"), (2, "terminal"), (4, "diverged"), (1, "time_limit"),
            (9, "time_limit"), (3, "diverged"), (6, "terminal"), (12, "time_limit"), (2, "time_limit"),
            (8, "terminal")]


def stream():
    """(transition, valid, (episode, t)) in env order."""
    row = 0
    for e, (length, end) in enumerate(EPISODES):
        for t in range(length):
            last = t == length - 1
            valid = not (last and end == "diverged")
            yield step(e, t, end if last else None, row), valid, (e, t)
            row += valid


def reference_valid(stored: list[tuple[int, int]]) -> set[int]:
    """Chronological ranks r such that stored rows r..r+K-1 are consecutive steps of one episode."""
    out = set()
    for r in range(len(stored) - K + 1):
        e, t = stored[r]
        if all(stored[r + i] == (e, t + i) for i in range(K)):
            out.add(r)
    return out


def check_buffer(buf, stored):
    """valid_starts equals the reference, ranks mapped to ring indices."""
    n, pos = int(buf.size), int(buf.position)
    assert n == len(stored)
    oldest = (pos - n) % CAP
    expected = np.zeros(CAP, bool)
    for r in reference_valid(stored):
        expected[(oldest + r) % CAP] = True
    np.testing.assert_array_equal(np.asarray(VALID(buf)), expected)
    return expected


def test_valid_starts_match_reference_through_wraparound():
    buf = sequences.init_buffer(CAP, step(0, 0, None, 0))
    stored: list[tuple[int, int]] = []
    checked_wrapped = 0
    for t, valid, where in stream():
        buf = ADD(buf, t, valid)
        if valid:
            stored = (stored + [where])[-CAP:]
        check_buffer(buf, stored)
        if int(buf.size) == CAP and int(buf.position) != 0:
            checked_wrapped += 1
    assert checked_wrapped > 10  # many checks with the write position inside the ring
    assert len(stored) == CAP


def test_terminal_is_a_seam_even_if_the_next_obs_coincides():
    # The terminal row's next_obs equals the next row's obs bit for bit: only discount 0 marks the end.
    buf = sequences.init_buffer(CAP, step(0, 0, None, 0))
    rows = [step(0, 0, None, 0), step(0, 1, "terminal", 1), step(0, 2, None, 2), step(0, 3, None, 3),
            step(0, 4, None, 4)]
    for r in rows:
        buf = ADD(buf, r)
    np.testing.assert_array_equal(np.asarray(buf.data.first[:5]), [True, False, True, False, False])
    np.testing.assert_array_equal(np.flatnonzero(np.asarray(VALID(buf))), [2])
    # ... and an explicit flag overrides the detection.
    buf = ADD(buf, step(0, 5, None, 5), True, True)
    assert bool(buf.data.first[5])


def test_dropped_row_leaves_the_buffer_unchanged_and_the_next_row_starts_a_run():
    buf = sequences.init_buffer(CAP, step(0, 0, None, 0))
    for t in range(3):
        buf = ADD(buf, step(0, t, None, t))
    before = buf
    buf = ADD(buf, step(0, 3, None, 3), False)  # diverged: not stored
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(buf), strict=True):
        np.testing.assert_array_equal(a, b)
    # Even without a reset, the row after a dropped one does not continue the stored row before it.
    buf = ADD(buf, step(0, 4, None, 4))
    assert bool(buf.data.first[3])


def test_one_long_episode_never_crosses_the_write_position():
    # No episode ends: the only seam is where the newest row meets the oldest surviving one.
    buf = sequences.init_buffer(CAP, step(0, 0, None, 0))
    for t in range(CAP + 5):
        buf = ADD(buf, step(0, t, None, t))
    pos = int(buf.position)
    assert pos == 5
    valid = np.asarray(VALID(buf))
    # Starting at ring index j the rows are (j, j+1, j+2) mod CAP: invalid exactly for the K - 1
    # newest rows (indices pos-1, pos-2), whose successors are the oldest rows.
    expected = np.ones(CAP, bool)
    expected[[(pos - 1) % CAP, (pos - 2) % CAP]] = False
    np.testing.assert_array_equal(valid, expected)
    seqs = SEQS(buf, jax.random.key(0))
    steps = np.asarray(seqs.obs[..., 1])
    np.testing.assert_array_equal(np.diff(steps, axis=1), 1.0)
    np.testing.assert_array_equal(seqs.next_obs[:, :-1], seqs.obs[:, 1:])


def fill_all():
    buf = sequences.init_buffer(CAP, step(0, 0, None, 0))
    stored = []
    for t, valid, where in stream():
        buf = ADD(buf, t, valid)
        if valid:
            stored = (stored + [where])[-CAP:]
    return buf, stored


def test_samples_are_valid_and_uniform_over_valid_starts():
    buf, stored = fill_all()
    expected = check_buffer(buf, stored)
    n_valid = int(expected.sum())
    assert 4 <= n_valid < CAP - 2  # the test exercises invalid starts
    assert int(sequences.num_valid_starts(buf, K)) == n_valid
    draws = 40_000
    starts = np.asarray(STARTS(buf, jax.random.key(1)))
    assert expected[starts].all()
    counts = np.bincount(starts, minlength=CAP)[expected]
    mean = draws / n_valid
    # Multinomial: each count has sd sqrt(mean (1 - 1/n)) < sqrt(mean); 5 sd is far beyond chance.
    assert np.all(np.abs(counts - mean) < 5 * np.sqrt(mean)), (counts, mean)

    seqs = SEQS(buf, jax.random.key(2))
    episode, t = np.asarray(seqs.obs[..., 0]), np.asarray(seqs.obs[..., 1])
    assert (episode == episode[:, :1]).all()  # one episode per sequence
    np.testing.assert_array_equal(np.diff(t, axis=1), 1.0)  # consecutive steps
    np.testing.assert_array_equal(seqs.next_obs[:, :-1], seqs.obs[:, 1:])
    assert np.all(np.asarray(seqs.discount[:, :-1]) == 1.0)  # no terminal inside a sequence
    assert seqs.obs.shape == (2048, K, 2) and seqs.reward.shape == (2048, K)


def test_vmapped_over_seeds():
    full, stored_full = fill_all()
    young = sequences.init_buffer(CAP, step(0, 0, None, 0))
    stored_young = []
    for t, valid, where in itertools.islice(stream(), 10):
        young = ADD(young, t, valid)
        if valid:
            stored_young.append(where)
    both = jax.tree.map(lambda a, b: jnp.stack([a, b]), full, young)
    keys = jax.random.split(jax.random.key(3), 2)
    starts = quick_jit(jax.vmap(lambda b, k: sequences.sample_starts(b, k, 512, K)))(both, keys)
    for i, (buf, stored) in enumerate([(full, stored_full), (young, stored_young)]):
        expected = check_buffer(buf, stored)
        assert expected[np.asarray(starts[i])].all()
    trans = quick_jit(lambda b, k: sequences.sample_transitions(b, k, 64))(full, jax.random.key(4))
    assert trans.obs.shape == (64, 2) and trans.reward.shape == (64,)
