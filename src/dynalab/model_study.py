"""Model studies (`dynalab model-study`): fit model variants offline on one fixed dataset and see how each predicts.

Both papers explain MBPO's failures through its model: STFL measures the model's percent error on
the training distribution (Figs 6-7), FTFL shows that joint raw targets make the model
underestimate rewards (Fig 2a, on a fixed SAC replay buffer) and that residual targets inflate
the predicted variance (Fig 3). A study answers "why does the model fail on my task, and does this
fix help?" without training an agent: every variant is fitted with the same data, the same budget
and the same model seeds, then scored on held-out transitions from other episodes.

Data (`Dataset`): the real replay buffer of a dynalab checkpoint (`load_buffer`, any algorithm; the
held-out part is whole episodes of that buffer, `split_episodes`), or transitions collected on a
task with uniform-random actions or with the policy of a checkpoint (`collect`; the held-out part
is further episodes from other env seeds).

Variants (`parse_variant`): `mbpo` (STFL Table 2), `ftfl` (FTFL: target unit normalisation + direct
next-state prediction), `target-norm` and `direct` (each FTFL switch alone), `ftfl-tuned` (Tuned
FTFL) and `run` (the model config of the run the data came from), each optionally changed with
`+FIELD=VALUE` (any `ModelConfig` field, e.g. `mbpo+width=400+lr=1e-3`); `--set` changes every variant.

Budget: one fit from a fresh initialisation per (variant, model seed), `refit_steps` gradient steps,
or MBPO's early stopping with `refit_steps` as its cap; the fit is training's own
(`ensemble.fit_recorded`: `ensemble.fit`, bit for bit, plus the fit's curve).

One program: a study is one jitted XLA program (`_program`), compiled and run once. Variants that
differ only in traced values (`TRACED`: the learning rate and Adam's epsilon) and all model seeds
are members of one vmapped group; variants that change a shape or the program's structure (width,
depth, ensemble size, the target switches, the step budget, early stopping) are separate groups,
each vmapped over its members, side by side in the same program. Paired design: model seed s gives
every variant of one architecture the same initial weights, holdout split and minibatches.

Numbers (`evaluate`, per fitted ensemble, on the held-out transitions and on the same number of
training transitions): the prediction is the mean over the elites of the members' predicted means,
in original units, as in training's diagnostics (`ensemble.diagnostics`). Percent error follows
STFL (section 4.1, Figs 6-7: "the model's percent error", which "normalizes across
differently-scaled observation spaces"): mean over transitions of 100 ||pred - true|| / ||true||
(||true|| floored at `ensemble.PCT_EPS`), on
  - the model's own state target (s' - s for residual models, s' for direct ones): `pct_error`,
    training's `model/pct_error`;
  - s' - s for every model (STFL's quantity; pred s' - s' = pred (s'-s) - (s'-s), so comparable
    across target choices): `pct_error_delta`;
  - s' for every model: `pct_error_next_state`, training's `model/pct_error_next_state`.
Reward: `reward_mse` (training's `model/reward_mse`), `reward_bias` = mean(pred r - r) (FTFL Fig 2a:
negative means the model underestimates rewards). Variance: `var_state`, `var_reward` (training's
`model/var_state` and `model/var_reward`: mean predicted aleatoric variance over elites, transitions
and dimensions, original units, the same for either target since s is given; FTFL Fig 3b).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
import tomllib
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dynalab import replay
from dynalab.config import ConfigError, TrainConfig
from dynalab.models import ensemble
from dynalab.models import normalizer as nz
from dynalab.models.ensemble import EnsembleState, ModelConfig
from dynalab.replay import ReplayBuffer, capacity
from dynalab.rng import stream
from dynalab.types import Transition

TRACED = ("lr", "adam_eps")
"""ModelConfig fields that enter the fit only as traced values: variants differing only in them share a vmapped group."""

NAMED = {
    "mbpo": "MBPO",
    "ftfl": "FTFL",
    "target-norm": "target norm only",
    "direct": "direct next state only",
    "ftfl-tuned": "Tuned FTFL",
    "run": "the run's model",
}
"""Named variants (`parse_variant`) and their display names (FTFL's ablation names as in the ftfl-fig3 preset)."""

DEFAULT_VARIANTS = ("mbpo", "target-norm", "direct", "ftfl")
"""FTFL's four ablations (its Fig 3): MBPO, each switch alone, both."""

POLICY_MODES = ("explore", "exploit")
DATA_KINDS = ("buffer", "random", "policy")


# --- variants ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One model variant of a study: its display name, what the user typed, and its model config."""

    name: str
    spec: str
    model: ModelConfig

    @property
    def target(self) -> str:
        """The state part the model predicts: "s'" (direct) or "s'-s" (residual)."""
        return "s'" if self.model.direct_next_state else "s'-s"


def _named_model(name: str, run_model: ModelConfig | None) -> ModelConfig:
    from dynalab.algos import default_config

    if name == "run":
        if run_model is None:
            raise ConfigError("variant 'run' (the model config of the run the data came from) needs data from a run's "
                              "checkpoint (--from or --policy); choose one of: "
                              f"{', '.join(n for n in NAMED if n != 'run')}.")
        return run_model
    if name == "target-norm":
        return dataclasses.replace(default_config("mbpo").model, target_norm=True)
    if name == "direct":
        return dataclasses.replace(default_config("mbpo").model, direct_next_state=True)
    return default_config(name).model


def model_changes(items: Sequence[str], what: str) -> dict[str, Any]:
    """["width=400", "model.lr=1e-3"] -> {"width": 400, "lr": 0.001}; values in TOML syntax.

    Raises ConfigError for an item that is not FIELD=VALUE or names no ModelConfig field.
    """
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().removeprefix("model.")
        if not sep or not key:
            raise ConfigError(f"{what} expects FIELD=VALUE (e.g. model.width=400), got {item!r}.")
        if key not in fields:
            raise ConfigError(f"{what} {item!r} names no model field; a study changes only model fields: "
                              f"{', '.join(sorted(fields))}.")
        try:
            parsed = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            raise ConfigError(f"{what} {item!r}: {value.strip()!r} is not a TOML value (a number, true/false, or a "
                              "list like [1e-5, 1e-5]).") from None
        if isinstance(parsed, list):
            parsed = tuple(parsed)
        out[key] = parsed
    return out


def _display(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value).lower() if isinstance(value, bool) else str(value)


def parse_variant(spec: str, shared: dict[str, Any] | None = None, run_model: ModelConfig | None = None) -> Variant:
    """A variant from `BASE[+FIELD=VALUE...]`, e.g. "ftfl", "mbpo+width=400+lr=1e-3".

    BASE is one of `NAMED` (mbpo, ftfl, target-norm, direct, ftfl-tuned, run); `shared` (from
    `--set`) changes it first, then the `+` changes. Its name is BASE's display name with the `+`
    changes, e.g. "MBPO (width=400, lr=0.001)". Raises ConfigError for an unknown base or field, or a
    model config the ensemble refuses (`check_model`).
    """
    base, *rest = re.split(r"\+(?=\s*[A-Za-z_][A-Za-z_.]*\s*=)", spec.strip())
    base = base.strip()
    if base not in NAMED:
        raise ConfigError(f"unknown model variant {base!r} in {spec!r}; choose one of: {', '.join(NAMED)}, "
                          "optionally with +FIELD=VALUE changes (e.g. mbpo+width=400).")
    model = _named_model(base, run_model)
    changes = model_changes(rest, f"variant {spec!r}:")
    model = dataclasses.replace(model, **(shared or {}), **changes)
    check_model(model, f"variant {spec!r}")
    name = NAMED[base] + (f" ({', '.join(f'{k}={_display(v)}' for k, v in changes.items())})" if changes else "")
    return Variant(name=name, spec=spec.strip(), model=model)


def check_model(m: ModelConfig, what: str = "the model") -> None:
    """Raise ConfigError (one sentence) for a model config the ensemble cannot fit."""
    from dynalab.config import _check_types

    try:
        _check_types(m, "model.")
    except ConfigError as e:
        raise ConfigError(f"{what}: {e}") from None
    for name in ("ensemble_size", "num_elites", "width", "depth", "batch_size", "refit_steps", "max_holdout",
                 "early_stopping_eval_every", "early_stopping_patience"):
        if getattr(m, name) <= 0:
            raise ConfigError(f"{what}: model.{name} must be a positive integer, got {getattr(m, name)}.")
    if m.num_elites > m.ensemble_size:
        raise ConfigError(f"{what}: model.num_elites ({m.num_elites}) cannot exceed model.ensemble_size "
                          f"({m.ensemble_size}).")
    if not (m.lr > 0 and m.adam_eps > 0):
        raise ConfigError(f"{what}: model.lr and model.adam_eps must be > 0, got {m.lr} and {m.adam_eps}.")
    if not 0 < m.holdout_ratio < 1:
        raise ConfigError(f"{what}: model.holdout_ratio must be in (0, 1), got {m.holdout_ratio}.")
    if m.early_stopping and m.refit_steps % m.early_stopping_eval_every:
        raise ConfigError(f"{what}: with early stopping the step budget ({m.refit_steps}) must be a multiple of "
                          f"model.early_stopping_eval_every ({m.early_stopping_eval_every}).")
    try:
        ensemble.weight_decays(m)
    except ValueError as e:
        raise ConfigError(f"{what}: {str(e).rstrip('.')}.") from None


def unique_names(variants: list[Variant]) -> list[Variant]:
    """Refuse two variants with the same model config, and name apart two same-named ones."""
    seen: dict[ModelConfig, str] = {}
    for v in variants:
        if v.model in seen:
            raise ConfigError(f"variants {seen[v.model]!r} and {v.spec!r} are the same model; give each variant a "
                              "different config.")
        seen[v.model] = v.spec
    names = [v.name for v in variants]
    return [v if names.count(v.name) == 1 else dataclasses.replace(v, name=f"{v.name} [{v.spec}]") for v in variants]


# --- data ----------------------------------------------------------------------------------


@dataclass
class Dataset:
    """The fixed data of a study: training and held-out transitions (numpy, leading axis N) of one task."""

    env: str
    train: Transition
    heldout: Transition
    source: str
    """One line saying where the data came from."""
    details: dict[str, Any] = field(default_factory=dict)
    """JSON-able facts: kind (buffer, random, policy), run, checkpoint, step, episode counts, ..."""
    run_model: ModelConfig | None = None
    """The model config of the run the data came from (variant "run"), if any."""


def _numpy_transition(t: Transition) -> Transition:
    return Transition(obs=np.asarray(t.obs, np.float32), action=np.asarray(t.action, np.float32),
                      reward=np.asarray(t.reward, np.float32), next_obs=np.asarray(t.next_obs, np.float32),
                      discount=np.asarray(t.discount, np.float32))


def _take(t: Transition, idx: np.ndarray) -> Transition:
    return Transition(obs=t.obs[idx], action=t.action[idx], reward=t.reward[idx], next_obs=t.next_obs[idx],
                      discount=t.discount[idx])


def _concat(parts: list[Transition]) -> Transition:
    return Transition(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("obs", "action", "reward",
                                                                                  "next_obs", "discount")))


def resolve_checkpoint(path: Path, step: int | None = None) -> Path:
    """The checkpoint folder `path` names: a checkpoint folder itself (holding meta.json), or a run folder's
    newest checkpoint (or the one at env step `step`). Raises ConfigError for a folder that is neither,
    CheckpointError for a run without checkpoints or without one at `step` (naming those kept)."""
    from dynalab import checkpoint

    path = Path(path)
    if (path / "meta.json").is_file():
        if step is not None and int(checkpoint.read_meta(path)["step"]) != step:
            raise ConfigError(f"{path} is the checkpoint of env step {checkpoint.read_meta(path)['step']}, not {step}; "
                              "pass its run folder to choose a step.")
        return path
    if not (path / "config.json").is_file():
        raise ConfigError(f"{path} is neither a dynalab run folder (config.json) nor a checkpoint folder (meta.json); "
                          "pass the --out of a run or one of its checkpoints/step_* folders.")
    return checkpoint.pick(path, step, "replay buffer or policy to study")


def _checkpoint_config(ckpt: Path) -> TrainConfig:
    from dynalab import checkpoint
    from dynalab import config as config_lib

    meta = checkpoint.read_meta(ckpt)
    if "config" in meta:  # the config that made this checkpoint's learner
        return config_lib.from_dict(meta["config"])
    return config_lib.load(ckpt.parent.parent / "config.json")


@dataclass
class Restored:
    """A checkpoint's learner as training built it: its config, trainer (for the policy) and state."""

    path: Path
    cfg: TrainConfig
    step: int
    trainer: Any
    state: Any

    def member(self, run_seed: int | None) -> int:
        """Index of the program member of `run_seed` (the first with that seed; None: member 0)."""
        if run_seed is None:
            return 0
        seeds = [s for s, _ in self.trainer.members]
        if run_seed not in seeds:
            raise ConfigError(f"seed {run_seed} is not one of this run's seeds ({', '.join(map(str, sorted(set(seeds))))}); "
                              "pass one of those to --run-seed.")
        return seeds.index(run_seed)


def restore(path: Path, step: int | None = None) -> Restored:
    """The learner state saved in a checkpoint (or a run folder's newest, or its one at `step`).

    Built as `dynalab video` does: the run's own Trainer gives the template, so every algorithm works.
    Raises ConfigError (see `resolve_checkpoint`), CheckpointError for a checkpoint that does not fit
    its config.
    """
    from dynalab import checkpoint
    from dynalab.train import Trainer

    ckpt = resolve_checkpoint(path, step)
    cfg = _checkpoint_config(ckpt)
    trainer = Trainer(cfg)
    trainer.close()  # its envs are not needed
    state = checkpoint.read_learner(ckpt, trainer.state)
    trainer.state = None
    return Restored(path=ckpt, cfg=cfg, step=int(checkpoint.read_meta(ckpt)["step"]), trainer=trainer, state=state)


def real_buffer(state: Any) -> ReplayBuffer:
    """The real replay buffer of a (seed-batched) learner state: the one ReplayBuffer not called synthetic.

    Its data is a Transition (SAC, MBPO, FTFL) or an ALM sequence row holding one (`.transition`).
    Raises ConfigError when there is none or more than one.
    """
    is_buffer = lambda x: isinstance(x, ReplayBuffer)  # noqa: E731
    found = [(jax.tree_util.keystr(p), b) for p, b in jax.tree_util.tree_flatten_with_path(state, is_leaf=is_buffer)[0]
             if is_buffer(b)]
    real = [(p, b) for p, b in found if "synthetic" not in p]
    if len(real) != 1:
        raise ConfigError(f"cannot tell the real replay buffer of this learner apart (buffers: "
                          f"{', '.join(p for p, _ in found) or 'none'}); a study needs exactly one that is not synthetic.")
    return real[0][1]


def load_buffer(path: Path, run_seed: int | None = None, step: int | None = None,
                restored: Restored | None = None) -> tuple[Transition, dict[str, Any]]:
    """Rows [0, size) of one member's real replay buffer in a checkpoint, exactly as stored.

    Returns (Transition of numpy arrays with leading axis size, without sim_state; info with env,
    checkpoint, step, run_seed, member, position, size, capacity, algo). Rows are in ring order
    (slot 0 first); `chronological` puts them in the order they were written.
    """
    r = restored or restore(path, step)
    member = r.member(run_seed)
    buf = real_buffer(r.state)
    data = buf.data.transition if hasattr(buf.data, "transition") else buf.data
    size = int(np.asarray(buf.size)[member])
    if size == 0:
        raise ConfigError(f"the replay buffer in {r.path} is empty (the checkpoint of env step {r.step}); choose a "
                          "later checkpoint with --checkpoint.")
    rows = Transition(*(np.asarray(getattr(data, f))[member, :size] for f in ("obs", "action", "reward", "next_obs",
                                                                               "discount")))
    info = {"env": r.cfg.env, "algo": r.cfg.algo, "checkpoint": str(r.path), "step": r.step,
            "run_seed": int(r.trainer.members[member][0]), "member": member,
            "position": int(np.asarray(buf.position)[member]), "size": size,
            "capacity": int(np.shape(data.obs)[1])}  # the buffer is seed-batched: (members, capacity, ...)
    return rows, info


def chronological(size: int, position: int, cap: int) -> np.ndarray:
    """Slot indices of a ring buffer's filled rows [0, size) in the order they were written."""
    if size < cap:
        return np.arange(size)
    return (position + np.arange(cap)) % cap


def episode_ids(t: Transition) -> np.ndarray:
    """Episode index of each row of consecutive transitions: a new episode starts after a termination
    (discount 0) or where a row's obs is not the previous row's next_obs (a reset or a dropped step)."""
    first = np.ones(len(t.reward), bool)
    first[1:] = (t.discount[:-1] == 0) | np.any(t.obs[1:] != t.next_obs[:-1], axis=-1)
    return np.cumsum(first) - 1


def split_episodes(t: Transition, order: np.ndarray, heldout_fraction: float, seed: int
                   ) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Hold out whole episodes: (train slots, held-out slots, train episodes, held-out episodes).

    `order` lists the rows in the order they were written; episodes are drawn uniformly at random
    (numpy seed `seed`) until at least `heldout_fraction` of the rows are held out. An episode that
    would take the held-out part past half the rows (or past `heldout_fraction`, if larger) is passed
    over: in a short buffer, e.g. one full 1,000-step episode and a partial one, it would hold out
    most of the data. If every episode would, the shortest is held out. Raises ConfigError for data
    of fewer than two episodes.
    """
    ids = episode_ids(_take(t, order))
    n_ep = int(ids[-1]) + 1
    if n_ep < 2:
        raise ConfigError(f"the buffer holds {len(order)} transitions of a single episode, so no other episode can be "
                          "held out; use a later checkpoint or collect data with --env.")
    rng = np.random.default_rng(np.random.SeedSequence((seed, 4)))
    lengths = np.bincount(ids)
    picked, total = [], 0
    for e in rng.permutation(n_ep):
        if total >= heldout_fraction * len(order) or len(picked) == n_ep - 1:
            break
        if total + lengths[e] > max(heldout_fraction, 0.5) * len(order):
            continue
        picked.append(e)
        total += lengths[e]
    if not picked:
        picked = [int(np.argmin(lengths))]
    held = np.isin(ids, picked)
    return order[~held], order[held], n_ep - len(picked), len(picked)


def buffer_dataset(path: Path, heldout_fraction: float = 0.1, seed: int = 0, run_seed: int | None = None,
                   step: int | None = None) -> Dataset:
    """A study's data from the real replay buffer of a checkpoint (STFL's "training distribution").

    Held-out: whole episodes (`split_episodes`), the rest trains. Raises ConfigError.
    """
    if not 0 < heldout_fraction < 1:
        raise ConfigError(f"--heldout-fraction must be in (0, 1), got {heldout_fraction}.")
    r = restore(path, step)
    rows, info = load_buffer(path, run_seed, restored=r)
    order = chronological(info["size"], info["position"], info["capacity"])
    train_idx, held_idx, n_train, n_held = split_episodes(rows, order, heldout_fraction, seed)
    details = {"kind": "buffer", **info, "train_episodes": n_train, "heldout_episodes": n_held,
               "heldout_fraction": heldout_fraction}
    source = (f"replay buffer of {info['algo']} seed {info['run_seed']} at env step {info['step']:,} "
              f"({info['checkpoint']}); held out: {n_held} whole episode(s) drawn at random")
    return Dataset(env=info["env"], train=_take(rows, np.sort(train_idx)), heldout=_take(rows, np.sort(held_idx)),
                   source=source, details=details, run_model=r.cfg.model)


def collect(env_id: str, n: int, env_seed: int, act: Callable[[np.ndarray, int], np.ndarray]) -> tuple[Transition, int]:
    """n real transitions of `env_id` from episodes of an env seeded `env_seed`, actions `act(obs, t)` in [-1, 1].

    Episodes restart at termination or time limit; a step whose simulator diverged is dropped and
    its episode restarts. Returns (Transition of numpy arrays, episodes touched).
    """
    from dynalab.envs import make_env
    from dynalab.envs.base import SimulatorDiverged

    env = make_env(env_id, env_seed)
    rows: list[tuple] = []
    episodes = 1
    try:
        obs = env.reset()
        while len(rows) < n:
            a = np.asarray(act(obs, len(rows)), np.float32)
            try:
                o2, r, term, trunc = env.step(a)
            except SimulatorDiverged:
                obs, episodes = env.reset(), episodes + 1
                continue
            rows.append((obs, a, np.float32(r), o2, np.float32(not term)))
            if term or trunc:
                obs = env.reset()
                episodes += 1 if len(rows) < n else 0
            else:
                obs = o2
    finally:
        env.close()
    return Transition(*(np.stack(c).astype(np.float32) for c in zip(*rows))), episodes


def _env_seed(seed: int, part: int) -> int:
    return int(np.random.SeedSequence((seed, 2, part)).generate_state(1)[0])


def collected_dataset(env_id: str | None, transitions: int, heldout_transitions: int, seed: int = 0,
                      policy: Path | None = None, policy_mode: str = "explore", run_seed: int | None = None,
                      step: int | None = None) -> Dataset:
    """A study's data collected on a task: uniform-random actions, or the policy of a checkpoint.

    Training data comes from episodes of one env seed, the held-out data from other episodes (another
    env seed). With `policy` (a run folder or checkpoint) the task is the run's, and the actions are
    its member's `explore` (the stochastic action training takes) or `exploit` (evaluation's
    deterministic action). Raises ConfigError.
    """
    for name, value in (("--transitions", transitions), ("--heldout-transitions", heldout_transitions)):
        if not isinstance(value, int) or value < 2:
            raise ConfigError(f"{name} must be an integer of at least 2, got {value!r}.")
    run_model = None
    details: dict[str, Any] = {}
    if policy is None:
        if env_id is None:
            raise ConfigError("collecting data needs a task (--env) or a checkpoint whose policy acts (--policy).")
        from dynalab.envs import UnknownEnvError, env_spec

        try:
            action_dim = env_spec(env_id).action_dim
        except UnknownEnvError as e:
            raise ConfigError(str(e)) from None

        def acts(part: int):
            rng = np.random.default_rng(np.random.SeedSequence((seed, 3, part)))
            return lambda obs, t: rng.uniform(-1.0, 1.0, action_dim)

        kind, source = "random", "uniform-random actions in [-1, 1]"
    else:
        if policy_mode not in POLICY_MODES:
            raise ConfigError(f"--policy-mode must be one of: {', '.join(POLICY_MODES)}, got {policy_mode!r}.")
        r = restore(policy, step)
        if env_id is not None and env_id != r.cfg.env:
            raise ConfigError(f"the policy in {r.path} acts on {r.cfg.env}, not {env_id}; leave out --env or pass "
                              f"--env {r.cfg.env}.")
        env_id, run_model = r.cfg.env, r.cfg.model
        member = r.member(run_seed)
        batch, n_members = r.trainer.batch, len(r.trainer.members)
        obs_dim = r.trainer.spec.obs_dim

        def acts(part: int):
            roots = jnp.stack([jax.random.PRNGKey(_env_seed(seed, 10 + part) % (2**31))] * n_members)

            def act(obs, t):
                if policy_mode == "explore":
                    o = np.zeros((n_members, obs_dim), np.float32)
                    o[member] = obs
                    return np.asarray(batch.explore(r.state, o, roots, t))[member]
                o = np.zeros((n_members, 1, obs_dim), np.float32)
                o[member, 0] = obs
                return np.asarray(batch.exploit(r.state, o))[member, 0]
            return act

        kind = "policy"
        source = (f"actions of the {policy_mode} policy of {r.cfg.algo} seed {r.trainer.members[member][0]} at env step "
                  f"{r.step:,} ({r.path})")
        details = {"checkpoint": str(r.path), "step": r.step, "algo": r.cfg.algo, "run_seed": r.trainer.members[member][0],
                   "policy_mode": policy_mode}
    train, n_train = collect(env_id, transitions, _env_seed(seed, 0), acts(0))
    held, n_held = collect(env_id, heldout_transitions, _env_seed(seed, 1), acts(1))
    details = {"kind": kind, "env": env_id, **details, "train_episodes": n_train, "heldout_episodes": n_held,
               "seed": seed}
    source += f"; held out: {n_held} episode(s) from another env seed"
    return Dataset(env=env_id, train=train, heldout=held, source=source, details=details, run_model=run_model)


def as_buffer(t: Transition) -> ReplayBuffer:
    """A full ReplayBuffer holding exactly the rows of `t` (what `ensemble.fit` reads)."""
    data = jax.tree.map(jnp.asarray, _numpy_transition(t))
    n = int(data.reward.shape[0])
    # From init_buffer, so fields the buffer may gain keep their initial values.
    empty = replay.init_buffer(n, jax.tree.map(lambda x: x[0], data))
    return empty.replace(data=data, size=jnp.int32(n))


# --- the fit -------------------------------------------------------------------------------


# --- evaluation ----------------------------------------------------------------------------


def _pct(pred: jax.Array, true: jax.Array) -> jax.Array:
    """Per transition: 100 ||pred - true|| / max(||true||, PCT_EPS) (STFL's percent error)."""
    err = jnp.linalg.norm(pred - true, axis=-1)
    return 100.0 * err / jnp.maximum(jnp.linalg.norm(true, axis=-1), ensemble.PCT_EPS)


def evaluate(cfg: ModelConfig, state: EnsembleState, batch: Transition) -> dict[str, jax.Array]:
    """How a fitted ensemble predicts real transitions (batch leading axis N), original units.

    pred = mean over elites of the members' predicted means (as in `ensemble.diagnostics`). Scalars:
    'pct_error' (own state target), 'pct_error_delta' (on s' - s), 'pct_error_next_state' (on s'),
    'reward_mse', 'reward_bias' (mean pred r - r), 'reward_pred_mean', 'reward_real_mean',
    'var_state', 'var_reward' (mean predicted variance over elites, transitions and dims). Per state
    dimension d: 'sq_error_dim' (obs_dim,) mean squared error of s'_d (= that of s'_d - s_d);
    'var_dim' (obs_dim + 1,) mean predicted variance per target dimension (reward last). Per
    transition (N,): 'pct_error_delta_n', 'reward_pred_n'. See the module docstring for the definitions.
    """
    mean, var = ensemble.predict(cfg, state, batch.obs, batch.action)
    mean, var = mean[state.elites], var[state.elites]
    pred = mean.mean(axis=0)
    true = ensemble.targets(cfg, batch)
    pred_next, pred_reward = ensemble.split_prediction(cfg, batch.obs, pred)
    err = pred_next - batch.next_obs
    delta = batch.next_obs - batch.obs
    pct_delta = _pct(pred_next - batch.obs, delta)
    return {
        "pct_error": _pct(pred[..., :-1], true[..., :-1]).mean(),
        "pct_error_delta": pct_delta.mean(),
        "pct_error_next_state": _pct(pred_next, batch.next_obs).mean(),
        "reward_mse": jnp.square(pred_reward - batch.reward).mean(),
        "reward_bias": (pred_reward - batch.reward).mean(),
        "reward_pred_mean": pred_reward.mean(),
        "reward_real_mean": batch.reward.mean(),
        "var_state": var[..., :-1].mean(),
        "var_reward": var[..., -1].mean(),
        "sq_error_dim": jnp.square(err).mean(axis=0),
        "var_dim": var.mean(axis=(0, 1)),
        "pct_error_delta_n": pct_delta,
        "reward_pred_n": pred_reward,
    }


CONSTANT = 1e-8
"""A std at or below this (float32 data) is a constant quantity: no scale to divide by."""

SCALARS = ("pct_error", "pct_error_delta", "pct_error_next_state", "reward_mse", "reward_bias", "reward_pred_mean",
           "reward_real_mean", "var_state", "var_reward")


# --- the program ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    """Variants that share one vmapped fit: the same static config, different `TRACED` values."""

    static: ModelConfig
    variants: tuple[int, ...]  # indices into the study's variants


def groups(variants: Sequence[Variant]) -> list[Group]:
    """Variants grouped by their config with the `TRACED` fields blanked (first appearance order)."""
    out: dict[ModelConfig, list[int]] = {}
    for i, v in enumerate(variants):
        out.setdefault(dataclasses.replace(v.model, **{f: 1.0 for f in TRACED}), []).append(i)
    return [Group(static=k, variants=tuple(idx)) for k, idx in out.items()]


def _program(variants: Sequence[Variant], obs_dim: int, action_dim: int):
    """The study as one jitted function of (train buffer, held-out batch, train batch, keys (seeds, 2)).

    Per group, the members (its variants x model seeds, variant-major) are one `jax.vmap`; the groups
    sit side by side in the same program. Returns, per group, (states, fit metrics, curves, held-out
    evaluation, training evaluation), each with a leading member axis.
    """
    gs = groups(variants)

    def run(train: ReplayBuffer, heldout: Transition, train_eval: Transition, keys: jax.Array):
        out = []
        n_seeds = keys.shape[0]
        for g in gs:
            traced = {f: jnp.repeat(jnp.array([getattr(variants[i].model, f) for i in g.variants], jnp.float32),
                                    n_seeds) for f in TRACED}
            member_keys = jnp.tile(keys, (len(g.variants), 1))

            def one(key, values, static=g.static):
                cfg = dataclasses.replace(static, **values)
                state = ensemble.init(stream(key, "init"), obs_dim, action_dim, cfg)
                state, metrics, curve = ensemble.fit_recorded(cfg, state, train, stream(key, "fit"))
                return state, metrics, curve, evaluate(cfg, state, heldout), evaluate(cfg, state, train_eval)

            out.append(jax.vmap(one)(member_keys, traced))
        return out

    return gs, jax.jit(run)


@dataclass
class VariantResult:
    """Everything a study measured for one variant, over its model seeds (leading axis = seeds)."""

    variant: Variant
    heldout: dict[str, np.ndarray]
    train: dict[str, np.ndarray]
    fit: dict[str, np.ndarray]
    curve: dict[str, np.ndarray]
    curve_steps: np.ndarray
    states: EnsembleState
    """The fitted ensembles, stacked over model seeds (leading axis), on the host."""


@dataclass
class StudyResult:
    """A finished study: its data, variants and every number (see `run_study`)."""

    data: Dataset
    seeds: list[int]
    results: list[VariantResult]
    heldout_eval: Transition
    """The held-out transitions every variant was scored on (a uniform subset of at most eval_transitions)."""
    train_eval: Transition
    """Training transitions scored to show the fit on its own data (same count)."""
    program: list[list[str]]
    """Variant names per vmapped group of the one program."""
    seconds: float
    """Wall-clock seconds of compiling and running the program."""
    device: str


def _subset(t: Transition, n: int, seed: int, part: int) -> Transition:
    m = len(t.reward)
    if m <= n:
        return t
    rng = np.random.default_rng(np.random.SeedSequence((seed, 5, part)))
    return _take(t, np.sort(rng.choice(m, n, replace=False)))


def run_study(data: Dataset, variants: Sequence[Variant], model_seeds: Sequence[int], eval_transitions: int = 10_000,
              seed: int = 0) -> StudyResult:
    """Fit every variant with every model seed on `data.train` in one program and score it.

    Scores use at most `eval_transitions` held-out transitions (a uniform random subset, numpy seed
    `seed`) and as many training ones. Model seed s: key PRNGKey(s), init from its "init" stream, fit
    from its "fit" stream (the same for every variant). Raises ConfigError for empty inputs, too
    little data for a batch, or a variant whose model does not fit the data.
    """
    variants = unique_names(list(variants))
    if not variants:
        raise ConfigError("a study needs at least one model variant; choose from: " + ", ".join(NAMED) + ".")
    seeds = list(model_seeds)
    if not seeds:
        raise ConfigError("a study needs at least one model seed (--model-seeds 1 or more).")
    if not isinstance(eval_transitions, int) or eval_transitions < 1:
        raise ConfigError(f"--eval-transitions must be a positive integer, got {eval_transitions!r}.")
    n = len(data.train.reward)
    if n < 2 or len(data.heldout.reward) < 1:
        raise ConfigError(f"a study needs at least 2 training and 1 held-out transitions, got {n} and "
                          f"{len(data.heldout.reward)}.")
    obs_dim, action_dim = data.train.obs.shape[1], data.train.action.shape[1]
    heldout = _subset(data.heldout, eval_transitions, seed, 0)
    train_eval = _subset(data.train, eval_transitions, seed, 1)
    gs, program = _program(variants, obs_dim, action_dim)
    keys = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
    t0 = time.perf_counter()
    out = program(as_buffer(data.train), jax.tree.map(jnp.asarray, _numpy_transition(heldout)),
                  jax.tree.map(jnp.asarray, _numpy_transition(train_eval)), keys)
    out = jax.device_get(out)
    seconds = time.perf_counter() - t0
    results: list[VariantResult | None] = [None] * len(variants)
    k = len(seeds)
    for g, (states, metrics, curve, ev_h, ev_t) in zip(gs, out):
        for j, i in enumerate(g.variants):
            part = lambda tree, j=j: jax.tree.map(lambda x: np.asarray(x)[j * k:(j + 1) * k], tree)  # noqa: E731
            results[i] = VariantResult(variant=variants[i], heldout=part(ev_h), train=part(ev_t), fit=part(metrics),
                                       curve=part(curve), curve_steps=ensemble.curve_steps(variants[i].model),
                                       states=part(states))
    return StudyResult(data=data, seeds=seeds, results=results, heldout_eval=heldout, train_eval=train_eval,
                       program=[[variants[i].name for i in g.variants] for g in gs], seconds=seconds,
                       device=str(jax.devices()[0]))


def member_state(result: VariantResult, seed_index: int) -> EnsembleState:
    """The fitted ensemble of one model seed (its index in the study's seeds)."""
    return jax.tree.map(lambda x: jnp.asarray(x[seed_index]), result.states)


# --- data-only facts -----------------------------------------------------------------------


def target_scale(t: Transition) -> dict[str, np.ndarray | float]:
    """Std over transitions of each model target dimension, and its ratio to the reward's std.

    'std_reward' (scalar), 'std_delta' and 'std_next' (obs_dim,): std of s'_d - s_d and of s'_d;
    'ratio_delta', 'ratio_next': those over std_reward. In MBPO's joint Gaussian loss in original
    units the reward is one of obs_dim + 1 targets, weighed by its scale; a ratio far above 1 is the
    mismatch FTFL's target unit normalisation removes. float64 on the host.
    """
    delta = np.asarray(t.next_obs, np.float64) - np.asarray(t.obs, np.float64)
    std_r = float(np.std(np.asarray(t.reward, np.float64)))
    std_d, std_n = delta.std(axis=0), np.asarray(t.next_obs, np.float64).std(axis=0)
    scale = std_r if std_r > CONSTANT else math.nan  # a constant reward (e.g. 0 everywhere) has no scale
    return {"std_reward": std_r, "std_delta": std_d, "std_next": std_n, "ratio_delta": std_d / scale,
            "ratio_next": std_n / scale}


# --- the host shell ------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """What every variant gets: gradient steps (or MBPO's early stopping with this cap) and model seeds."""

    refit_steps: int | None = None
    """None: each variant's own `refit_steps` (5,000 for the named models)."""
    early_stopping: bool | None = None
    """None: each variant's own setting (off for the named models)."""
    model_seeds: int = 3


def build_variants(specs: Sequence[str], overrides: Sequence[str], budget: Budget,
                   run_model: ModelConfig | None) -> list[Variant]:
    """Parse the variant specs with `--set` overrides and the budget applied to every variant."""
    shared = model_changes(overrides, "--set")
    if budget.refit_steps is not None:
        shared["refit_steps"] = budget.refit_steps
    if budget.early_stopping is not None:
        shared["early_stopping"] = budget.early_stopping
    if not specs:
        raise ConfigError(f"pass at least one --variants entry; choose from: {', '.join(NAMED)}.")
    return unique_names([parse_variant(s, shared, run_model) for s in specs])


def model_study(
    out: Path,
    runs: Sequence[Path] = (),
    envs: Sequence[str] = (),
    policy: Path | None = None,
    variants: Sequence[str] = DEFAULT_VARIANTS,
    overrides: Sequence[str] = (),
    budget: Budget = Budget(),
    transitions: int = 20_000,
    heldout_transitions: int = 5_000,
    heldout_fraction: float = 0.1,
    policy_mode: str = "explore",
    checkpoint: int | None = None,
    run_seed: int | None = None,
    eval_transitions: int = 10_000,
    seed: int = 0,
    reps: int = 2000,
    progress: Callable[[str], None] | None = print,
) -> list[Path]:
    """Run a model study (or one per task) and write its report; returns the files written.

    Data: `runs` (run folders, checkpoint folders, or folders holding run folders, e.g. a sweep: one
    study per run, on its replay buffer), or `envs` (one study per task, uniform-random actions), or
    `policy` (a run or checkpoint whose policy collects on its task). With one dataset the report is
    `out/index.html`; with several, each study's report is `out/<task>/` and `out/index.html` draws
    the model error per task (STFL Figs 6-7 style). Raises ConfigError (one sentence) for bad inputs.
    """
    from dynalab.analysis import model_study_report as report

    sources = sum(bool(x) for x in (runs, envs, policy))
    if sources != 1:
        raise ConfigError("choose the data with exactly one of --from (run or checkpoint folders), --env (tasks, "
                          "random actions) or --policy (a checkpoint whose policy acts).")
    if budget.model_seeds < 1:
        raise ConfigError(f"--model-seeds must be a positive integer, got {budget.model_seeds}.")
    if reps < 1:
        raise ConfigError(f"--reps must be a positive integer, got {reps}.")
    say = progress or (lambda _msg: None)
    # Check the variants before any data is collected or loaded (the run's model comes with the data).
    from_run = [s for s in variants if re.split(r"\+", s.strip())[0].strip() == "run"]
    if from_run and envs:
        _named_model("run", None)  # raises: random-action data has no run
    build_variants([s for s in variants if s not in from_run] or ["mbpo"], overrides, budget, None)
    datasets: list[Callable[[], Dataset]] = []
    if runs:
        folders = []
        for r in map(Path, runs):
            if (r / "meta.json").is_file() or (r / "config.json").is_file():
                folders.append(r)
            elif r.is_dir():
                from dynalab.analysis.runs import ReportError, find_run_folders

                try:
                    folders += find_run_folders([r])
                except ReportError:
                    raise ConfigError(f"{r} holds no run folder (a folder with config.json) and is no checkpoint "
                                      "folder; pass runs written by dynalab train or dynalab sweep.") from None
            else:
                raise ConfigError(f"{r} is not a folder; pass run folders, checkpoint folders or a sweep folder.")
        datasets = [partial(buffer_dataset, f, heldout_fraction, seed, run_seed, checkpoint) for f in folders]
    elif envs:
        datasets = [partial(collected_dataset, e, transitions, heldout_transitions, seed) for e in dict.fromkeys(envs)]
    else:
        datasets = [partial(collected_dataset, None, transitions, heldout_transitions, seed, Path(policy), policy_mode,
                            run_seed, checkpoint)]
    studies: list[StudyResult] = []
    for load in datasets:
        data = load()
        say(f"model-study: {data.env}: {len(data.train.reward):,} training and {len(data.heldout.reward):,} held-out "
            f"transitions ({data.source})")
        vs = build_variants(variants, overrides, budget, data.run_model)
        say(f"model-study: fitting {len(vs)} variant(s) x {budget.model_seeds} model seed(s) in one program "
            f"({len(groups(vs))} vmapped group(s))")
        studies.append(run_study(data, vs, list(range(budget.model_seeds)), eval_transitions, seed))
        say(f"model-study: {data.env}: fitted and scored in {studies[-1].seconds:.1f} s (compile included)")
    context = {"budget": dataclasses.asdict(budget), "variants": list(variants), "overrides": list(overrides),
               "seed": seed}
    if len(studies) == 1:
        return report.write_report(studies[0], Path(out), reps=reps, context=context)
    return report.write_many(studies, Path(out), reps=reps, context=context)


def check_episodes(trials: Sequence[Any], scale: float = 1.0) -> None:
    """Refuse, before anything runs, trials whose buffer will hold a single episode of their task.

    A study holds out whole episodes of a run's buffer (`split_episodes`). On a task whose episodes
    end only at the time limit (`termination.never_terminates`: HalfCheetah, the DMC tasks), a run of
    at most that many env steps holds one episode: it would be trained in full and then refused.
    Raises ConfigError naming the first such trial and, for a scaled preset, the --scale to exceed.
    """
    from dynalab.envs import env_spec, termination

    short = []
    for t in trials:
        if termination.never_terminates(t.cfg.env):
            limit = env_spec(t.cfg.env).max_episode_steps
            if 0 < t.cfg.steps <= limit:
                short.append((t, limit))
    if not short:
        return
    t, limit = short[0]
    need = max(lim / (x.cfg.steps / scale) for x, lim in short)
    hint = f"pass --scale above {need:.3g}" if scale != 1.0 else "give it more env steps than that"
    raise ConfigError(f"trial {t.name} has {t.cfg.steps:,} env steps, at most one episode of {t.cfg.env} (its "
                      f"episodes all last {limit:,} steps), so no episode of its buffer could be held out; {hint}.")


def run_experiment(name: str, out: Path, scale: float = 1.0, progress: bool = True, only: Sequence[str] = (),
                   overrides: Mapping[str, Any] | None = None) -> list[Path]:
    """Run (or finish) a preset's trials into `out` as `dynalab sweep` does; returns their run folders.

    The preset's runs are the data of an across-task study (e.g. stfl-fig6-7-model-error: short MBPO runs
    on Gym and DMC tasks). `only`: glob patterns on trial names (as `dynalab sweep --only`);
    `overrides`: config changes for every run (as `dynalab sweep --set`). Raises ConfigError for an
    unknown preset, patterns that match no trial, a trial too short to hold two episodes
    (`check_episodes`, before anything runs) or when trials failed.
    """
    import fnmatch

    from dynalab import experiments
    from dynalab.sweep import run_sweep

    exp = experiments.load(name, scale=scale, overrides=dict(overrides or {}))
    trials = [t for t in exp.trials if not only or any(fnmatch.fnmatch(t.name, p) for p in only)]
    if not trials:
        raise ConfigError(f"no trial of {exp.name} matches --only {' '.join(only)}; "
                          f"trials are: {', '.join(t.name for t in exp.trials)}.")
    check_episodes(trials, scale)
    statuses = run_sweep(trials, Path(out), progress=progress)
    failed = [t for t, status in statuses.items() if status == "failed"]
    if failed:
        raise ConfigError(f"{len(failed)} of {len(statuses)} runs of {exp.name} failed ({', '.join(failed)}); see "
                          f"{Path(out) / 'sweep.json'}, then run the same command again to retry them.")
    return [Path(out) / t.name for t in trials]


def study_json(result: StudyResult) -> dict[str, Any]:
    """The JSON-able core of a study (data, variants, per-seed numbers); the report adds its statistics."""
    d = result.data
    return {"task": d.env, "data": {"source": d.source, **d.details, "train_transitions": int(len(d.train.reward)),
                                    "heldout_transitions": int(len(d.heldout.reward)),
                                    "scored_heldout": int(len(result.heldout_eval.reward)),
                                    "scored_train": int(len(result.train_eval.reward))},
            "model_seeds": result.seeds, "program_groups": result.program, "seconds": result.seconds,
            "device": result.device}


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.generic):  # numpy integers and bools
        return x.item()
    return x


def dump_json(obj: Any, path: Path) -> Path:
    """Write `obj` as JSON (numpy arrays as lists, non-finite numbers as null)."""
    path.write_text(json.dumps(_jsonable(obj), indent=1) + "\n")
    return path


__all__ = ["Dataset", "Variant", "Budget", "StudyResult", "VariantResult", "parse_variant", "build_variants",
           "load_buffer", "buffer_dataset", "collected_dataset", "evaluate", "run_study",
           "model_study", "run_experiment", "target_scale", "NAMED", "DEFAULT_VARIANTS"]
