import pytest

from thinkless_lite.config import ConfigError, load_config, save_resolved
from thinkless_lite.cli import build_parser, main


def test_recipes_load():
    for path in ["configs/mini.yaml", "configs/r1_distill_1.5b_t4.yaml", "configs/qwen2.5_1.5b_instruct_t4.yaml"]:
        cfg = load_config(path)
        assert cfg.model.name_or_path


def test_overrides_are_typed_and_nested():
    cfg = load_config("configs/mini.yaml", ["rl.alpha=0.25", "model.backend=hf", "eval.sweep_tau=[0.1, 0.9]"])
    assert cfg.rl.alpha == 0.25 and cfg.model.backend == "hf" and cfg.eval.sweep_tau == [0.1, 0.9]
    assert isinstance(load_config(None, ["rl.alpha=1"]).rl.alpha, float)  # an int literal is fine for a float
    assert load_config(None, ["rl.learning_rate=1e-4"]).rl.learning_rate == 1e-4  # YAML 1.1 reads this as a string


def test_unknown_key_names_it_and_the_allowed_keys():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["rl.alpah=0.1"])
    assert "rl.alpah" in str(err.value) and "alpha" in str(err.value) and "beta" in str(err.value)


def test_unknown_key_in_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  lora_rank: 8\n")
    with pytest.raises(ConfigError, match="model.lora_rank.*lora_r"):
        load_config(path)


@pytest.mark.parametrize("override, fragment", [
    ("rl.alpha=abc", "rl.alpha: expected float"),
    ("model.lora_r=1.5", "model.lora_r: expected int"),
    ("model.backend=tpu", "model.backend must be"),
    ("warmup.data.short_share=1.5", "short_share"),
    ("rl.num_generations=1", "num_generations"),
    ("eval.sweep_tau=[2]", "tau must be within"),
    ("rl=3", "expected a mapping"),
    ("noequals", "section.key=value"),
])
def test_bad_values(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(None, [override])


def test_missing_file_points_at_configs():
    with pytest.raises(ConfigError, match="configs/"):
        load_config("nope.yaml")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config("configs/mini.yaml", ["rl.max_steps=7"])
    path = save_resolved(cfg, tmp_path)
    assert load_config(path).rl.max_steps == 7


def test_cli_help_teaches(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    for command in ["quickstart", "warmup", "rl", "eval", "demo", "build-base", "--set rl.alpha"]:
        assert command in text


def test_cli_config_error_exits_2(capsys):
    assert main(["warmup", "--set", "warmup.typo=1"]) == 2
    assert "warmup.typo" in capsys.readouterr().err
