"""--matmul-precision: validated, applied before anything is traced, recorded in run.json."""

import json

import jax
import pytest

from dynalab import config as config_lib
from dynalab.cli import main
from dynalab.config import ConfigError, TrainConfig
from dynalab.metrics import read

from test_validation import BASE, cli_error  # tests/test_validation.py: the shared tiny SAC run


@pytest.fixture(autouse=True)
def restore_precision():
    before = jax.config.jax_default_matmul_precision
    yield
    jax.config.update("jax_default_matmul_precision", before)


def test_float32_equals_the_default_on_cpu_and_run_json_says_which_ran(tmp_path):
    # JAX computes float32 dots in float32 on CPU by default (TF32/bfloat16 modes exist only on
    # accelerators), so asking for float32 must change nothing here, bit for bit.
    if jax.default_backend() != "cpu":
        pytest.skip("on an accelerator the default is reduced precision, so the two runs differ")
    for name, extra in (("default", []), ("float32", ["--matmul-precision", "float32"])):
        main(["train", *BASE, *extra, "--out", str(tmp_path / name), "--no-progress"])
    def results(name):  # every row but wall-clock timings
        return [row for row in read(tmp_path / name / "metrics.csv") if not row[2].startswith("time/")]

    assert results("default") == results("float32") and len(results("default")) > 20
    default = json.loads((tmp_path / "default" / "run.json").read_text())
    explicit = json.loads((tmp_path / "float32" / "run.json").read_text())
    assert default["matmul_precision"] == "default (float32 on CPU)"
    assert explicit["matmul_precision"] == "float32"
    assert json.loads((tmp_path / "float32" / "config.json").read_text())["matmul_precision"] == "float32"


@pytest.mark.parametrize("value, jax_value", [("default", None), ("float32", "float32"),
                                              ("tensorfloat32", "tensorfloat32"), ("bfloat16", "bfloat16")])
def test_each_choice_sets_jaxs_default_precision(value, jax_value):
    config_lib.apply_matmul_precision(TrainConfig(matmul_precision=value))
    assert jax.config.jax_default_matmul_precision == jax_value


def test_a_bad_choice_is_one_line(tmp_path, capsys):
    line = cli_error(["train", *BASE, "--matmul-precision", "float16", "--out", str(tmp_path / "x")], capsys)
    assert "--matmul-precision" in line and "default" in line and "bfloat16" in line


@pytest.mark.parametrize("field, value", [("matmul_precision", "fp32"), ("wandb_mode", "sometimes"),
                                          ("algo", "dqn")])
def test_every_choice_field_of_a_config_file_is_checked(field, value):
    # config.json files are not parsed by tyro, so a choice field can hold anything; validation must
    # name the field and its choices.
    cfg = config_lib.from_dict({**config_lib.to_dict(TrainConfig(env="gym:InvertedPendulum-v5")), field: value})
    with pytest.raises(ConfigError) as e:
        config_lib.validate(cfg, ["sac", "mbpo", "ftfl", "ftfl-tuned", "alm", "alm-nodyna"])
    assert str(e.value).startswith(f"--{field.replace('_', '-')} must be one of: "), str(e.value)
