"""The actor's log-std parameterisation, `--sac.log-std-mode tanh|clip`, against hand-worked values.

tanh (the STFL code's, from D'Oro et al.'s fork of jaxrl): log_std = min + (max - min) * (tanh(x) + 1) / 2;
clip (jaxrl, Stable-Baselines3): log_std = clip(x, min, max); x is the log-std head's raw output.
The expected numbers below are written out, not computed with the library.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynalab import config as config_lib
from dynalab.agents import sac

# One hidden unit per action: with an identity trunk and identity log-std kernel, the head's raw
# output is x = relu(obs) + bias, so each row of OBS picks the raw values in RAW.
LOG_STD_BIAS = np.array([0.0, -25.0])
OBS = np.array([[0.0, 0.0], [0.5, 28.0], [3.0, 24.5]])
RAW = np.array([[0.0, -25.0], [0.5, 3.0], [3.0, -0.5]])

# tanh mode on [-10, 2]: -10 + 6 * (tanh(x) + 1) = -4 + 6 tanh(x); tanh(0.5) = 0.46211715726,
# tanh(3) = 0.99505475369, tanh(-25) = -1 to float precision.
TANH_LOG_STD = np.array([[-4.0, -10.0], [-1.22729705644, 1.97032852212], [1.97032852212, -6.77270294356]])
# clip mode on [-10, 2] (jaxrl) and on [-20, 2] (Stable-Baselines3).
CLIP_LOG_STD = np.array([[0.0, -10.0], [0.5, 2.0], [2.0, -0.5]])
CLIP_SB3_LOG_STD = np.array([[0.0, -20.0], [0.5, 2.0], [2.0, -0.5]])


def hand_set_actor(cfg: sac.SACConfig):
    """The tiny actor of `cfg` (hidden (2,), 2 actions) with the weights described above."""
    params = sac.init(jax.random.PRNGKey(0), 2, 2, cfg).actor_params
    eye, zeros = jnp.eye(2), jnp.zeros(2)
    p = {
        "trunk": {"Dense_0": {"kernel": eye, "bias": zeros}},
        "mean": {"kernel": jnp.zeros((2, 2)), "bias": jnp.array([0.1, -0.2])},
        "log_std": {"kernel": eye, "bias": jnp.asarray(LOG_STD_BIAS, jnp.float32)},
    }
    assert jax.tree_util.tree_structure(p) == jax.tree_util.tree_structure(params["params"])
    return {"params": p}


@pytest.mark.parametrize(
    "mode, log_std_min, expected",
    [("tanh", -10.0, TANH_LOG_STD), ("clip", -10.0, CLIP_LOG_STD), ("clip", -20.0, CLIP_SB3_LOG_STD)],
)
def test_log_std_and_sigma_match_hand_worked_values(mode, log_std_min, expected):
    cfg = sac.SACConfig(hidden=(2,), log_std_mode=mode, log_std_min=log_std_min)
    params = hand_set_actor(cfg)
    mean, log_std = sac.make_actor(cfg, 2).apply(params, jnp.asarray(OBS, jnp.float32))
    np.testing.assert_allclose(mean, np.tile([0.1, -0.2], (3, 1)), rtol=1e-6)
    np.testing.assert_allclose(log_std, expected, rtol=1e-6, atol=1e-6)

    # The sampler uses that sigma: a = tanh(mean + exp(log_std) * noise), noise drawn from the key.
    key = jax.random.PRNGKey(7)
    action, _ = sac.sample_action_and_log_prob(cfg, params, jnp.asarray(OBS, jnp.float32), key)
    noise = np.asarray(jax.random.normal(key, (3, 2)), np.float64)
    np.testing.assert_allclose(action, np.tanh([0.1, -0.2] + np.exp(expected) * noise), rtol=1e-5, atol=1e-6)


def test_the_two_modes_differ_only_inside_the_bounds():
    # At both bounds tanh approaches what clip reaches; at x = 0 they differ by the midpoint, -4.
    tanh_cfg, clip_cfg = (sac.SACConfig(hidden=(2,), log_std_mode=m) for m in ("tanh", "clip"))
    zero = jnp.zeros((1, 2))
    _, t = sac.make_actor(tanh_cfg, 2).apply(hand_set_actor(tanh_cfg), zero)
    _, c = sac.make_actor(clip_cfg, 2).apply(hand_set_actor(clip_cfg), zero)
    np.testing.assert_allclose(np.asarray(t) - np.asarray(c), [[-4.0, 0.0]], atol=1e-6)


@pytest.mark.parametrize("mode, sigma_at_zero", [("tanh", math.exp(-4.0)), ("clip", 1.0)])
@pytest.mark.parametrize("action_dim", [1, 6])
def test_initial_sigma_of_a_fresh_actor(mode, sigma_at_zero, action_dim):
    """tanh: about e^-4 = 0.0183 (the STFL code's policy); clip: about 1 (jaxrl's, SB3's).

    Why: biases start at 0 and kernels are random orthogonal matrices (sign-symmetric), so the
    raw log-std x is a zero-mean linear function of the observation's ReLU features, exactly 0
    at an all-zero observation; tanh maps x = 0 to the midpoint of [-10, 2], -4, and clip to 0.
    """
    cfg = sac.SACConfig(log_std_mode=mode)  # the default network: 256 x 256, bounds [-10, 2]
    obs_dim = 4  # InvertedPendulum's
    init = jax.jit(jax.vmap(lambda k: sac.init(k, obs_dim, action_dim, cfg).actor_params))
    params = init(jax.random.split(jax.random.PRNGKey(0), 8))
    apply = jax.vmap(sac.make_actor(cfg, action_dim).apply, in_axes=(0, None))

    _, log_std = apply(params, jnp.zeros((1, obs_dim)))
    np.testing.assert_allclose(np.exp(np.asarray(log_std)), sigma_at_zero, rtol=1e-6)

    # Small observations (norm about 1, like InvertedPendulum's): the median sigma stays there.
    obs = 0.5 * jax.random.normal(jax.random.PRNGKey(1), (256, obs_dim))
    _, log_std = apply(params, obs)
    median = float(np.median(np.exp(np.asarray(log_std))))
    assert sigma_at_zero / 1.5 < median < sigma_at_zero * 1.5, median


def test_log_std_init_scale_sets_only_the_log_std_heads_gain():
    # An orthogonal kernel with gain g has K^T K = g^2 I (action_dim <= hidden width).
    for scale in (1.0, math.sqrt(2.0)):
        cfg = sac.SACConfig(hidden=(32, 32), log_std_init_scale=scale)
        p = sac.init(jax.random.PRNGKey(3), 5, 3, cfg).actor_params["params"]
        k = np.asarray(p["log_std"]["kernel"], np.float64)
        np.testing.assert_allclose(k.T @ k, scale**2 * np.eye(3), atol=1e-5)
        m = np.asarray(p["mean"]["kernel"], np.float64)
        np.testing.assert_allclose(m.T @ m, 2.0 * np.eye(3), atol=1e-5)


def test_default_is_the_stfl_parameterisation():
    cfg = sac.SACConfig()
    assert (cfg.log_std_mode, cfg.log_std_min, cfg.log_std_max) == ("tanh", -10.0, 2.0)


def test_cli_flag_sets_the_mode_and_config_json_round_trips(tmp_path):
    from dynalab.algos import default_config
    from dynalab.cli import Train, _parse

    args = ["--sac.log-std-mode", "clip", "--sac.log-std-min", "-20", "--sac.adam-eps", "1e-8",
            "--sac.log-std-init-scale", "1"]
    cfg = _parse("train", Train, args, default_config).cfg
    assert (cfg.sac.log_std_mode, cfg.sac.log_std_min, cfg.sac.adam_eps, cfg.sac.log_std_init_scale) == (
        "clip", -20.0, 1e-8, 1.0)
    assert _parse("train", Train, [], default_config).cfg.sac.log_std_mode == "tanh"

    path = tmp_path / "config.json"
    config_lib.save(cfg, path)
    assert json.loads(path.read_text())["sac"]["log_std_mode"] == "clip"
    assert config_lib.load(path) == cfg
    # A config.json written before the field existed loads with the STFL default.
    old = json.loads(path.read_text())
    del old["sac"]["log_std_mode"], old["sac"]["log_std_init_scale"]
    assert config_lib.from_dict(old).sac.log_std_mode == "tanh"


@pytest.mark.parametrize("sac_fields, flag", [
    ({"log_std_mode": "softplus"}, "--sac.log-std-mode"),
    ({"log_std_min": 2.0, "log_std_max": -10.0}, "--sac.log-std-mode"),
    ({"log_std_init_scale": 0.0}, "--sac.log-std-init-scale"),
])
def test_a_bad_log_std_setting_in_a_config_file_is_refused(sac_fields, flag):
    from dynalab.algos import ALGOS

    cfg = config_lib.from_dict({"env": "gym:InvertedPendulum-v5", "sac": sac_fields})
    with pytest.raises(config_lib.ConfigError, match=flag):
        config_lib.validate(cfg, list(ALGOS))


def test_a_bad_mode_on_the_command_line_names_the_choices(capsys):
    from dynalab.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "--sac.log-std-mode", "softplus", "--out", "/nonexistent/never-written"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert "tanh" in err and "clip" in err, err
