"""Incremental checkpoints: each write holds only the buffer blocks written since the previous one,
and every kept checkpoint still reads back exactly the state it was written from.

The reference is the states themselves, kept in memory as the test makes them; the expected
blocks are worked out by hand from the ring positions.
"""

import json
import os
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynalab import checkpoint, replay

MEMBERS = 2
CAP, SYN_CAP = 100, 30  # block rows: ceil(100 / 64) = 2 and ceil(30 / 64) = 1


def rows(start: int, k: int, width: int = 3) -> dict:
    """k distinct rows (members, k, ...) numbered from `start`, different per member."""
    ids = np.arange(start, start + k, dtype=np.float32)
    per_member = np.stack([ids + 1000 * m for m in range(MEMBERS)])
    return {"obs": np.repeat(per_member[..., None], width, axis=-1), "flag": (per_member % 2 == 0)}


def init_state() -> dict:
    example = {"obs": jnp.zeros(3, jnp.float32), "flag": jnp.bool_(False)}
    make = lambda cap: jax.vmap(lambda _: replay.init_buffer(cap, example))(jnp.arange(MEMBERS))  # noqa: E731
    return {"net": jnp.zeros((MEMBERS, 5)), "replay": make(CAP), "synthetic": make(SYN_CAP)}


add_batch = jax.jit(jax.vmap(replay.add_batch))
add_masked = jax.jit(jax.vmap(replay.add_masked))
add_one = jax.jit(jax.vmap(replay.add))


def assert_same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def segment_blocks(path, leaf_name: str) -> list[int]:
    """Blocks of the named leaf held in the segment written with the checkpoint at `path`."""
    meta = checkpoint.read_meta(path)
    index = [x["name"] for x in meta["learner"]].index(leaf_name)
    seg = meta["segment"]
    if seg is None:
        return []  # this write added no segment
    with zipfile.ZipFile(path / seg) as z:
        return sorted(int(n[5:11]) for n in z.namelist() if n.startswith(f"{index:04d}_"))


def write(folder, step, state, keep=2):
    path = checkpoint.write(folder, step, state, {"x": np.zeros(1)}, {}, None)
    checkpoint.prune(folder, keep)
    return path


def test_each_write_holds_only_the_blocks_written_since_and_every_kept_one_reads_back(tmp_path):
    folder = tmp_path / "checkpoints"
    template = init_state()
    state = init_state()
    history = {}

    def step(n, s):
        history[n] = dict(s)  # the test rebinds entries of `state`; keep this step's arrays
        path = write(folder, n, s)
        for c in checkpoint.complete(folder):  # every kept checkpoint, not only the newest
            assert_same(checkpoint.read_learner(c, template), history[checkpoint.read_meta(c)["step"]])
        return path

    # 7 rows: ring rows 0-6, blocks 0-3 of 2 rows each; the synthetic ring (1 row per block) is empty.
    state["replay"] = add_batch(state["replay"], rows(0, 7))
    path = step(1, state)
    assert segment_blocks(path, "['replay'].data['obs']") == [0, 1, 2, 3]
    assert segment_blocks(path, "['synthetic'].data['obs']") == []
    # 5 more: rows 7-11, blocks 3-5; 4 synthetic rows: blocks 0-3; the network changes too.
    state["replay"] = add_batch(state["replay"], rows(7, 5))
    state["synthetic"] = add_batch(state["synthetic"], rows(500, 4))
    state["net"] = state["net"] + 1.0
    path = step(2, state)
    assert segment_blocks(path, "['replay'].data['obs']") == [3, 4, 5]
    assert segment_blocks(path, "['synthetic'].data['obs']") == [0, 1, 2, 3]
    # Nothing written: the segment holds no block at all.
    path = step(3, state)
    assert segment_blocks(path, "['replay'].data['obs']") == []
    # Members that write different numbers of rows (member 1 drops its row): the union of blocks.
    state["replay"] = add_one(state["replay"], jax.tree.map(lambda x: x[:, 0], rows(12, 1)), jnp.array([True, False]))
    mask = np.array([[True, False, True, True], [False, False, True, False]])
    state["synthetic"] = add_masked(state["synthetic"], rows(600, 4), mask)
    path = step(4, state)
    assert segment_blocks(path, "['replay'].data['obs']") == [6]  # member 0's row 12
    assert segment_blocks(path, "['synthetic'].data['obs']") == [4, 5, 6]  # member 0's three rows
    # Past the end of the ring: member 0 writes rows 13..107, i.e. 13-99 then 0-7, member 1 12-106.
    state["replay"] = add_batch(state["replay"], rows(13, 95))
    path = step(5, state)
    # Blocks 6-49 and 0-3; rows 8-11 (blocks 4 and 5) still hold rows 8-11 of step 2 for both.
    assert segment_blocks(path, "['replay'].data['obs']") == [0, 1, 2, 3, *range(6, 50)]
    # A short wrapped write: member 0 at 8 writes 8-9 (block 4), member 1 at 7 writes 7-8 (blocks 3-4).
    state["replay"] = add_batch(state["replay"], rows(200, 2))
    path = step(6, state)
    assert segment_blocks(path, "['replay'].data['obs']") == [3, 4]
    # More rows than the ring holds in one call: everything again.
    state["synthetic"] = add_batch(state["synthetic"], rows(700, 45))
    path = step(7, state)
    assert segment_blocks(path, "['synthetic'].data['obs']") == list(range(SYN_CAP))

    # Only the kept checkpoints remain, and only the segments they name.
    kept = checkpoint.complete(folder)
    assert [checkpoint.read_meta(c)["step"] for c in kept] == [6, 7]
    named = {r.split("/")[-1] for c in kept for b in checkpoint.read_meta(c)["buffers"] for r in b["blocks"] if r}
    assert {p.name for p in (folder / "buffers").iterdir()} == named
    # The replay rows of step 7 live in the segments of steps 5 and 6, and in step 2's (block 5, rows
    # 10-11, untouched since): the segment of a pruned checkpoint stays while a kept one names it.
    assert {r.split("/")[-1][:17] for r in checkpoint.read_meta(kept[1])["buffers"][0]["blocks"]} == {
        checkpoint.name(2), checkpoint.name(5), checkpoint.name(6)}


def test_a_base_that_does_not_fit_makes_a_full_write(tmp_path):
    folder = tmp_path / "checkpoints"
    a = init_state()
    a["replay"] = add_batch(a["replay"], rows(0, 9))
    write(folder, 10, a)
    # Another run's state with fewer rows than the base (its counts went backwards) in the same folder.
    b = init_state()
    b["replay"] = add_batch(b["replay"], rows(50, 3))
    path = write(folder, 20, b)
    assert segment_blocks(path, "['replay'].data['obs']") == [0, 1]
    assert_same(checkpoint.read_learner(path, init_state()), b)
    # A base with another structure (a bigger network) is not used either.
    c = init_state()
    c["net"] = jnp.zeros((MEMBERS, 6))
    c["replay"] = add_batch(c["replay"], rows(0, 3))
    path = write(folder, 30, c)
    template = init_state()
    template["net"] = jnp.zeros((MEMBERS, 6))
    assert_same(checkpoint.read_learner(path, template), c)


def test_leftovers_of_a_crash_mid_write_are_removed_and_never_read(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    state = init_state()
    state["replay"] = add_batch(state["replay"], rows(0, 9))
    write(folder, 1, state)
    state["replay"] = add_batch(state["replay"], rows(9, 9))
    real = checkpoint._write_npz

    def dying(path, arrays):
        if path.name == "learner.npz":  # the segment is in place, the checkpoint is not yet
            raise KeyboardInterrupt
        return real(path, arrays)

    monkeypatch.setattr(checkpoint, "_write_npz", dying)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.write(folder, 2, state, {"x": np.zeros(1)}, {}, None)
    monkeypatch.undo()
    # A segment that no complete checkpoint names (as a SIGKILL would leave it) and a hidden one.
    (folder / "buffers" / "step_000000000002-deadbeef.npz").write_bytes(b"orphan")
    (folder / "buffers" / ".tmp-step_000000000002-cafe.npz").write_bytes(b"half")
    checkpoint.remove_partial(folder)
    assert [c.name for c in checkpoint.complete(folder)] == [checkpoint.name(1)]
    (seg,) = (folder / "buffers").iterdir()
    assert seg.name.startswith(checkpoint.name(1))
    # The next write builds on the intact checkpoint 1.
    path = write(folder, 2, state)
    assert segment_blocks(path, "['replay'].data['obs']") == [4, 5, 6, 7, 8]
    assert_same(checkpoint.read_learner(path, init_state()), state)


def test_a_target_checkpoint_stands_alone(tmp_path):
    state = init_state()
    state["replay"] = add_batch(state["replay"], rows(0, 5))
    write(tmp_path / "checkpoints", 1, state)
    path = checkpoint.write(tmp_path, 1, state, {}, {}, None, target="nonfinite")
    refs = {r for b in checkpoint.read_meta(path)["buffers"] for r in b["blocks"] if r}
    assert refs == {"segment.npz"}
    moved = tmp_path / "elsewhere"
    os.rename(path, moved)
    assert_same(checkpoint.read_learner(moved, init_state()), state)


def test_a_missing_segment_is_one_clear_error(tmp_path):
    folder = tmp_path / "checkpoints"
    state = init_state()
    state["replay"] = add_batch(state["replay"], rows(0, 5))
    path = write(folder, 1, state)
    for p in (folder / "buffers").iterdir():
        p.unlink()
    with pytest.raises(checkpoint.CheckpointError, match="names the buffer segment .* which is missing"):
        checkpoint.read_learner(path, init_state())


def test_format_1_checkpoints_are_still_read(tmp_path):
    """A checkpoint as dynalab wrote them before incremental buffers (format 1, laid out by hand here
    from that format's description): every leaf in learner.npz, buffer rows up to the largest fill,
    no write counts."""
    state = init_state()
    state["replay"] = add_batch(state["replay"], rows(0, 7))
    state["net"] = state["net"] + 2.0
    path = tmp_path / checkpoint.name(5)
    path.mkdir()
    leaves, arrays = [], {}
    for key, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        name = jax.tree_util.keystr(key)
        if name.endswith(".count"):
            continue
        fill = 7 if name.startswith("['replay'].data") else (0 if name.startswith("['synthetic'].data") else None)
        arr = np.asarray(leaf)
        arrays[f"{len(leaves):04d}"] = arr if fill is None else arr[:, :fill]
        leaves.append({"name": name, "shape": list(arr.shape), "dtype": str(arr.dtype), "fill": fill})
    np.savez(path / "learner.npz", **arrays)
    (path / "meta.json").write_text(json.dumps({"format": 1, "step": 5, "learner": leaves}))
    got = checkpoint.read_learner(path, init_state())
    expected = {**state, "replay": state["replay"].replace(count=jnp.zeros(MEMBERS, jnp.uint32))}
    assert_same(got, expected)
    # The next checkpoint in its folder has no usable base (format 1): it writes every filled block.
    later = write(tmp_path, 6, got)
    assert segment_blocks(later, "['replay'].data['obs']") == [0, 1, 2, 3]


def test_a_background_write_holds_the_state_as_it_was_when_submitted(tmp_path, monkeypatch):
    """`Writer.submit` returns after taking host copies; the learner's next update then takes its
    arrays over (donated, on a CPU device updated in place) before the thread writes. The update
    must be able to do so (a writer still holding views of the arrays would block the donation),
    and the checkpoint must hold the submitted state, with the same blocks as a synchronous write
    of it, chained onto the previous checkpoint as a synchronous one is."""
    import threading

    state = init_state()
    state["replay"] = add_batch(state["replay"], rows(0, 7))
    sync, background = tmp_path / "sync", tmp_path / "background"
    write(sync, 1, state)
    write(background, 1, state)
    state["replay"] = add_batch(state["replay"], rows(7, 4))  # ring rows 7-10: blocks 3-5
    state["net"] = jnp.arange(MEMBERS * 5, dtype=jnp.float32).reshape(MEMBERS, 5)
    expected = jax.tree.map(np.array, state)

    release = threading.Event()
    real = checkpoint._write_npz
    monkeypatch.setattr(checkpoint, "_write_npz", lambda path, arrays: (release.wait(30), real(path, arrays)))
    writer = checkpoint.Writer()
    path = writer.submit(background, 2, state, {"x": np.zeros(1)}, {}, None,
                         after=lambda: checkpoint.prune(background, 2))
    old = jax.tree.leaves(state)
    update = jax.jit(lambda s: jax.tree.map(lambda x: x if x.dtype == bool else x + 1, s), donate_argnums=0)
    state = jax.block_until_ready(update(state))
    assert all(x.is_deleted() for x in old if x.dtype != bool)  # donated: the writer kept no view
    assert checkpoint.complete(background)[-1].name == checkpoint.name(1)  # still being written
    release.set()
    assert writer.wait() == path == background / checkpoint.name(2)
    monkeypatch.setattr(checkpoint, "_write_npz", real)
    reference = write(sync, 2, expected)

    assert_same(checkpoint.read_learner(path, init_state()), expected)
    assert segment_blocks(path, "['replay'].data['obs']") == segment_blocks(reference, "['replay'].data['obs']") \
        == [3, 4, 5]
    blocks = lambda p: [[Path(r).name.split("-")[0] if r else None for r in b["blocks"]]  # noqa: E731
                        for b in checkpoint.read_meta(p)["buffers"]]
    assert blocks(path) == blocks(reference)
    rest = lambda p: {k: v for k, v in checkpoint.read_meta(p).items() if k not in ("segment", "buffers")}  # noqa: E731
    assert rest(path) == rest(reference)


def test_a_failed_background_write_is_raised_with_its_step_and_leaves_nothing_partial(tmp_path, monkeypatch):
    import errno

    state = init_state()
    state["replay"] = add_batch(state["replay"], rows(0, 7))
    folder = tmp_path / "checkpoints"
    write(folder, 1, state)

    def full(path, arrays):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint, "_write_npz", full)
    writer = checkpoint.Writer()
    writer.submit(folder, 2, state, {"x": np.zeros(1)}, {}, None)
    with pytest.raises(OSError, match="No space left"):
        writer.wait()
    assert writer.failed_step == 2
    assert [c.name for c in checkpoint.complete(folder)] == [checkpoint.name(1)]
    assert not list(folder.glob(".tmp-*")) and not list((folder / checkpoint.SEGMENTS).glob(".tmp-*"))
    writer.wait()  # raised once: the writer is usable again


def test_a_background_write_that_would_crowd_host_memory_is_written_at_once(tmp_path, monkeypatch):
    """Copies for a background write must fit in half the host memory still available; else
    `submit` writes synchronously. The copy size, by hand, after 7 rows (replay blocks 0-3 of 2 rows):
    replay rows 8 of 100 -> obs 2*100*3*4 B * 8/100 = 192, flag 2*100 B * 8/100 = 16; synthetic: none
    dirty; whole leaves: net 2*5*4 = 40, and position, size, count (2 x 4 B) of both buffers = 48."""
    state = init_state()
    state["replay"] = add_batch(state["replay"], rows(0, 7))
    leaves = checkpoint._leaves(state)[0]
    dirty = [np.array([True] * 4 + [False] * 46), np.zeros(30, bool)]
    assert checkpoint._copy_bytes(leaves, dirty, [2, 1]) == 192 + 16 + 40 + 48

    for available, background in ((2 * 296 - 2, False), (2 * 296, True)):
        folder = tmp_path / f"avail{available}"
        monkeypatch.setattr(checkpoint, "_available_host_bytes", lambda: available)
        writer = checkpoint.Writer()
        path = writer.submit(folder, 1, state, {"x": np.zeros(1)}, {}, None)
        assert (writer._thread is not None) == background
        assert writer.wait() == path
        assert_same(checkpoint.read_learner(path, init_state()), state)
